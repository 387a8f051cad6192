//! The rest of the message policy (DESIGN §4) and the smuggling payloads of DESIGN §3
//! placed in the header block and in command arguments. Every refusal: exact reply,
//! nothing in the spool, nothing at the upstream.

mod common;

use common::inbound::*;
use common::verify::{assert_signed, TxtCache};
use common::*;

const ENDS: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
];

/// Header lines (not continuation lines such as a signature's h= list) starting so.
fn fields(text: &str, start: &str) -> usize {
    text.split("\r\n").filter(|l| l.starts_with(start)).count()
}

#[tokio::test]
async fn eight_bit_content_is_refused_when_the_upstream_cannot_carry_it() {
    let (relay, upstream, dir) = relay_with(|c| c.smtp.upstream_8bitmime = false).await;
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    let ehlo = smtp.ehlo().await.join("\n");
    assert!(!ehlo.contains("8BITMIME"), "{ehlo}");
    assert_eq!(
        smtp.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME").await,
        "555 5.5.4 Parameter not supported; send the command without it"
    );
    let body = "From: a@example.com\r\nSubject: caf\u{e9}\r\n".replace("caf\u{e9}", "cafe")
        + "\r\ncaf\u{e9} au lait\r\n";
    assert_eq!(
        smtp.send("a@example.com", "u@example.net", &body).await,
        "554 5.6.0 8-bit message content cannot be relayed; use a 7-bit encoding"
    );
    assert!(upstream.received().is_empty());
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn utf8_headers_and_addresses_are_refused_without_smtputf8() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    let ehlo = smtp.ehlo().await.join("\n");
    assert!(
        ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8"),
        "{ehlo}"
    );
    let r = smtp.cmd("MAIL FROM:<j\u{f6}rg@example.com>").await;
    assert_eq!(
        r,
        "553 5.6.7 Non-ASCII addresses not permitted (no SMTPUTF8)"
    );
    assert!(smtp
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    let r = smtp.cmd("RCPT TO:<j\u{f6}rg@example.net>").await;
    assert_eq!(
        r,
        "553 5.6.7 Non-ASCII addresses not permitted (no SMTPUTF8)"
    );
    smtp.cmd("RSET").await;
    let msg = "From: J\u{f6}rg <a@example.com>\r\nSubject: hi\r\n\r\nbody\r\n";
    assert_eq!(
        smtp.send("a@example.com", "u@example.net", msg).await,
        "553 5.6.7 Non-ASCII header fields not permitted (no SMTPUTF8)"
    );
    // An 8-bit body is fine when the upstream carries 8BITMIME.
    let msg = "From: a@example.com\r\nSubject: hi\r\n\r\ncaf\u{e9}\r\n";
    assert!(smtp
        .send("a@example.com", "u@example.net", msg)
        .await
        .starts_with("250"));
    let mut events = relay.subscribe();
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_missing_message_id_and_date_are_added_before_signing() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    smtp.ehlo().await;
    let msg = "From: a@example.com\r\nTo: u@example.net\r\nSubject: bare\r\n\r\nbody\r\n";
    let r = smtp.send("a@example.com", "u@example.net", msg).await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    let text = String::from_utf8_lossy(&received[0].data).to_string();
    assert_eq!(fields(&text, "Message-ID: <"), 1, "{text}");
    assert!(text.contains("@relay.test>\r\n"), "{text}");
    assert_eq!(fields(&text, "Date: "), 1, "{text}");
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    assert_signed(&received[0].data, &cache, DOMAIN).await;
    let signature = text.split("DKIM-Signature:").nth(1).unwrap_or_default();
    let h = signature.split("h=").nth(1).unwrap_or_default();
    let h: String = h.split(';').next().unwrap_or_default().to_ascii_lowercase();
    assert!(h.contains("message-id") && h.contains("date"), "{h}");

    // A message that has them keeps its own.
    let r = smtp
        .send(
            "a@example.com",
            "u@example.net",
            &message("a@example.com", "own"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    let text = String::from_utf8_lossy(&upstream.received()[1].data).to_string();
    assert_eq!(fields(&text, "Message-ID:"), 1, "{text}");
    assert!(text.contains("Message-ID: <own@test>"), "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn smuggling_payloads_in_the_header_block_are_refused() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    smtp.ehlo().await;
    let tail = "MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nSMUGGLED\r\n";
    for end in ENDS {
        assert!(smtp
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250"));
        assert!(smtp.cmd("RCPT TO:<u@example.net>").await.starts_with("250"));
        assert!(smtp.cmd("DATA").await.starts_with("354"));
        let mut payload = b"From: a@example.com\r\nSubject: inno".to_vec();
        payload.extend_from_slice(end);
        payload.extend_from_slice(tail.as_bytes());
        payload.extend_from_slice(b".\r\n");
        smtp.send_raw(&payload).await;
        let r = smtp.reply().await;
        assert!(
            r.starts_with("550 5.6.0"),
            "{:?}: {r}",
            String::from_utf8_lossy(end)
        );
    }
    assert!(upstream.received().is_empty());
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn smuggling_payloads_in_command_arguments_never_start_a_transaction() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    for end in ENDS {
        for (before, after) in [
            ("MAIL FROM:<a@example.com", ">"),
            ("RCPT TO:<u@example.net", ">"),
            ("EHLO client", ""),
        ] {
            let mut smtp = Smtp::connect(relay.smtp_addr()).await;
            smtp.ehlo().await;
            if before.starts_with("RCPT") {
                assert!(smtp
                    .cmd("MAIL FROM:<a@example.com>")
                    .await
                    .starts_with("250"));
            }
            let mut payload = before.as_bytes().to_vec();
            payload.extend_from_slice(end);
            payload.extend_from_slice(
                format!("{after}\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: a@example.com\r\n\r\nSMUGGLED\r\n.\r\nNOOP sentinel\r\n")
                    .as_bytes(),
            );
            smtp.send_raw(&payload).await;
            let mut replies = Vec::new();
            loop {
                let r = smtp.reply().await;
                if r == "250 2.0.0 OK" {
                    break;
                }
                replies.push(r);
            }
            let what = String::from_utf8_lossy(end);
            // Nothing smuggled may open or advance a transaction.
            let advanced = |r: &String| {
                r.starts_with("250 2.1") || r.starts_with("354") || r.contains("queued")
            };
            assert!(
                !replies.iter().any(advanced),
                "{before}{what:?}: {replies:?}"
            );
            assert!(
                replies
                    .iter()
                    .any(|r| r.starts_with("500 5.5.2 Command line contains")),
                "{before}{what:?}: {replies:?}"
            );
        }
    }
    assert!(upstream.received().is_empty());
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

/// Issue 14 item 4: rspamd fails every DKIM signature of a message that repeats a field
/// RFC 5322 allows once. Repeated To and Cc are joined into one field (an address list,
/// so nothing is lost) before signing; the others are refused, naming the field, and
/// nothing is stored.
#[tokio::test]
async fn a_repeated_unique_field_is_refused_naming_it_and_to_is_joined() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    smtp.ehlo().await;
    for (field, extra) in [
        ("Subject", "Subject: one\r\nsubject: two\r\n"),
        ("Message-ID", "Message-Id: <1@x>\r\nMessage-ID: <2@x>\r\n"),
        (
            "Reply-To",
            "Reply-To: a@example.com\r\nReply-To: z@example.org\r\n",
        ),
        ("References", "References: <1@x>\r\nReferences: <2@x>\r\n"),
    ] {
        let msg = format!("From: a@example.com\r\n{extra}\r\nbody\r\n");
        let reply = smtp.send("a@example.com", "u@example.net", &msg).await;
        assert_eq!(
            reply,
            format!(
                "550 5.6.0 Message has more than one {field} header field; RFC 5322 allows one, \
                 and receivers fail the DKIM signature of such a message: write one {field} field"
            )
        );
    }
    assert_eq!(queued(dir.path()), 0);
    // Two To fields (a legacy ERP's habit) become one, signed; fields that may repeat pass.
    let msg = "From: a@example.com\r\nTo: b@example.net\r\nComments: x\r\nTo: c@example.net\r\nComments: y\r\n\r\nbody\r\n";
    let reply = smtp.send("a@example.com", "u@example.net", msg).await;
    assert!(reply.starts_with("250"), "{reply}");
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let text = String::from_utf8_lossy(&received[0].data).to_string();
    assert_eq!(fields(&text, "To: "), 1, "{text}");
    assert!(
        text.contains("\r\nTo: b@example.net,\r\n c@example.net\r\nComments: x\r\nComments: y\r\n"),
        "{text}"
    );
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    assert_signed(&received[0].data, &cache, DOMAIN).await;
    relay.shutdown().await;
}
