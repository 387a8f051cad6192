//! `dkim-relay upstream check` (the binary) against fake upstreams on 127.0.0.1 with a
//! certificate from a test CA: what it reports, its exit status, that it sends nothing
//! unless `--send-to`, and the signed test message it sends then.

mod common;

use common::child::{cli, write_config};
use common::pki;
use common::upstream::{dkim_signatures, FakeUpstream, Tls};
use common::verify::{verify, TxtCache};
use mail_auth::DkimResult;

struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

/// A STARTTLS upstream with a certificate from a private CA, and a relay config for it
/// with AUTH; `ca_file` is set only when `trust`.
async fn setup(trust: bool) -> (FakeUpstream, Setup) {
    let ca = pki::ca();
    let upstream = FakeUpstream::start_with(Tls::Starttls(ca.server(&["127.0.0.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-pass\n").unwrap();
    let mut tls = format!(
        "tls = \"starttls\"\nusername = \"relay-user\"\npassword_file = \"{}\"",
        password.display()
    );
    if trust {
        tls.push_str(&format!("\nca_file = \"{}\"", ca_file.display()));
    }
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("tls = \"none\"", &tls)).unwrap();
    (upstream, Setup { dir, config })
}

async fn check(setup: &Setup, args: &[&str]) -> (bool, String) {
    let config = setup.config.clone();
    let mut all = vec!["upstream".to_string(), "check".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        cli(&config, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_upstream_is_reported_usable_and_gets_no_mail() {
    let (upstream, setup) = setup(true).await;
    let (ok, out) = check(&setup, &[]).await;
    assert!(ok, "{out}");
    let port = upstream.addr.port();
    for expected in [
        format!("upstream \"upstream\" 127.0.0.1:{port} (tls = \"starttls\")"),
        format!("reachable    yes, 127.0.0.1:{port} in "),
        "STARTTLS     offered".to_string(),
        "TLS          TLS 1.3".to_string(),
        "issuer CN=dkim-relay test CA".to_string(),
        "names 127.0.0.1".to_string(),
        "verifies yes".to_string(),
        "PIPELINING yes, SIZE no, 8BITMIME yes, SMTPUTF8 no, AUTH PLAIN".to_string(),
        "AUTH         succeeded with the configured credentials".to_string(),
        "signing profile \"standard\"".to_string(),
        "example.com: 2 DKIM-Signature(s) per message".to_string(),
        "8-bit        8-bit messages are sent as they are, with BODY=8BITMIME".to_string(),
        "result       usable".to_string(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in\n{out}");
    }
    assert_eq!(upstream.transactions(), 0, "no MAIL without --send-to");
    assert_eq!(upstream.logins().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_not_usable_and_says_to_set_ca_file() {
    let (_upstream, setup) = setup(false).await;
    let (ok, out) = check(&setup, &[]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("verifies NO"), "{out}");
    assert!(out.contains("issuer CN=dkim-relay test CA"), "{out}");
    assert!(out.contains("result       NOT usable"), "{out}");
    assert!(out.contains("at TLS"), "{out}");
    assert!(out.contains("fix          set ca_file"), "{out}");
    assert!(out.contains("1 of 1 upstream(s) not usable"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_reported_with_the_fix() {
    let (upstream, setup) = setup(true).await;
    upstream.refuse_auth(true);
    let (ok, out) = check(&setup, &["--json"]).await;
    assert!(!ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(out.split("\ndkim-relay:").next().unwrap()).expect(&out);
    let entry = &json[0];
    assert_eq!(entry["usable"], false, "{out}");
    assert_eq!(entry["seen"]["auth_ok"], false, "{out}");
    assert_eq!(entry["seen"]["ehlo"]["auth"][0], "PLAIN", "{out}");
    assert_eq!(entry["phase"], "AUTH", "{out}");
    assert!(
        entry["fix"].as_str().unwrap().contains("password_file"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_sends_one_signed_message_and_prints_the_reply() {
    let (upstream, setup) = setup(true).await;
    let (ok, out) = check(&setup, &["--send-to", "ops@example.net"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("test mail    250 2.0.0 queued"), "{out}");
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpts, ["ops@example.net"]);
    assert_eq!(dkim_signatures(&received[0].data), 2);
    let cache = TxtCache::from_store(&setup.dir.path().join("keys"));
    let results = verify(&received[0].data, &cache).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results.iter().all(|r| r.3 == DkimResult::Pass),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_upstream_name_is_a_usage_error() {
    let (_upstream, setup) = setup(true).await;
    let (ok, out) = check(&setup, &["--upstream", "nope"]).await;
    assert!(!ok);
    assert!(
        out.contains("no upstream is named \"nope\" (configured: upstream)"),
        "{out}"
    );
}
