//! End to end over 127.0.0.1: client → relay → fake upstream, signatures verified with
//! mail-auth against the records the key store publishes.

mod common;

use common::upstream::FakeUpstream;
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::delivery::{DeliveryEvent, Fault};

#[tokio::test]
async fn relayed_mail_is_signed_with_rsa_and_ed25519_and_verifies() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let body = "From: \"Cron Daemon\" <cron@example.com>\r\nTo: ops@example.net\r\nSubject: backup done\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a1@host>\r\n\r\nAll good.\r\n.hidden dot line\r\n\r\n  \r\n";
    let r = client
        .send(
            "cron@host.internal",
            &["ops@example.net", "dev@example.net"],
            body,
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let r = client
        .send(
            "",
            &["ops@example.net"],
            &message(OTHER_DOMAIN_FROM, "bounce"),
        )
        .await;
    assert!(
        r.starts_with("250"),
        "bounce with MAIL FROM:<> refused: {r}"
    );
    wait_done(&mut events, 2).await;

    let received = upstream.received();
    assert_eq!(received.len(), 2);
    // Two workers deliver concurrently: find each message by its sender.
    let first = received.iter().find(|m| !m.mail_from.is_empty()).unwrap();
    assert_eq!(first.mail_from, "cron@host.internal");
    assert_eq!(first.rcpts, ["ops@example.net", "dev@example.net"]);
    assert_signed(&first.data, &cache, DOMAIN).await;
    let text = String::from_utf8_lossy(&first.data);
    assert!(
        text.contains("\r\n.hidden dot line\r\n"),
        "dot-stuffing was not undone:\n{text}"
    );
    assert!(
        text.contains("Received: from client.test ([127.0.0.1])"),
        "{text}"
    );
    // Over-signing: From occurs once, so h= names it twice.
    let h = text
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace(['\r', '\n', '\t', ' '], "");
    assert_eq!(
        h.split(':')
            .filter(|n| n.eq_ignore_ascii_case("from"))
            .count(),
        2,
        "{h}"
    );

    let bounce = received.iter().find(|m| m.mail_from.is_empty()).unwrap();
    assert_eq!(bounce.mail_from, "");
    assert_signed(&bounce.data, &cache, OTHER_DOMAIN).await;

    // A changed body byte must fail verification: the check above can fail.
    let mut tampered = first.data.clone();
    let pos = tampered.windows(8).position(|w| w == b"All good").unwrap();
    tampered[pos] = b'a';
    let results = common::verify::verify(&tampered, &cache).await;
    assert!(
        results.iter().all(|r| r.3 != mail_auth::DkimResult::Pass),
        "{results:?}"
    );
    relay.shutdown().await;
}

const OTHER_DOMAIN_FROM: &str = "MAILER-DAEMON@example.org";

#[tokio::test]
async fn restart_with_a_non_empty_spool_delivers_exactly_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    // First life: the upstream is down, so everything stays queued.
    let relay = start(config(dir.path(), Some(closed_port()))).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    for i in 0..3 {
        let r = client
            .send(
                "app@host",
                &["u@example.net"],
                &message("app@example.com", &format!("queued-{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    for _ in 0..3 {
        wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    }
    drop(client);
    relay.shutdown().await;
    let spooled = spooled_ids(&dir.path().join("spool")).len();
    assert_eq!(spooled, 3);

    // Second life: the upstream is back.
    let upstream = FakeUpstream::start().await;
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    relay.flush(); // the loaded messages are due after retry_initial; do not wait for it
    wait_done(&mut events, 3).await;
    let mut subjects: Vec<String> = upstream
        .received()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).to_string();
            text.lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "Subject: queued-0",
            "Subject: queued-1",
            "Subject: queued-2"
        ]
    );
    // Nothing left but delivered files kept for reuse (`.free-N`).
    let left: Vec<String> = std::fs::read_dir(dir.path().join("spool/queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".free-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_temporary_failure_is_retried_and_delivered_once() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_data("451 4.3.0 try again later");
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "retry"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let deferred = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    let DeliveryEvent::Deferred { cause, .. } = deferred else {
        unreachable!()
    };
    assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(451), "{cause}");
    assert!(upstream.received().is_empty());

    relay.flush(); // stands in for the retry delay
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    // The connection was kept open and reused for the retry.
    assert_eq!(upstream.connections(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_permanent_refusal_fails_that_recipient_only() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_rcpt("gone@example.net", "550 5.1.1 no such user");
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "app@host",
            &["gone@example.net", "here@example.net"],
            &message("app@example.com", "partial"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let failed = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Failed { .. })).await;
    let DeliveryEvent::Failed { rcpt, cause, .. } = failed else {
        unreachable!()
    };
    assert_eq!(rcpt, "gone@example.net");
    assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(550), "{cause}");
    // The message, then the bounce to its sender (tests/bounces.rs checks the bounce).
    wait_done(&mut events, 2).await;
    let received: Vec<_> = upstream
        .received()
        .into_iter()
        .filter(|m| !m.mail_from.is_empty())
        .collect();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpts, ["here@example.net"]);

    // A message refused at DATA fails for everyone and leaves the spool.
    upstream.reply_to_data("554 5.7.1 rejected by policy");
    let r = client
        .send(
            "app@host",
            &["x@example.net"],
            &message("app@example.com", "refused"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_for(
        &mut events,
        |e| matches!(e, DeliveryEvent::Failed { rcpt, .. } if rcpt == "x@example.net"),
    )
    .await;
    wait_done(&mut events, 1).await;
    let originals = upstream
        .received()
        .iter()
        .filter(|m| !m.mail_from.is_empty())
        .count();
    assert_eq!(originals, 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn without_an_upstream_signed_mail_lands_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), None)).await;
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "someone@example.com",
            &["u@example.net"],
            &message("someone@example.com", "laptop"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    let files: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().unwrap(), "eml");
    assert_signed(&std::fs::read(&files[0]).unwrap(), &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_domain_whose_key_is_unreadable_is_deferred_never_sent_unsigned() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Some(upstream.addr));
    // Make example.org's RSA key world-readable: the relay must refuse to use it.
    let key = dir.path().join("keys/example.org/s1.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.org", "nokey"),
        )
        .await;
    assert!(
        r.starts_with("250"),
        "accepted so the operator can fix the key: {r}"
    );
    let deferred = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    let DeliveryEvent::Deferred { cause, .. } = deferred else {
        unreachable!()
    };
    assert_eq!(cause.fault, Fault::Relay, "{cause}");
    assert!(
        cause.detail.contains("readable by group or others"),
        "{cause}"
    );
    assert!(!cause.to_string().contains("PRIVATE KEY"));
    assert!(upstream.received().is_empty());

    // Fixed and reloaded: the queued message goes out signed.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    relay.reload_keys();
    relay.flush();
    wait_done(&mut events, 1).await;
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    assert_signed(&upstream.received()[0].data, &cache, OTHER_DOMAIN).await;
    relay.shutdown().await;
}
