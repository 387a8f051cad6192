//! A running relay picks up key store and config changes without a restart, and refuses
//! a broken config while keeping the one in force.

mod common;

use common::upstream::FakeUpstream;
use common::*;
use dkim_relay::keys::KeyStore;
use std::time::{Duration, Instant};

/// Sends until the reply starts with `want` (the file watcher applies changes
/// asynchronously); bounded.
async fn eventually(client: &mut Client, from: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client
            .send("a@host", &["u@example.net"], &message(from, "reload"))
            .await;
        if r.starts_with(want) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn new_domains_and_keys_apply_without_restart_and_bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let path = dir.path().join("relay.toml");
    let keys_dir = config.keys.dir.display().to_string();
    let toml = |domains: &str| {
        format!(
            "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[keys]\ndir = \"{keys_dir}\"\ngenerate_missing = false\n[delivery]\noutbox_dir = \"{}\"\n[rotation]\ndns_check = false\npropagation_wait = \"0s\"\n{domains}",
            config.spool.dir.display(),
            config.delivery.outbox_dir.display()
        )
    };
    std::fs::write(&path, toml("[[domains]]\nname = \"example.com\"\n")).unwrap();
    let file_config = dkim_relay::config::Config::from_file(&path).unwrap();
    let mut relay = start(file_config).await;
    relay.watch(Some(path.clone())).unwrap();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    // A domain the relay has no key for is refused...
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@added.example", "before"),
        )
        .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // ...until keys for it appear in the store (as `keys generate` + activation would do).
    let store = KeyStore::new(&config.keys.dir);
    dkim_relay::relay::bootstrap_keys(&store, &[domain("added.example")]).unwrap();
    let r = eventually(&mut client, "a@added.example", "250").await;
    assert!(r.starts_with("250"), "key store change not applied: {r}");

    // Config changes apply too: Ed25519 off for example.com means one signature...
    let mut events = relay.subscribe();
    let outbox = config.delivery.outbox_dir.clone();
    let count = |id: &str| {
        let text = std::fs::read_to_string(outbox.join(format!("{id}.eml"))).unwrap();
        text.matches("DKIM-Signature:").count()
    };
    for (domains, want) in [
        ("[[domains]]\nname = \"example.com\"\ned25519 = false\n", 1),
        // A broken file is refused (logged) and the watcher carries on...
        ("[[domains]]\nname = \"example.com\"\nbogus_key = 1\n", 1),
        // ...and applies the next good one.
        ("[[domains]]\nname = \"example.com\"\ned25519 = true\n", 2),
    ] {
        std::fs::write(&path, toml(domains)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = client
                .send(
                    "a@host",
                    &["u@example.net"],
                    &message("a@example.com", "cfg"),
                )
                .await;
            assert!(r.starts_with("250"), "{r}");
            let id = r.rsplit(' ').next().unwrap().to_string();
            wait_for(&mut events, |e| matches!(e, dkim_relay::delivery::DeliveryEvent::Done { id: d } if d.as_str() == id)).await;
            if count(&id) == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "config change to {want} signature(s) not applied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    relay.shutdown().await;
}

/// Issue 13: a reload that changes `[[upstreams]]` takes effect without a restart. Before,
/// it logged "config reloaded" and kept sending to the old upstream.
#[tokio::test]
async fn a_reload_that_changes_the_upstreams_sends_new_mail_to_the_new_one() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let path = dir.path().join("relay.toml");
    let toml = |upstream: std::net::SocketAddr| {
        format!(
            "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\nfsync = false\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[rotation]\ndns_check = false\npropagation_wait = \"0s\"\n[[domains]]\nname = \"example.com\"\n[[upstreams]]\nname = \"primary\"\nhost = \"{}\"\nport = {}\ntls = \"none\"\n",
            config.spool.dir.display(),
            config.keys.dir.display(),
            upstream.ip(),
            upstream.port()
        )
    };
    std::fs::write(&path, toml(first.addr)).unwrap();
    let mut relay = start(dkim_relay::config::Config::from_file(&path).unwrap()).await;
    relay.watch(Some(path.clone())).unwrap();
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "one"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    assert_eq!(first.received().len(), 1);

    std::fs::write(&path, toml(second.addr)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while second.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the new upstream got nothing after the reload; the old one got {}",
            first.received().len()
        );
        let r = client
            .send(
                "a@host",
                &["u@example.net"],
                &message("a@example.com", "two"),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        wait_done(&mut events, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From then on mail goes to the new upstream only.
    let before = first.received().len();
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "three"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    assert_eq!(first.received().len(), before);
    relay.shutdown().await;
}

/// Issue 13: the SMTP side reads the config in force, not a copy taken at start. A reload
/// that lowers `smtp.max_recipients` and renames the relay applies to the next
/// connection; a connection open during the reload keeps the rules it started with.
#[tokio::test]
async fn a_reload_of_smtp_limits_applies_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let path = dir.path().join("relay.toml");
    let toml = |hostname: &str, max_recipients: usize| {
        format!(
            "hostname = \"{hostname}\"\n[smtp]\nlisten = \"127.0.0.1:0\"\nmax_recipients = {max_recipients}\n[spool]\ndir = \"{}\"\nfsync = false\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[delivery]\noutbox_dir = \"{}\"\n[rotation]\ndns_check = false\npropagation_wait = \"0s\"\n[[domains]]\nname = \"example.com\"\n",
            config.spool.dir.display(),
            config.keys.dir.display(),
            config.delivery.outbox_dir.display()
        )
    };
    std::fs::write(&path, toml("relay.test", 10)).unwrap();
    let mut relay = start(dkim_relay::config::Config::from_file(&path).unwrap()).await;
    relay.watch(Some(path.clone())).unwrap();
    let mut open = Client::greeted(relay.smtp_addr()).await;

    std::fs::write(&path, toml("renamed.test", 1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut fresh = loop {
        let mut c = Client::connect(relay.smtp_addr()).await;
        c.send_raw(b"EHLO client.test\r\n").await;
        let ehlo = c.reply_lines().await;
        if ehlo[0] == "250-renamed.test" {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded hostname never reached a new connection: {ehlo:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    fresh.ehlo().await;
    assert!(fresh
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(fresh
        .cmd("RCPT TO:<one@example.net>")
        .await
        .starts_with("250"));
    let r = fresh.cmd("RCPT TO:<two@example.net>").await;
    assert!(
        r.starts_with("452 4.5.3"),
        "the reloaded max_recipients = 1: {r}"
    );

    // The connection opened before the reload keeps max_recipients = 10.
    assert!(open
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    for n in 0..3 {
        let r = open.cmd(&format!("RCPT TO:<r{n}@example.net>")).await;
        assert!(
            r.starts_with("250"),
            "an open connection changed rules: {r}"
        );
    }
    relay.shutdown().await;
}
