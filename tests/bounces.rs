//! Bounces (RFC 3464 DSNs): to the envelope sender with `MAIL FROM:<>`, from
//! MAILER-DAEMON, well-formed multipart/report, signed when the relay's domain has keys;
//! never for a `<>` sender. Expiry is reached by spooling a message received days ago
//! (time is an input), not by waiting.

mod common;

use common::upstream::{FakeUpstream, Received};
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::delivery::DeliveryEvent;
use dkim_relay::spool::{Envelope, Origin, QueueId, Spool};
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// The DSN's parts: (content type, text) in order.
fn parts(dsn: &Received) -> Vec<(String, String)> {
    let message = MessageParser::default()
        .parse(&dsn.data)
        .expect("DSN parses");
    let ct = message.content_type().expect("has a Content-Type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    message
        .parts
        .iter()
        .skip(1)
        .map(|p| {
            let ct = p.content_type().unwrap();
            let kind = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
            let text = match &p.body {
                PartType::Text(t) => t.to_string(),
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                other => format!("{other:?}"),
            };
            (kind, text)
        })
        .collect()
}

async fn dsn_of(upstream: &FakeUpstream) -> Received {
    let all = upstream.received();
    let dsns: Vec<_> = all.into_iter().filter(|m| m.mail_from.is_empty()).collect();
    assert_eq!(dsns.len(), 1, "exactly one DSN");
    dsns[0].clone()
}

#[tokio::test]
async fn a_5xx_recipient_gets_a_signed_well_formed_dsn_to_the_envelope_sender() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_rcpt("gone@example.net", "550 5.1.1 no such user");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    // No keys for relay.example.com itself: the DSN is signed for example.com.
    config.hostname = "relay.example.com".into();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "app@example.com",
            &["gone@example.net", "here@example.net"],
            &message("app@example.com", "bounce-me"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_for(&mut events, |e| {
        matches!(e, DeliveryEvent::BounceQueued { .. })
    })
    .await;
    wait_done(&mut events, 2).await; // the original, then the DSN

    let dsn = dsn_of(&upstream).await;
    assert_eq!(dsn.rcpts, ["app@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data).to_string();
    assert!(
        text.contains("From: Mail Delivery System <MAILER-DAEMON@relay.example.com>"),
        "{text}"
    );
    assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
    let parts = parts(&dsn);
    let kinds: Vec<&str> = parts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    let status = &parts[1].1;
    for needle in [
        "Reporting-MTA: dns; relay.example.com",
        "Arrival-Date: ",
        "Final-Recipient: rfc822; gone@example.net",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
    ] {
        assert!(status.contains(needle), "{needle} missing from:\n{status}");
    }
    assert!(
        !status.contains("here@example.net"),
        "delivered recipient reported:\n{status}"
    );
    assert!(parts[2].1.contains("Subject: bounce-me"), "{}", parts[2].1);
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    assert_signed(&dsn.data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_message_from_the_null_sender_is_never_bounced() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_rcpt("gone@example.net", "550 5.1.1 no such user");
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    for sender in ["", "app@example.com"] {
        let r = client
            .send(
                sender,
                &["gone@example.net"],
                &message("app@example.com", "null"),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        // The bounce, if any, is queued before Done.
        let mut seen = Vec::new();
        loop {
            let e = wait_for(&mut events, |_| true).await;
            let done = matches!(e, DeliveryEvent::Done { .. });
            seen.push(e);
            if done {
                break;
            }
        }
        let bounced = seen
            .iter()
            .any(|e| matches!(e, DeliveryEvent::BounceQueued { .. }));
        // The same refusal from a real sender does bounce: this check can fail.
        assert_eq!(bounced, !sender.is_empty(), "sender <{sender}>: {seen:?}");
    }
    relay.shutdown().await;
}

/// Puts a message received `age_s` seconds ago into the spool, as a relay would have.
fn spool_old_message(root: &std::path::Path, age_s: u64, sender: &str) -> QueueId {
    let spool = Spool::open(&root.join("spool"), false).unwrap();
    let now = std::time::SystemTime::now();
    let received = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - age_s;
    let message = message("app@example.com", "old").into_bytes();
    let envelope = Envelope {
        id: QueueId::generate(now),
        received,
        client: "127.0.0.1".parse().unwrap(),
        helo: "client.test".into(),
        mail_from: sender.into(),
        rcpts: vec!["slow@example.net".into()],
        from_domain: DOMAIN.into(),
        size: message.len() as u64,
        eight_bit: false,
        origin: Origin::Client,
        utf8: Default::default(),
    };
    spool.store(&envelope, &message).unwrap();
    envelope.id
}

#[tokio::test]
async fn an_expired_message_bounces_with_4_4_7_and_goes_unsigned_when_the_host_has_no_keys() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_data("451 4.3.0 try again later");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Some(upstream.addr)); // hostname relay.test: no keys
    let old = spool_old_message(dir.path(), 6 * 86_400, "app@example.com");
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let failed = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Failed { .. })).await;
    assert!(format!("{failed:?}").contains(old.as_str()));
    assert!(format!("{failed:?}").contains("expired"), "{failed:?}");
    wait_done(&mut events, 2).await;
    let dsn = dsn_of(&upstream).await;
    assert_eq!(dsn.rcpts, ["app@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data).to_string();
    assert!(!text.contains("DKIM-Signature"), "{text}");
    let status = &parts(&dsn)[1].1;
    assert!(
        status.contains("Final-Recipient: rfc822; slow@example.net"),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 4.4.7"), "{status}");
    assert!(status.contains("Diagnostic-Code: "), "{status}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_delay_warning_is_sent_once_when_configured() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_rcpt("slow@example.net", "451 4.2.2 mailbox full");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.delivery.delay_warning = Some(dkim_relay::config::HumanDuration(
        std::time::Duration::from_secs(3600),
    ));
    spool_old_message(dir.path(), 2 * 3600, "app@example.com");
    let relay = start(config).await;
    let mut events = relay.subscribe();
    wait_for(&mut events, |e| {
        matches!(e, DeliveryEvent::BounceQueued { .. })
    })
    .await;
    wait_done(&mut events, 1).await; // the warning itself
    let dsn = dsn_of(&upstream).await;
    let status = &parts(&dsn)[1].1;
    assert!(status.contains("Action: delayed"), "{status}");
    assert!(status.contains("Status: 4.2.2"), "{status}");
    // Another deferral: no second warning.
    relay.flush();
    loop {
        let e = wait_for(&mut events, |_| true).await;
        assert!(
            !matches!(e, DeliveryEvent::BounceQueued { .. }),
            "warned twice"
        );
        if matches!(e, DeliveryEvent::Deferred { .. }) {
            break;
        }
    }
    relay.shutdown().await;
}
