//! Envelope addresses reach the upstream as the very RFC 5321 paths the relay checked
//! (DESIGN §4, last row): quoted local parts are written quoted again, and a quote that
//! would smuggle parameters (AUTH=, RET=, ENVID=, NOTIFY=, ORCPT=) past the relay's own
//! 555 refusals is refused. The fake upstream records each MAIL and RCPT line byte for byte.

mod common;

use common::upstream::FakeUpstream;
use common::*;
use dkim_relay::delivery::{DeliveryEvent, Fault};
use dkim_relay::spool::{Envelope, Origin, QueueId, Spool};

/// MAIL and RCPT exactly as given, then a small message from a@example.com.
async fn send_lines(client: &mut Client, mail: &str, rcpt: &str, tag: &str) -> (String, String) {
    let r = client.cmd(mail).await;
    if !r.starts_with("250") {
        return (r, String::new());
    }
    let r2 = client.cmd(rcpt).await;
    if !r2.starts_with("250") {
        client.cmd("RSET").await;
        return (r, r2);
    }
    assert!(client.cmd("DATA").await.starts_with("354"));
    client
        .send_raw(format!("{}.\r\n", message("a@example.com", tag)).as_bytes())
        .await;
    let end = client.reply().await;
    assert!(end.starts_with("250 2.0.0"), "{tag}: {end}");
    (r, r2)
}

#[tokio::test]
async fn quoted_local_parts_reach_the_upstream_quoted_and_cannot_inject_parameters() {
    let (relay, upstream, _dir) = tenant_relay().await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    // (MAIL line, RCPT line, what the upstream must receive for both)
    let forwarded: &[(&str, &str, &str, &str)] = &[
        (
            r#"MAIL FROM:<"joe"@example.com>"#,
            r#"RCPT TO:<"u1"@example.net>"#,
            "MAIL FROM:<joe@example.com>",
            "RCPT TO:<u1@example.net>",
        ),
        (
            r#"MAIL FROM:<"a b"@example.com>"#,
            r#"RCPT TO:<"x\"y z"@example.net>"#,
            r#"MAIL FROM:<"a b"@example.com>"#,
            r#"RCPT TO:<"x\"y z"@example.net>"#,
        ),
        (
            r#"MAIL FROM:<"x@other.org"@example.com>"#,
            r#"RCPT TO:<@hop.example.net:"u2 AUTH=x"@example.net>"#,
            r#"MAIL FROM:<"x@other.org"@example.com>"#,
            r#"RCPT TO:<"u2 AUTH=x"@example.net>"#,
        ),
    ];
    for (i, (mail, rcpt, _, _)) in forwarded.iter().enumerate() {
        let (m, r) = send_lines(&mut client, mail, rcpt, &format!("ok{i}")).await;
        assert!(
            m.starts_with("250 2.1.0") && r.starts_with("250 2.1.5"),
            "{mail} {rcpt}: {m} / {r}"
        );
    }

    // The attacks from the issue: the quote hides "> PARAM=<" from a reader that unquotes.
    let refused: &[(&str, &str, &str)] = &[
        (
            r#"MAIL FROM:<"x@other.org> AUTH=<ceo"@example.com>"#,
            "RCPT TO:<u@example.net>",
            "501 5.1.7 Bad sender address: the local part holds < or >",
        ),
        (
            r#"MAIL FROM:<"x> RET=FULL ENVID=<y"@example.com>"#,
            "RCPT TO:<u@example.net>",
            "501 5.1.7 Bad sender address: the local part holds < or >",
        ),
        (
            "MAIL FROM:<a@example.com>",
            r#"RCPT TO:<"u> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;<v"@example.net>"#,
            "553 5.1.3 Bad recipient address: the local part holds < or >",
        ),
        (
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<\"u\\>\"@example.net>",
            "553 5.1.3 Bad recipient address: the local part holds < or >",
        ),
        (
            r#"MAIL FROM:<"ceo"@other.org>"#,
            "RCPT TO:<u@example.net>",
            "550 5.7.1",
        ),
        (
            "MAIL FROM:<a@example.com.>",
            "RCPT TO:<u@example.net>",
            "501 5.1.7 Bad sender address: the domain is not a valid host name",
        ),
    ];
    for (mail, rcpt, want) in refused {
        let (m, r) = send_lines(&mut client, mail, rcpt, "refused").await;
        let got = if m.starts_with("250") { r } else { m };
        assert!(
            got.starts_with(want),
            "{mail} {rcpt}: got {got}, want {want}"
        );
    }

    wait_done(&mut events, forwarded.len()).await;
    let mut received = upstream.received();
    received.sort_by_key(|m| {
        String::from_utf8_lossy(&m.data)
            .find("Subject: ok")
            .map(|i| m.data[i + 11])
    });
    let lines: Vec<(String, Vec<String>)> = received
        .iter()
        .map(|m| (m.mail_line.clone(), m.rcpt_lines.clone()))
        .collect();
    let want: Vec<(String, Vec<String>)> = forwarded
        .iter()
        .map(|(_, _, m, r)| (m.to_string(), vec![r.to_string()]))
        .collect();
    assert_eq!(lines, want);
    relay.shutdown().await;
}

/// A spool file written before addresses were checked may hold the injected text itself;
/// it must never be sent as it stands.
#[tokio::test]
async fn a_stored_address_that_is_not_a_path_is_never_sent() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Some(upstream.addr));
    let spool = Spool::open(&dir.path().join("spool"), false).unwrap();
    let message = message("a@example.com", "old").into_bytes();
    for (sender, rcpts) in [
        ("x@other.org> AUTH=<ceo@example.com", vec!["u@example.net"]),
        (
            "a@example.com",
            vec![
                "v> NOTIFY=SUCCESS ORCPT=rfc822;w@example.net",
                "ok@example.net",
            ],
        ),
    ] {
        let now = std::time::SystemTime::now();
        let envelope = Envelope {
            id: QueueId::generate(now),
            received: now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            client: "127.0.0.1".parse().unwrap(),
            helo: "client.test".into(),
            mail_from: sender.into(),
            rcpts: rcpts.into_iter().map(String::from).collect(),
            from_domain: DOMAIN.into(),
            size: message.len() as u64,
            eight_bit: false,
            origin: Origin::Client,
            utf8: Default::default(),
        };
        spool.store(&envelope, &message).unwrap();
    }
    drop(spool);
    // Down until subscribed, so no delivery event can pass before the test listens.
    upstream.set_down(true);
    let relay = start(config).await;
    let mut events = relay.subscribe();
    upstream.set_down(false);
    relay.flush();
    // The two spooled messages and a DSN for each: the one to the bad sender fails too.
    let mut failed = Vec::new();
    let mut done = 0;
    while done < 4 {
        match wait_for(&mut events, |_| true).await {
            DeliveryEvent::Failed { rcpt, cause, .. } => {
                assert_eq!(cause.fault, Fault::Relay, "{cause}");
                failed.push((rcpt, cause.detail))
            }
            DeliveryEvent::Done { .. } => done += 1,
            _ => {}
        }
    }
    failed.sort();
    assert_eq!(failed.len(), 3, "{failed:?}");
    for (rcpt, reason) in &failed {
        assert!(
            reason.contains("is not a valid address"),
            "{rcpt}: {reason}"
        );
    }
    let received = upstream.received();
    let client_mail: Vec<_> = received
        .iter()
        .filter(|m| !m.mail_from.is_empty())
        .collect();
    assert_eq!(client_mail.len(), 1, "{received:?}");
    assert_eq!(client_mail[0].mail_line, "MAIL FROM:<a@example.com>");
    assert_eq!(client_mail[0].rcpt_lines, ["RCPT TO:<ok@example.net>"]);
    for m in &received {
        for line in std::iter::once(&m.mail_line).chain(&m.rcpt_lines) {
            assert!(
                !line.contains('=') && line.matches('>').count() == 1,
                "{line}"
            );
        }
    }
    relay.shutdown().await;
}
