//! Inbound TLS and AUTH over 127.0.0.1 with certificates made in the test (rcgen):
//! STARTTLS, implicit TLS, certificate reload, AUTH only inside TLS, bad passwords
//! delayed and refused, lockout after repeated failures, require_tls.

mod common;

use common::inbound::*;
use common::upstream::FakeUpstream;
use common::*;
use std::time::{Duration, Instant};

const USER: &str = "app-a";
const PASSWORD: &str = "correct horse battery staple";

async fn tls_relay(
    require_tls: bool,
) -> (
    dkim_relay::relay::RelayHandle,
    FakeUpstream,
    tempfile::TempDir,
    TestPki,
) {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let users = users_file(dir.path(), &[(USER, PASSWORD, &[DOMAIN])]);
    let mut config = config(dir.path(), Some(upstream.addr));
    // Loopback is not an allowed network here: relaying needs AUTH.
    config.smtp.allowed_networks = vec!["192.0.2.0/24".parse().unwrap()];
    with_tls_and_auth(&mut config, &pki, Some(users));
    if let Some(tls) = config.smtp.tls.as_mut() {
        tls.require_tls = require_tls;
        tls.implicit_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let relay = start(config).await;
    (relay, upstream, dir, pki)
}

#[tokio::test]
async fn auth_is_refused_before_tls_and_accepted_inside_it() {
    let (relay, upstream, dir, pki) = tls_relay(false).await;
    let mut events = relay.subscribe();
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    let ehlo = plain.ehlo().await.join("\n");
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear text: {ehlo}");
    assert_eq!(
        plain.auth_plain(USER, PASSWORD).await,
        "538 5.7.11 Encryption required for requested authentication mechanism; send STARTTLS before AUTH"
    );
    assert!(plain.cmd("AUTH LOGIN").await.starts_with("538 5.7.11"));
    // Not authenticated, not in an allowed network: no relaying.
    assert!(plain
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("550 5.7.1"));

    let (mut tls, ehlo) = plain.starttls(&pki.ca_pem).await;
    let ehlo = ehlo.join("\n");
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(tls.cmd("STARTTLS").await.starts_with("503 5.5.1"));
    assert!(tls
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("550 5.7.1"));
    assert_eq!(
        tls.auth_plain(USER, PASSWORD).await,
        "235 2.7.0 Authentication successful"
    );
    assert!(tls.cmd("AUTH PLAIN").await.starts_with("503 5.5.1"));
    let r = tls
        .send(
            "app@example.com",
            "u@example.net",
            &message("app@example.com", "tls-auth"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_login_works_and_a_wrong_password_is_delayed_then_refused_then_locked_out() {
    let (relay, upstream, dir, pki) = tls_relay(false).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    let (mut tls, _) = plain.starttls(&pki.ca_pem).await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // LOGIN, step by step, with a wrong password: 535 only after the configured delay.
    assert_eq!(tls.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(tls.cmd(&b64(USER)).await, "334 UGFzc3dvcmQ6");
    let t0 = Instant::now();
    assert_eq!(
        tls.cmd(&b64("wrong")).await,
        "535 5.7.8 Authentication credentials invalid; check the user name and password"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    // An unknown user gets the same answer.
    assert!(tls
        .auth_plain("nobody", PASSWORD)
        .await
        .starts_with("535 5.7.8"));
    // `*` cancels.
    assert_eq!(tls.cmd("AUTH PLAIN").await, "334"); // "334 " with the space trimmed
    assert!(tls.cmd("*").await.starts_with("501 5.7.0"));
    assert!(tls
        .auth_plain(USER, "wrong again")
        .await
        .starts_with("535 5.7.8"));
    // Three failures from this address: now even the right password is refused for a while.
    assert_eq!(
        tls.auth_plain(USER, PASSWORD).await,
        "454 4.7.0 Too many failed authentications; try again later"
    );
    assert!(tls
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("550 5.7.1"));
    assert!(upstream.received().is_empty());
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;

    // A fresh relay: LOGIN with the right password.
    let (relay, _upstream, _dir, pki) = tls_relay(false).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    let (mut tls, _) = plain.starttls(&pki.ca_pem).await;
    assert_eq!(
        tls.cmd(&format!("AUTH LOGIN {}", b64(USER))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        tls.cmd(&b64(PASSWORD)).await,
        "235 2.7.0 Authentication successful"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded_not_answered_inside_tls() {
    let (relay, _upstream, _dir, pki) = tls_relay(false).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    plain.send_raw(b"STARTTLS\r\nNOOP\r\n").await;
    assert_eq!(plain.reply().await, "220 2.0.0 Ready to start TLS");
    let mut tls = Smtp::new(handshake(plain.into_inner(), &pki.ca_pem).await);
    // The first reply inside TLS must answer this EHLO, not the NOOP sent in clear text.
    tls.send_raw(b"EHLO client.test\r\n").await;
    let first = tls.reply_lines().await;
    assert_eq!(first[0], "250-relay.test", "{first:?}");
    // Exactly one reply per command from here on: nothing queued from before TLS.
    assert_eq!(tls.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(tls.cmd("RSET").await, "250 2.0.0 OK");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_transaction_begun_in_clear_text_does_not_survive_starttls() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "s");
    let mut config = config(dir.path(), Some(upstream.addr));
    with_tls_and_auth(&mut config, &pki, None);
    let relay = start(config).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    assert!(plain
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250 2.1.0"));
    assert_eq!(plain.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let mut tls = Smtp::new(handshake(plain.into_inner(), &pki.ca_pem).await);
    // No EHLO inside TLS yet: the session is Fresh, the MAIL from before is gone.
    assert_eq!(
        tls.cmd("MAIL FROM:<a@example.com>").await,
        "503 5.5.1 Bad sequence of commands: send EHLO first"
    );
    tls.ehlo().await;
    assert_eq!(
        tls.cmd("RCPT TO:<u@example.net>").await,
        "503 5.5.1 Bad sequence of commands: send MAIL first"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn require_tls_refuses_mail_in_clear_text() {
    let (relay, _upstream, dir, pki) = tls_relay(true).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    assert_eq!(
        plain.cmd("MAIL FROM:<a@example.com>").await,
        "530 5.7.0 Must issue a STARTTLS command first; enable STARTTLS on the client"
    );
    let (mut tls, _) = plain.starttls(&pki.ca_pem).await;
    assert!(tls.auth_plain(USER, PASSWORD).await.starts_with("235"));
    assert!(tls
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250 2.1.0"));
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_implicit_tls_listener_greets_inside_tls_and_offers_auth() {
    let (relay, upstream, _dir, pki) = tls_relay(false).await;
    let mut events = relay.subscribe();
    let addr = relay.smtp_tls_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = Smtp::new(handshake(stream, &pki.ca_pem).await);
    assert!(tls.reply().await.starts_with("220 relay.test"));
    let ehlo = tls.ehlo().await.join("\n");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(tls.auth_plain(USER, PASSWORD).await.starts_with("235"));
    let r = tls
        .send("", "u@example.net", &message("app@example.com", "implicit"))
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_picked_up_without_a_restart() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let old = make_pki(dir.path(), "live");
    let mut config = config(dir.path(), Some(upstream.addr));
    with_tls_and_auth(&mut config, &old, None);
    if let Some(tls) = config.smtp.tls.as_mut() {
        tls.reload_interval = dkim_relay::config::HumanDuration(Duration::from_secs(1));
    }
    let relay = start(config).await;
    let mut plain = Smtp::connect(relay.smtp_addr()).await;
    plain.ehlo().await;
    plain.starttls(&old.ca_pem).await;

    // A renewal replaces both files (same paths, new CA).
    let renewed = make_pki(&dir.path().join("."), "live");
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut plain = Smtp::connect(relay.smtp_addr()).await;
        plain.ehlo().await;
        assert!(plain.cmd("STARTTLS").await.starts_with("220"));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        if connector(&renewed.ca_pem)
            .connect(name, plain.into_inner())
            .await
            .is_ok()
        {
            served = true;
            break;
        }
    }
    assert!(served, "the renewed certificate was never served");
    relay.shutdown().await;
}
