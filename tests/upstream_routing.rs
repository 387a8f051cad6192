//! Several upstreams: the bounded connection pool, failover when one is down, routes by
//! From domain, the Amazon SES signing profile, and how upstream replies are classified
//! (421 mid-session, 4xx/5xx per recipient, AUTH 535). All over 127.0.0.1.

mod common;

use common::upstream::FakeUpstream;
use common::verify::{assert_signed, verify, TxtCache};
use common::*;
use dkim_relay::config::{RouteConfig, SigningProfileName};
use dkim_relay::delivery::{DeliveryEvent, Fault};
use mail_auth::DkimResult;

async fn send_one(
    relay: &dkim_relay::relay::RelayHandle,
    from: &str,
    rcpts: &[&str],
    subject: &str,
) {
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send("app@host", rcpts, &message(from, subject))
        .await;
    assert!(r.starts_with("250"), "{r}");
}

fn named(addr: std::net::SocketAddr, name: &str) -> dkim_relay::config::UpstreamConfig {
    let mut u = upstream_config(addr);
    u.name = name.into();
    u
}

fn h_tag(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let h = text.split("h=").nth(1).unwrap().split(';').next().unwrap();
    h.replace(['\r', '\n', '\t', ' '], "")
        .split(':')
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn the_pool_never_opens_more_connections_than_its_size_and_reuses_them() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.delivery.workers = 6;
    config.upstream.as_mut().unwrap().pool_size = 2;
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut clients = Vec::new();
    for c in 0..3 {
        let addr = relay.smtp_addr();
        clients.push(tokio::spawn(async move {
            let mut client = Client::greeted(addr).await;
            for i in 0..8 {
                let r = client
                    .send(
                        "app@host",
                        &["u@example.net"],
                        &message("app@example.com", &format!("pool-{c}-{i}")),
                    )
                    .await;
                assert!(r.starts_with("250"), "{r}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    wait_done(&mut events, 24).await;
    assert_eq!(upstream.received().len(), 24);
    assert!(
        upstream.max_open() <= 2,
        "{} connections open at once",
        upstream.max_open()
    );
    assert!(
        upstream.connections() <= 2,
        "{} connections made",
        upstream.connections()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn when_the_primary_refuses_connections_the_secondary_gets_the_mail() {
    let secondary = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.upstreams = vec![
        named(closed_port(), "primary"),
        named(secondary.addr, "secondary"),
    ];
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    send_one(&relay, "app@example.com", &["u@example.net"], "failover").await;
    wait_done(&mut events, 1).await;
    assert_eq!(secondary.received().len(), 1);
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    assert_signed(&secondary.received()[0].data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_route_sends_a_from_domain_to_its_named_upstream() {
    let general = FakeUpstream::start().await;
    let special = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.upstreams = vec![
        named(general.addr, "general"),
        named(special.addr, "special"),
    ];
    config.routes = vec![RouteConfig {
        from_domains: vec![OTHER_DOMAIN.into()],
        client_networks: vec![],
        upstreams: vec!["special".into()],
    }];
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    send_one(&relay, "a@example.com", &["u@example.net"], "to-general").await;
    send_one(&relay, "a@example.org", &["u@example.net"], "to-special").await;
    wait_done(&mut events, 2).await;
    let subject = |m: &common::upstream::Received| {
        String::from_utf8_lossy(&m.data).contains("Subject: to-special")
    };
    assert_eq!(general.received().len(), 1);
    assert!(!subject(&general.received()[0]));
    assert_eq!(special.received().len(), 1);
    assert!(subject(&special.received()[0]));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_ses_profile_signs_once_with_rsa_and_leaves_date_and_message_id_out() {
    let ses = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(ses.addr));
    config.upstream.as_mut().unwrap().profile = Some(SigningProfileName::Ses);
    let relay = start(config).await;
    let mut events = relay.subscribe();
    send_one(&relay, "a@example.com", &["u@example.net"], "ses").await;
    wait_done(&mut events, 1).await;
    let data = &ses.received()[0].data;
    let text = String::from_utf8_lossy(data);
    assert_eq!(text.matches("DKIM-Signature:").count(), 1, "{text}");
    assert!(text.contains("a=rsa-sha256"), "{text}");
    let h = h_tag(data);
    assert!(h.contains(&"from".to_string()), "{h:?}");
    assert!(!h.contains(&"date".to_string()), "{h:?}");
    assert!(!h.contains(&"message-id".to_string()), "{h:?}");
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    let results = verify(data, &cache).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].3, DkimResult::Pass, "{results:?}");
    // The standard profile, for contrast: two signatures, Date in h= (so the checks above can fail).
    relay.shutdown().await;
    let standard = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(common::config(dir.path(), Some(standard.addr))).await;
    let mut events = relay.subscribe();
    send_one(&relay, "a@example.com", &["u@example.net"], "standard").await;
    wait_done(&mut events, 1).await;
    let data = &standard.received()[0].data;
    assert_eq!(
        String::from_utf8_lossy(data)
            .matches("DKIM-Signature:")
            .count(),
        2
    );
    assert!(h_tag(data).contains(&"date".to_string()));
    relay.shutdown().await;
}

#[tokio::test]
async fn an_upstream_down_for_a_while_gets_everything_once_it_is_back() {
    let upstream = FakeUpstream::start().await;
    upstream.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    for i in 0..3 {
        send_one(
            &relay,
            "a@example.com",
            &["u@example.net"],
            &format!("down-{i}"),
        )
        .await;
    }
    for _ in 0..3 {
        wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    }
    // Still down at the first retry.
    relay.flush();
    for _ in 0..3 {
        wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    }
    assert!(upstream.received().is_empty());
    upstream.set_down(false);
    relay.flush();
    wait_done(&mut events, 3).await;
    assert_eq!(upstream.received().len(), 3);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_421_in_the_middle_of_a_session_defers_and_a_new_connection_delivers() {
    for pipelining in [true, false] {
        a_421_at_rcpt(pipelining).await;
    }
}

async fn a_421_at_rcpt(pipelining: bool) {
    let upstream = FakeUpstream::start().await;
    upstream.offer_pipelining(pipelining);
    upstream.reply_to_rcpt("u@example.net", "421 4.3.2 shutting down");
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    send_one(
        &relay,
        "a@example.com",
        &["u@example.net", "v@example.net"],
        "421",
    )
    .await;
    let e = wait_for(&mut events, |_| true).await;
    let DeliveryEvent::Deferred { cause, .. } = &e else {
        panic!("421 must defer every recipient, got {e:?}")
    };
    assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(421), "{cause}");
    assert_eq!(cause.fault, Fault::Upstream);
    upstream.clear_rcpt_replies();
    relay.flush();
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(
        upstream.received()[0].rcpts,
        ["u@example.net", "v@example.net"]
    );
    assert_eq!(
        upstream.connections(),
        2,
        "the closed connection was not reused"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_4xx_for_one_recipient_delivers_the_other_and_retries_only_that_one() {
    // The upstream offers PIPELINING (MAIL, RCPTs and DATA in one write) unless told not
    // to; the per-recipient results must be the same either way.
    for pipelining in [true, false] {
        one_4xx_recipient(pipelining).await;
    }
}

async fn one_4xx_recipient(pipelining: bool) {
    let upstream = FakeUpstream::start().await;
    upstream.offer_pipelining(pipelining);
    upstream.reply_to_rcpt("later@example.net", "450 4.2.1 mailbox busy");
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    send_one(
        &relay,
        "a@example.com",
        &["later@example.net", "now@example.net"],
        "4xx",
    )
    .await;
    wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    assert_eq!(upstream.received()[0].rcpts, ["now@example.net"]);
    upstream.clear_rcpt_replies();
    relay.flush();
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].rcpts, ["later@example.net"]);
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_535_is_deferred_as_our_fault_never_failed() {
    let upstream = FakeUpstream::start().await;
    upstream.refuse_auth(true);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "wrong\n").unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    let u = config.upstream.as_mut().unwrap();
    u.username = Some("relay".into());
    u.password_file = Some(password);
    let relay = start(config).await;
    let mut events = relay.subscribe();
    send_one(&relay, "someone@example.com", &["u@example.net"], "auth").await;
    let e = wait_for(&mut events, |e| {
        !matches!(e, DeliveryEvent::Delivered { .. })
    })
    .await;
    let DeliveryEvent::Deferred { cause, .. } = e else {
        panic!("AUTH 535 must defer, got {e:?}")
    };
    assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(535), "{cause}");
    assert_eq!(cause.fault, Fault::OurConfig, "{cause}");
    relay.flush();
    let e = wait_for(&mut events, |_| true).await;
    assert!(matches!(e, DeliveryEvent::Deferred { .. }), "{e:?}");
    assert!(upstream.received().is_empty());
    assert_eq!(upstream.transactions(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_530_authentication_required_at_mail_is_deferred_never_bounced() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_mail(Some("530 5.7.0 Authentication required"));
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    send_one(&relay, "someone@example.com", &["u@example.net"], "530").await;
    let e = wait_for(&mut events, |_| true).await;
    let DeliveryEvent::Deferred { cause, .. } = e else {
        panic!("530 must defer, got {e:?}")
    };
    assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(530), "{cause}");
    assert_eq!(cause.fault, Fault::OurConfig, "{cause}");
    // Fixed (the upstream takes mail again): delivered, and no bounce was ever made.
    upstream.reply_to_mail(None);
    relay.flush();
    loop {
        let e = wait_for(&mut events, |_| true).await;
        assert!(
            !matches!(
                e,
                DeliveryEvent::Failed { .. } | DeliveryEvent::BounceQueued { .. }
            ),
            "{e:?}"
        );
        if matches!(e, DeliveryEvent::Done { .. }) {
            break;
        }
    }
    assert_eq!(upstream.received().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_route_by_client_network_takes_precedence_in_order() {
    let general = FakeUpstream::start().await;
    let special = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.upstreams = vec![
        named(general.addr, "general"),
        named(special.addr, "special"),
    ];
    config.routes = vec![RouteConfig {
        from_domains: vec![],
        client_networks: vec!["127.0.0.0/8".parse().unwrap()],
        upstreams: vec!["special".into(), "general".into()],
    }];
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    send_one(&relay, "a@example.com", &["u@example.net"], "by-network").await;
    wait_done(&mut events, 1).await;
    assert_eq!(special.received().len(), 1);
    assert!(general.received().is_empty());
    relay.shutdown().await;
}

/// An upstream that repeats our AUTH token (or the password) in its replies: the reason
/// logged, sent as an event and stored in the queue state as `last_error` holds neither.
#[tokio::test]
async fn an_upstream_reply_echoing_our_credentials_is_redacted_everywhere() {
    use base64::Engine;
    let secret = "Upstream-S3cret";
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0relay\0{secret}"));
    for at_mail in [false, true] {
        let upstream = FakeUpstream::start().await;
        if at_mail {
            // AUTH works; the MAIL reply repeats the token.
            upstream.reply_to_mail(Some(&format!("451 4.7.0 session {token} throttled")));
        } else {
            upstream.refuse_auth_echoing();
        }
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, format!("{secret}\n")).unwrap();
        let mut config = config(dir.path(), Some(upstream.addr));
        let u = config.upstream.as_mut().unwrap();
        u.username = Some("relay".into());
        u.password_file = Some(password);
        let spool = config.spool.dir.clone();
        let relay = start(config).await;
        let mut events = relay.subscribe();
        send_one(&relay, "someone@example.com", &["u@example.net"], "echo").await;
        let e = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
        let DeliveryEvent::Deferred { cause, .. } = e else {
            unreachable!()
        };
        let reason = cause.to_string();
        assert!(reason.contains("[redacted]"), "{reason}");
        assert!(
            !reason.contains(secret) && !reason.contains(&token[..16]),
            "{reason}"
        );
        // The queue state on disk (last_error) holds no credential either.
        let states: Vec<String> = std::fs::read_dir(spool.join("queue"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "state"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(!states.is_empty());
        for state in states {
            assert!(state.contains("[redacted]"), "{state}");
            assert!(
                !state.contains(secret) && !state.contains(&token[..16]),
                "{state}"
            );
        }
        relay.shutdown().await;
    }
}
