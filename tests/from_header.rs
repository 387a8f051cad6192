//! The From header over real SMTP: a tenant allowed only example.com cannot get a message
//! signed for example.com with a From that another parser reads as a different domain or
//! as several mailboxes (DESIGN §4, first row). Each refusal is 550 5.6.0 naming what is
//! wrong, and nothing reaches the upstream; the everyday forms still go through signed.

mod common;

use common::*;

fn message_from(from: &str, tag: &str) -> String {
    format!(
        "From:{from}\r\nTo: u@example.net\r\nSubject: {tag}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{tag}@test>\r\n\r\nHello.\r\n"
    )
}

#[tokio::test]
async fn a_from_that_parsers_read_differently_is_refused_with_the_reason() {
    // Loopback is a tenant's network, allowed only example.com.
    let (relay, upstream, _dir) = tenant_relay().await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    let refused: &[(&str, &str)] = &[
        (
            " <y@example.org> <x@example.com>",
            "it holds a second <address> after the first",
        ),
        (
            " y@example.org <x@example.com>",
            "the display name holds an unquoted @",
        ),
        (
            " x@exa\r\n mple.com",
            "the address holds a space, fold or comment",
        ),
        (
            " <x@example.com>, <y@example.org>",
            "it holds more than one mailbox",
        ),
        (
            " a@example.org@example.com",
            "the address holds more than one @",
        ),
        (" <> <x@example.com>", "it holds the null address <>"),
        (" team: x@example.com;", "it holds a group"),
        (
            " (<y@example.org>) x@example.com",
            "a comment holds <, > or @",
        ),
        (
            " \"y@example.org\"@example.com",
            "the local part is in quotes",
        ),
        (
            " =?utf-8?q?y=40example.org?=@example.com",
            "reads as a different address to another parser",
        ),
    ];
    for (i, (from, why)) in refused.iter().enumerate() {
        let r = client
            .send(
                "a@example.com",
                &["u@example.net"],
                &message_from(from, &format!("bad{i}")),
            )
            .await;
        assert!(r.starts_with("550 5.6.0 Bad From: "), "{from:?}: {r}");
        assert!(r.contains(why), "{from:?}: {r} should say {why:?}");
    }

    // Issue 14: each refusal names its own fix. Cron's and an unconfigured Postfix's
    // From is a bare user name: the fix is on the sending host, and the reply says where.
    for (from, fix) in [
        (" root (Cron Daemon)", "myorigin"),
        (" root@web01", "MAILFROM="),
        (" a@b.example, c@d.example", "Name <user@example.com>"),
    ] {
        let r = client
            .send(
                "a@example.com",
                &["u@example.net"],
                &message_from(from, "fix"),
            )
            .await;
        assert!(r.starts_with("550 5.6.0 Bad From: "), "{from:?}: {r}");
        assert!(r.contains(fix), "{from:?}: {r} should say {fix:?}");
    }

    let everyday = [
        " joe@example.com",
        " Joe <joe@example.com>",
        " \"Doe, Joe\" <joe@example.com> (cron)",
        " =?UTF-8?Q?J=C3=B6e?= <joe@example.com>",
        "\r\n Joe Q. Public\r\n <joe@example.com>",
    ];
    for (i, from) in everyday.iter().enumerate() {
        let r = client
            .send(
                "a@example.com",
                &["u@example.net"],
                &message_from(from, &format!("ok{i}")),
            )
            .await;
        assert!(r.starts_with("250 2.0.0"), "{from:?}: {r}");
    }
    // A plain From at the other tenant's domain is still refused for authorisation.
    let r = client
        .send(
            "a@example.com",
            &["u@example.net"],
            &message_from(" y@example.org", "other"),
        )
        .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");

    wait_done(&mut events, everyday.len()).await;
    let received = upstream.received();
    assert_eq!(received.len(), everyday.len());
    for m in &received {
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("d=example.com"), "{text}");
        assert!(text.contains("Subject: ok"), "{text}");
    }
    relay.shutdown().await;
}
