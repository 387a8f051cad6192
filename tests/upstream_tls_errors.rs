//! Upstream TLS failures in the relay's own log (the binary, `serve`): each common case
//! logs one ERROR line that names the upstream (name, host:port), the phase, the problem
//! in words and the setting to change, never a library's Debug form.

mod common;

use common::child::{spawn_relay, write_config};
use common::pki;
use common::upstream::{FakeUpstream, Tls};
use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts the relay (tls settings `tls`, after `tls = …` in `[upstream]`) delivering to
/// `upstream`, sends one message, and returns the ERROR line its delivery attempt logs.
async fn failure_line(upstream: &FakeUpstream, tls: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), upstream.addr);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("tls = \"none\"", tls)).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (relay, addr) = {
        let (path, log) = (path.clone(), log.clone());
        tokio::task::spawn_blocking(move || spawn_relay(&path, log))
            .await
            .unwrap()
    };
    let mut client = Client::greeted(addr).await;
    let r = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "tls"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("upstream refused our configuration"))
                .cloned();
            if let Some(line) = line {
                return line;
            }
            // Polling the log of another process; no schedule is waited out.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    relay.stop();
    let line = found.unwrap_or_else(|_| panic!("no ERROR line; log: {:#?}", log.lock().unwrap()));
    let port = upstream.addr.port();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("upstream=upstream (127.0.0.1:{port})")),
        "{line}"
    );
    assert!(line.contains("phase=TLS"), "{line}");
    for jargon in [
        "OtherError",
        "UnknownIssuer",
        "NotValidForName",
        "MissingStartTls",
        "Other(",
    ] {
        assert!(!line.contains(jargon), "{jargon} in {line}");
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_says_to_set_ca_file() {
    let (acceptor, _) = pki::self_signed();
    let upstream = FakeUpstream::start_with(Tls::Implicit(acceptor)).await;
    let line = failure_line(&upstream, "tls = \"implicit\"").await;
    assert!(line.contains("unknown issuer"), "{line}");
    assert!(line.contains("fix=set ca_file"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_without_ca_file_says_to_set_ca_file() {
    let ca = pki::ca();
    let upstream = FakeUpstream::start_with(Tls::Starttls(ca.server(&["127.0.0.1"]))).await;
    let line = failure_line(&upstream, "tls = \"starttls\"").await;
    assert!(
        line.contains("not issued by a certificate authority the relay trusts"),
        "{line}"
    );
    assert!(line.contains("fix=set ca_file"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_lists_its_names() {
    let ca = pki::ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let upstream =
        FakeUpstream::start_with(Tls::Implicit(ca.server(&["mail.other.test", "other.test"])))
            .await;
    let line = failure_line(
        &upstream,
        &format!("tls = \"implicit\"\nca_file = \"{}\"", ca_file.display()),
    )
    .await;
    assert!(
        line.contains("not valid for 127.0.0.1; its names are mail.other.test, other.test"),
        "{line}"
    );
    assert!(line.contains("host = \"mail.other.test\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_used_as_the_servers_says_what_is_wrong() {
    let (acceptor, pem) = pki::ca_as_server();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("self.pem");
    std::fs::write(&ca_file, pem).unwrap();
    let upstream = FakeUpstream::start_with(Tls::Implicit(acceptor)).await;
    let line = failure_line(
        &upstream,
        &format!("tls = \"implicit\"\nca_file = \"{}\"", ca_file.display()),
    )
    .await;
    assert!(line.contains("CA used as end entity"), "{line}");
    assert!(line.contains("needs a server certificate"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_starttls_says_which_tls_to_set() {
    let upstream = FakeUpstream::start_with(Tls::None).await;
    let line = failure_line(&upstream, "tls = \"starttls\"").await;
    assert!(line.contains("does not offer STARTTLS"), "{line}");
    assert!(line.contains("tls = \"implicit\""), "{line}");
}
