//! What the relay refuses, over raw sockets on 127.0.0.1: message policy (DESIGN §4),
//! clients outside the allowed networks, and SMTP smuggling payloads (DESIGN §3).

mod common;

use common::upstream::FakeUpstream;
use common::*;

/// Spool files other than delivered ones kept for reuse (`.free-N`).
/// What a refused message could have left in the spool: a queued message (in the segment
/// log or a file of its own, as the spool reads them) or a temp file of a write.
fn queued_files(dir: &std::path::Path) -> usize {
    let temps = std::fs::read_dir(dir.join("spool/queue"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    temps + common::spooled_ids(&dir.join("spool")).len()
}

#[tokio::test]
async fn messages_breaking_the_from_policy_are_refused_with_enhanced_codes() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let cases: &[(&str, &str)] = &[
        (
            "To: a@example.net\r\nSubject: no from\r\n\r\nbody\r\n",
            "550 5.6.0",
        ),
        (
            "From: a@example.com\r\nFrom: b@example.com\r\nSubject: two\r\n\r\nbody\r\n",
            "550 5.6.0",
        ),
        (
            "From: a@example.com, b@example.com\r\nSubject: list\r\n\r\nbody\r\n",
            "550 5.6.0",
        ),
        (
            "From: team: a@example.com;\r\nSubject: group\r\n\r\nbody\r\n",
            "550 5.6.0",
        ),
        (
            "From: a@unsigned.example\r\nSubject: no key\r\n\r\nbody\r\n",
            "550 5.7.1",
        ),
        // A subdomain of a configured domain is signed by it since issue 14 (see
        // tests/subdomains.rs); a look-alike is not.
        (
            "From: a@sub.example.com.evil.test\r\nSubject: look-alike\r\n\r\nbody\r\n",
            "550 5.7.1",
        ),
        ("not a header line\r\n\r\nbody\r\n", "550 5.6.0"),
    ];
    let mut client = Client::greeted(relay.smtp_addr()).await;
    for (msg, expected) in cases {
        let r = client.send("a@host", &["u@example.net"], msg).await;
        assert!(r.starts_with(expected), "{msg:?}: got {r}");
    }
    // Since issue 14 a line over 998 octets is re-encoded (tests/message_repair.rs); one
    // over the hard cap, smtp.max_line_length (65536), is still refused.
    let long_line = format!("From: a@example.com\r\n\r\n{}\r\n", "x".repeat(70_000));
    let r = client.send("a@host", &["u@example.net"], &long_line).await;
    assert!(r.starts_with("554 5.6.0"), "{r}");
    // The session is still usable and a good message goes through.
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "ok"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    let mut events = relay.subscribe();
    if upstream.received().is_empty() {
        wait_done(&mut events, 1).await;
    }
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(queued_files(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn clients_outside_the_allowed_networks_cannot_relay() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.smtp.allowed_networks = vec!["192.0.2.0/24".parse().unwrap()];
    let relay = start(config).await;
    // Without AUTH configured nothing could be accepted from them: refused in the
    // greeting and closed (with AUTH they get as far as MAIL: inbound_tls_auth.rs).
    let stream = tokio::net::TcpStream::connect(relay.smtp_addr())
        .await
        .unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let greeting = read_reply_lines(&mut reader).await;
    assert_eq!(greeting.len(), 1);
    assert!(greeting[0].starts_with("554 5.7.1"), "{greeting:?}");
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(upstream.received().is_empty());
    assert_eq!(queued_files(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn protocol_sequence_and_limits_are_enforced() {
    let (relay, _upstream, dir) = relay_with(|_| {}).await;
    let mut client = Client::connect(relay.smtp_addr()).await;
    assert!(
        client
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("503 5.5.1"),
        "MAIL before EHLO"
    );
    client.send_raw(b"EHLO client.test\r\n").await;
    // The EHLO reply advertises the extensions of DESIGN §3 and nothing else.
    let ehlo = client.reply_lines().await;
    assert!(client.cmd("NOOP").await.starts_with("250 2.0.0"));
    assert!(client.cmd("VRFY someone").await.starts_with("252"));
    // HELP lists what this session offers: no certificate, so no STARTTLS and no AUTH.
    let help = client.cmd("HELP").await;
    assert!(
        help.starts_with("214") && !help.contains("STARTTLS") && !help.contains("AUTH"),
        "{help}"
    );
    assert!(client.cmd("STARTTLS").await.starts_with("502"));
    assert!(client.cmd("FOO").await.starts_with("500 5.5.2"));
    assert!(
        client
            .cmd("RCPT TO:<u@example.net>")
            .await
            .starts_with("503"),
        "RCPT before MAIL"
    );
    assert!(client
        .cmd("MAIL FROM:<a@example.com> SIZE=999999999")
        .await
        .starts_with("552 5.3.4"));
    assert!(client
        .cmd("MAIL FROM:<a@example.com> REQUIRETLS")
        .await
        .starts_with("555"));
    assert!(client
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250 2.1.0"));
    assert!(
        client.cmd("DATA").await.starts_with("554 5.5.1"),
        "DATA without RCPT"
    );
    assert!(client
        .cmd("RCPT TO:<nodomain>")
        .await
        .starts_with("501 5.1.3"));
    assert!(client.cmd("RSET").await.starts_with("250"));
    let long = format!("NOOP {}", "x".repeat(600));
    assert!(client.cmd(&long).await.starts_with("500 5.5.2"));
    drop(client);
    assert_eq!(queued_files(dir.path()), 0);
    let text = ehlo.join("\n");
    for ext in [
        "PIPELINING",
        "SIZE 25000000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(text.contains(ext), "{text}");
    }
    assert!(
        !text.contains("CHUNKING") && !text.contains("STARTTLS"),
        "{text}"
    );

    // Recipient limit: the extra RCPT gets 452 4.5.3.
    let dir2 = tempfile::tempdir().unwrap();
    let mut config = config(dir2.path(), None);
    config.smtp.max_recipients = 2;
    let relay2 = start(config).await;
    let mut client = Client::greeted(relay2.smtp_addr()).await;
    client.cmd("MAIL FROM:<a@example.com>").await;
    assert!(client
        .cmd("RCPT TO:<1@example.net>")
        .await
        .starts_with("250"));
    assert!(client
        .cmd("RCPT TO:<2@example.net>")
        .await
        .starts_with("250"));
    assert!(client
        .cmd("RCPT TO:<3@example.net>")
        .await
        .starts_with("452 4.5.3"));
    relay2.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn too_many_errors_close_the_session_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.smtp.max_errors = 3;
    let relay = start(config).await;
    let mut client = Client::connect(relay.smtp_addr()).await;
    assert!(client.cmd("BAD1").await.starts_with("500"));
    assert!(client.cmd("BAD2").await.starts_with("500"));
    client.send_raw(b"BAD3\r\n").await;
    assert!(client.reply().await.starts_with("500"));
    assert!(client.reply().await.starts_with("421 4.7.0"));
    relay.shutdown().await;
}

/// Each payload hides a second message behind an end-of-data that a lenient server would
/// take (bare LF or CR variants, NUL). The relay must refuse the whole message with
/// 550 5.6.0, store nothing, send nothing, and go on serving the session.
#[tokio::test]
async fn smuggling_payloads_are_refused_and_nothing_reaches_the_upstream() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let smuggled_tail = "MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: ceo@example.com\r\nSubject: SMUGGLED\r\n\r\nwire money\r\n";
    let ends: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
    ];
    let mut client = Client::greeted(relay.smtp_addr()).await;
    for end in ends {
        assert!(client
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250"));
        assert!(client
            .cmd("RCPT TO:<u@example.net>")
            .await
            .starts_with("250"));
        assert!(client.cmd("DATA").await.starts_with("354"));
        let mut payload = b"From: a@example.com\r\nSubject: innocent\r\n\r\nhello".to_vec();
        payload.extend_from_slice(end);
        payload.extend_from_slice(smuggled_tail.as_bytes());
        payload.extend_from_slice(b".\r\n");
        client.send_raw(&payload).await;
        let r = client.reply().await;
        assert!(
            r.starts_with("550 5.6.0"),
            "{:?}: {r}",
            String::from_utf8_lossy(end)
        );
    }
    // The same session still relays a clean message.
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "clean"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(
        text.contains("Subject: clean") && !text.contains("SMUGGLED"),
        "{text}"
    );
    assert_eq!(queued_files(dir.path()), 0);

    // A bare LF in a command line is refused too, and resets the transaction.
    assert!(client
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    client.send_raw(b"RCPT TO:<u@example.net>\n").await;
    assert!(client.reply().await.starts_with("500 5.5.2"));
    assert!(client.cmd("DATA").await.starts_with("503"));
    relay.shutdown().await;
}
