//! Authorisation as data: which From (and envelope sender) domains a client may use, by
//! network and by AUTH user, as tables. Each refusal is checked for its exact reply and
//! for leaving nothing in the spool and nothing at the upstream.

mod common;

use common::inbound::*;
use common::upstream::FakeUpstream;
use common::*;

/// (MAIL FROM, header From, expected reply prefix)
type Row = (&'static str, &'static str, &'static str);

const DENIED_FROM: &str = "550 5.7.1 Not authorised to send as the From domain; send as a domain this client may use, or add it to its from_domains";
const DENIED_SENDER: &str = "550 5.7.1 Not authorised to use this envelope sender domain; use a MAIL FROM in a domain this client may use, or <>";

async fn run_table<S>(smtp: &mut Smtp<S>, table: &[Row]) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut accepted = 0;
    for (i, (sender, from, expected)) in table.iter().enumerate() {
        let r = smtp
            .send(sender, "u@example.net", &message(from, &format!("row{i}")))
            .await;
        assert!(
            r.starts_with(expected),
            "row {i} ({sender}, {from}): got {r}"
        );
        if r.starts_with("250") {
            accepted += 1;
        } else {
            // A refused MAIL leaves no transaction; a refused DATA ends it.
            smtp.cmd("RSET").await;
        }
    }
    accepted
}

#[tokio::test]
async fn a_tenant_network_cannot_send_as_another_tenants_domain() {
    // Loopback is a tenant's network, allowed only example.com.
    let (relay, upstream, dir) = tenant_relay().await;
    let mut events = relay.subscribe();
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    smtp.ehlo().await;
    let table: &[Row] = &[
        ("a@example.com", "a@example.com", "250 2.0.0"),
        ("", "a@example.com", "250 2.0.0"),
        ("a@example.com", "ceo@example.org", DENIED_FROM),
        ("a@example.com", "x@sub.example.com", DENIED_FROM),
        ("a@example.org", "a@example.com", DENIED_SENDER),
        ("a@EXAMPLE.ORG", "a@example.com", DENIED_SENDER),
        ("a@sub.example.com", "a@example.com", DENIED_SENDER),
    ];
    let accepted = run_table(&mut smtp, table).await;
    assert_eq!(accepted, 2);
    wait_done(&mut events, accepted).await;
    let received = upstream.received();
    assert_eq!(received.len(), accepted);
    assert!(received
        .iter()
        .all(|m| String::from_utf8_lossy(&m.data).contains("From: Sender <a@example.com>")));
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn an_authenticated_user_may_send_only_as_the_users_domains() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "t");
    let users = users_file(
        dir.path(),
        &[
            ("tenant-a", "pw-a", &[DOMAIN]),
            ("tenant-b", "pw-b", &[OTHER_DOMAIN]),
        ],
    );
    let mut config = config(dir.path(), Some(upstream.addr));
    // Loopback may relay as anything by network, but AUTH replaces the network's grant.
    with_tls_and_auth(&mut config, &pki, Some(users));
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let cases: &[(&str, &str, &[Row])] = &[
        (
            "tenant-a",
            "pw-a",
            &[
                ("a@example.com", "a@example.com", "250 2.0.0"),
                ("a@example.com", "b@example.org", DENIED_FROM),
                ("b@example.org", "a@example.com", DENIED_SENDER),
            ],
        ),
        (
            "tenant-b",
            "pw-b",
            &[
                ("b@example.org", "b@example.org", "250 2.0.0"),
                ("b@example.org", "a@example.com", DENIED_FROM),
                ("a@example.com", "b@example.org", DENIED_SENDER),
            ],
        ),
    ];
    let mut accepted = 0;
    for (user, password, table) in cases {
        let mut plain = Smtp::connect(relay.smtp_addr()).await;
        plain.ehlo().await;
        let (mut tls, _) = plain.starttls(&pki.ca_pem).await;
        assert!(tls.auth_plain(user, password).await.starts_with("235"));
        accepted += run_table(&mut tls, table).await;
    }
    assert_eq!(accepted, 2);
    wait_done(&mut events, accepted).await;
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}
