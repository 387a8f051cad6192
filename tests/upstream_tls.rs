//! Delivery over TLS to an upstream with a private CA (certificates made in the test with
//! rcgen), STARTTLS and implicit TLS, with AUTH PLAIN from a password file.

mod common;

use common::pki::pki;
use common::upstream::{FakeUpstream, Tls};
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::config::TlsMode;

async fn deliver_over(mode: TlsMode) {
    let pki = pki();
    let tls = match mode {
        TlsMode::Starttls => Tls::Starttls(pki.acceptor.clone()),
        TlsMode::Implicit => Tls::Implicit(pki.acceptor.clone()),
        TlsMode::None => Tls::None,
    };
    let upstream = FakeUpstream::start_with(tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret-pass\n").unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    if let Some(u) = config.upstream.as_mut() {
        u.tls = mode;
        u.ca_file = Some(ca_file);
        u.username = Some("relay-user".into());
        u.password_file = Some(password_file);
    }
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    for i in 0..2 {
        let r = client
            .send(
                "app@host",
                &["u@example.net"],
                &message("app@example.com", &format!("tls-{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        wait_done(&mut events, 1).await;
    }
    assert_eq!(
        upstream.tls_sessions(),
        1,
        "one TLS session, reused for both messages"
    );
    assert_eq!(
        upstream.logins(),
        [("relay-user".to_string(), "s3cret-pass".to_string())]
    );
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    for m in upstream.received() {
        assert_signed(&m.data, &cache, DOMAIN).await;
    }
    assert_eq!(upstream.received().len(), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn starttls_upstream_with_a_private_ca_and_auth() {
    deliver_over(TlsMode::Starttls).await;
}

#[tokio::test]
async fn implicit_tls_upstream_with_a_private_ca_and_auth() {
    deliver_over(TlsMode::Implicit).await;
}

#[tokio::test]
async fn an_untrusted_certificate_defers_instead_of_sending() {
    let pki = pki();
    let upstream = FakeUpstream::start_with(Tls::Implicit(pki.acceptor.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, pki_other_ca()).unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    if let Some(u) = config.upstream.as_mut() {
        u.tls = TlsMode::Implicit;
        u.ca_file = Some(other_ca);
    }
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "untrusted"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let deferred = wait_for(&mut events, |e| {
        matches!(e, dkim_relay::delivery::DeliveryEvent::Deferred { .. })
    })
    .await;
    let dkim_relay::delivery::DeliveryEvent::Deferred { cause, .. } = deferred else {
        unreachable!()
    };
    // A certificate that does not verify is for the operator to fix (ca_file, or the
    // upstream's certificate): mail waits, the log says ERROR and what to change.
    assert_eq!(
        cause.fault,
        dkim_relay::delivery::Fault::OurConfig,
        "{cause}"
    );
    assert_eq!(
        cause.phase,
        Some(dkim_relay::delivery::Phase::Tls),
        "{cause}"
    );
    assert!(cause.detail.contains("certificate"), "{cause}");
    assert!(cause.fix_field().contains("ca_file"), "{cause:?}");
    assert!(upstream.received().is_empty());
    relay.shutdown().await;
}

fn pki_other_ca() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
