//! UTF-8 and 8-bit mail end to end over 127.0.0.1 (issue 14 items 1 and 2): taken with
//! or without SMTPUTF8, then sent to each upstream in the form its EHLO takes, signed
//! as sent: UTF-8 with SMTPUTF8, RFC 2047 encoded-words without it, quoted-printable
//! without 8BITMIME, and a DSN for a UTF-8 address that has no ASCII form.

mod common;

use common::upstream::FakeUpstream;
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::delivery::DeliveryEvent;
use mail_parser::MessageParser;

/// `mail -s 'Grüße'` through msmtp: a UTF-8 Subject, no SMTPUTF8 parameter, no MIME.
const MAIL_S: &str = "From: App <app@example.com>\r\nTo: ops@example.net\r\nSubject: Grüße aus Köln\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <utf8-1@host>\r\n\r\nHello.\r\n";

fn originals(upstream: &FakeUpstream) -> Vec<common::upstream::Received> {
    upstream
        .received()
        .into_iter()
        .filter(|m| !m.mail_from.is_empty())
        .collect()
}

fn header_section(data: &[u8]) -> &[u8] {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    &data[..end]
}

#[tokio::test]
async fn a_utf8_subject_goes_as_utf8_to_an_upstream_with_smtputf8() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    upstream.offer_smtputf8(true);
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));

    let mut client = Client::connect(relay.smtp_addr()).await;
    let ehlo = {
        client.send_raw(b"EHLO client.test\r\n").await;
        client.reply_lines().await
    };
    assert!(ehlo.iter().any(|l| l == "250-SMTPUTF8"), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l == "250-8BITMIME"), "{ehlo:?}");
    let r = client
        .send("app@example.com", &["ops@example.net"], MAIL_S)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    wait_done(&mut events, 1).await;

    let got = originals(&upstream);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].mail_line.contains(" SMTPUTF8"),
        "{}",
        got[0].mail_line
    );
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(text.contains("\r\nSubject: Grüße aus Köln\r\n"), "{text}");
    assert_signed(&got[0].data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_utf8_subject_goes_as_encoded_words_to_an_upstream_without_smtputf8() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));

    let mut client = Client::greeted(relay.smtp_addr()).await;
    // A long subject, and a UTF-8 display name: several encoded-words, folded.
    let subject = "Größenänderung der Datenbank ".repeat(6);
    let message = MAIL_S
        .replace("Grüße aus Köln", subject.trim())
        .replace("From: App", "From: Jörg Müller")
        // Two To fields are joined into one (message::unique) before the form is made.
        .replace(
            "To: ops@example.net\r\n",
            "To: ops@example.net\r\nTo: Jürgen <j@example.net>\r\n",
        );
    let r = client
        .send("app@example.com", &["ops@example.net"], &message)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    wait_done(&mut events, 1).await;

    let got = originals(&upstream);
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].mail_line.contains("SMTPUTF8"),
        "{}",
        got[0].mail_line
    );
    let header = header_section(&got[0].data);
    assert!(header.is_ascii(), "{}", String::from_utf8_lossy(header));
    assert!(
        header.split(|&b| b == b'\n').all(|l| l.len() <= 998),
        "a header line over 998"
    );
    let parsed = MessageParser::new().parse(&got[0].data[..]).unwrap();
    assert_eq!(parsed.subject(), Some(subject.trim()));
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Jörg Müller"));
    assert_eq!(from.address(), Some("app@example.com"));
    let to: Vec<_> = parsed.to().unwrap().iter().collect();
    assert_eq!(to.len(), 2, "{to:?}");
    assert_eq!(to[1].name(), Some("Jürgen"));
    assert_signed(&got[0].data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_utf8_address_to_an_upstream_without_smtputf8_bounces_saying_why() {
    let (relay, upstream, _dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client.cmd("MAIL FROM:<app@example.com> SMTPUTF8").await;
    assert!(r.starts_with("250"), "{r}");
    for rcpt in ["jörg@example.net", "joe@bücher.example", "ok@example.net"] {
        let r = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    let r = client.cmd("DATA").await;
    assert!(r.starts_with("354"), "{r}");
    client.send_raw(format!("{MAIL_S}.\r\n").as_bytes()).await;
    let r = client.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");

    let failed = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Failed { .. })).await;
    let DeliveryEvent::Failed { rcpt, cause, .. } = failed else {
        unreachable!()
    };
    assert_eq!(rcpt, "jörg@example.net");
    assert_eq!(cause.fault.name(), "unconvertible", "{cause}");
    // The message, then the bounce to its sender.
    wait_done(&mut events, 2).await;

    let got = originals(&upstream);
    assert_eq!(got.len(), 1);
    // A U-label domain goes as its A-label; the UTF-8 local part is not sent at all.
    assert_eq!(
        got[0].rcpts,
        ["joe@xn--bcher-kva.example", "ok@example.net"]
    );
    assert!(
        !got[0].mail_line.contains("SMTPUTF8"),
        "{}",
        got[0].mail_line
    );
    let bounce = upstream
        .received()
        .into_iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a bounce");
    assert_eq!(bounce.rcpts, ["app@example.com"]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(text.contains("SMTPUTF8"), "{text}");
    assert!(text.contains("5.6.7"), "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn an_8bit_body_goes_as_quoted_printable_to_an_upstream_without_8bitmime() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    upstream.offer_8bitmime(false);
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let body = "Liebe Grüße,\r\nstraße ".repeat(40);
    let message = format!(
        "From: app@example.com\r\nTo: ops@example.net\r\nSubject: report\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    );
    let r = client
        .cmd("MAIL FROM:<app@example.com> BODY=8BITMIME")
        .await;
    assert!(r.starts_with("250"), "{r}");
    let r = client.cmd("RCPT TO:<ops@example.net>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = client.cmd("DATA").await;
    assert!(r.starts_with("354"), "{r}");
    client.send_raw(format!("{message}.\r\n").as_bytes()).await;
    let r = client.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    wait_done(&mut events, 1).await;

    let got = originals(&upstream);
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].mail_line.contains("8BITMIME"),
        "{}",
        got[0].mail_line
    );
    assert!(
        got[0].data.is_ascii(),
        "{}",
        String::from_utf8_lossy(&got[0].data)
    );
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
        "{text}"
    );
    assert!(!text.contains("Content-Transfer-Encoding: 8bit"), "{text}");
    let parsed = MessageParser::new().parse(&got[0].data[..]).unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), body.trim_end());
    assert_signed(&got[0].data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn header_bytes_that_are_not_utf8_are_refused_with_a_reason() {
    let (relay, _upstream, _dir) = relay_with(|_| {}).await;
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client.cmd("MAIL FROM:<app@example.com>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = client.cmd("RCPT TO:<ops@example.net>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = client.cmd("DATA").await;
    assert!(r.starts_with("354"), "{r}");
    // Latin-1 "café".
    client
        .send_raw(b"From: app@example.com\r\nSubject: caf\xe9\r\n\r\nx\r\n.\r\n")
        .await;
    let r = client.reply().await;
    assert!(r.starts_with("554 5.6.7"), "{r}");
    assert!(r.contains("not valid UTF-8"), "{r}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_utf8_from_address_goes_only_where_smtputf8_is_and_its_bounce_too() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    upstream.offer_smtputf8(true);
    upstream.reply_to_rcpt("gone@example.net", "550 5.1.1 no such user");
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    let message = MAIL_S.replace(
        "From: App <app@example.com>",
        "From: Jörg <jörg@example.com>",
    );

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client.cmd("MAIL FROM:<jörg@example.com> SMTPUTF8").await;
    assert!(r.starts_with("250"), "{r}");
    for rcpt in ["ok@example.net", "gone@example.net"] {
        let r = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(client.cmd("DATA").await.starts_with("354"));
    client.send_raw(format!("{message}.\r\n").as_bytes()).await;
    let r = client.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // The message, then its bounce to the UTF-8 sender.
    wait_done(&mut events, 2).await;
    let got = originals(&upstream);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].mail_line.contains(" SMTPUTF8"),
        "{}",
        got[0].mail_line
    );
    assert_eq!(got[0].mail_from, "jörg@example.com");
    assert_signed(&got[0].data, &cache, DOMAIN).await;
    let bounce = upstream
        .received()
        .into_iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a bounce");
    assert_eq!(bounce.rcpts, ["jörg@example.com"]);
    assert!(
        bounce.mail_line.contains(" SMTPUTF8"),
        "{}",
        bounce.mail_line
    );

    relay.shutdown().await;

    // Without SMTPUTF8 the From address has no 7-bit form: every recipient fails.
    let (relay, upstream, _dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send("app@example.com", &["ok@example.net"], &message)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let failed = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Failed { .. })).await;
    let DeliveryEvent::Failed { cause, .. } = failed else {
        unreachable!()
    };
    assert_eq!(cause.fault.name(), "unconvertible", "{cause}");
    assert!(cause.to_string().contains("From"), "{cause}");
    wait_done(&mut events, 2).await;
    assert!(originals(&upstream).is_empty(), "nothing was sent");
    relay.shutdown().await;
}

#[test]
fn old_envelopes_load_and_ascii_ones_are_written_as_before() {
    use dkim_relay::spool::{Envelope, Utf8Use};
    // A spool file's envelope from before SMTPUTF8: no utf8 field.
    let old = r#"{"id":"0005f1a2b3c4d5e6aabbccdd","received":1764000000,"client":"127.0.0.1","helo":"h","mail_from":"a@example.com","rcpts":["b@example.net"],"from_domain":"example.com","size":10,"eight_bit":false,"origin":"client"}"#;
    let envelope: Envelope = serde_json::from_str(old).unwrap();
    assert!(envelope.utf8.is_none());
    // Written back without the field, so an older relay reads it too.
    assert_eq!(serde_json::to_string(&envelope).unwrap(), old);
    let utf8 = Envelope {
        utf8: Utf8Use {
            requested: true,
            headers: true,
            addresses: false,
        },
        ..envelope
    };
    let back: Envelope = serde_json::from_str(&serde_json::to_string(&utf8).unwrap()).unwrap();
    assert_eq!(back, utf8);
}
