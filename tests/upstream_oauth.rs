//! `auth = "oauth2"`: tokens from a token endpoint on 127.0.0.1 (HTTPS, certificate from a
//! test CA given as the upstream's ca_file), AUTH XOAUTH2 to a fake upstream that takes
//! only the tokens the endpoint issued. A good token; a cached token the upstream refuses
//! (535, then the renewed one works); the endpoint down; a wrong client secret.

mod common;

use common::child::{queue_cmd, spawn_relay, write_config};
use common::oauth::{TokenEndpoint, CLIENT_ID, CLIENT_SECRET};
use common::pki::pki;
use common::upstream::{FakeUpstream, Tls};
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::config::{AuthMethod, HumanDuration, TlsMode};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAILBOX: &str = "relay@example.com";

/// The OAuth settings of the tests, on the config of an in-process relay.
fn use_oauth(
    config: &mut dkim_relay::config::Config,
    dir: &Path,
    endpoint: &TokenEndpoint,
    ca_pem: &str,
    secret: &str,
) {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let u = config.upstream.as_mut().unwrap();
    u.ca_file = Some(ca_file);
    u.username = Some(MAILBOX.into());
    u.auth = Some(AuthMethod::Oauth2);
    u.token_url = Some(endpoint.url());
    u.scope = Some("https://outlook.office365.com/.default".into());
    u.client_id = Some(CLIENT_ID.into());
    u.client_secret_file = Some(secret_file);
}

async fn send_one(client: &mut Client, subject: &str) -> String {
    let r = client
        .send(
            "app@example.com",
            &["u@example.net"],
            &message("app@example.com", subject),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    r.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn a_good_token_is_fetched_once_and_used_for_every_connection() {
    let pki = pki();
    let endpoint = TokenEndpoint::start(pki.acceptor.clone()).await;
    let upstream = FakeUpstream::start_with(Tls::Starttls(pki.acceptor.clone())).await;
    upstream.accept_xoauth2(endpoint.valid.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    use_oauth(
        &mut config,
        dir.path(),
        &endpoint,
        &pki.ca_pem,
        CLIENT_SECRET,
    );
    config.upstream.as_mut().unwrap().tls = TlsMode::Starttls;
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    // Four clients at once: up to four connections open together, each needing a token.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::greeted(relay.smtp_addr()).await);
    }
    let sends = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| async move { send_one(c, &format!("oauth-{i}")).await });
    futures_join(sends).await;
    wait_done(&mut events, 4).await;

    assert_eq!(upstream.received().len(), 4);
    assert_eq!(
        endpoint.requests(),
        1,
        "one token request for every connection"
    );
    let token = endpoint.issued()[0].clone();
    let logins = upstream.xoauth2_logins();
    assert!(!logins.is_empty());
    assert!(
        logins
            .iter()
            .all(|l| *l == (MAILBOX.to_string(), token.clone())),
        "{logins:?}"
    );
    assert_eq!(upstream.xoauth2_refused(), 0);
    // The client-credentials grant, as Microsoft's endpoint expects it.
    let form = &endpoint.forms()[0];
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("client_id"), Some(CLIENT_ID));
    assert_eq!(field("client_secret"), Some(CLIENT_SECRET));
    assert_eq!(
        field("scope"),
        Some("https://outlook.office365.com/.default")
    );
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    for m in upstream.received() {
        assert_signed(&m.data, &cache, DOMAIN).await;
    }
    relay.shutdown().await;
}

/// Polls until all futures finish (the sends run concurrently on one task).
async fn futures_join<F: std::future::Future<Output = String>>(futures: impl Iterator<Item = F>) {
    let handles: Vec<_> = futures.map(Box::pin).collect();
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in handles.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(_) => *slot = None,
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_refused_cached_token_is_renewed_and_the_message_delivered() {
    let pki = pki();
    let endpoint = TokenEndpoint::start(pki.acceptor.clone()).await;
    let upstream = FakeUpstream::start().await;
    upstream.accept_xoauth2(endpoint.valid.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    use_oauth(
        &mut config,
        dir.path(),
        &endpoint,
        &pki.ca_pem,
        CLIENT_SECRET,
    );
    // No reuse: every message opens a connection and says AUTH.
    config.upstream.as_mut().unwrap().idle_timeout = HumanDuration(Duration::ZERO);
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    send_one(&mut client, "before-expiry").await;
    wait_done(&mut events, 1).await;
    assert_eq!(endpoint.requests(), 1);
    let first = endpoint.issued()[0].clone();

    // The upstream now holds the cached token expired.
    endpoint.revoke(&first);
    send_one(&mut client, "after-expiry").await;
    wait_done(&mut events, 1).await;
    assert_eq!(
        upstream.xoauth2_refused(),
        1,
        "the cached token was tried and refused"
    );
    assert_eq!(endpoint.requests(), 2, "one new token after the 535");
    let second = endpoint.issued()[1].clone();
    assert_ne!(first, second);
    let logins: Vec<String> = upstream.xoauth2_logins().into_iter().map(|l| l.1).collect();
    assert_eq!(logins, [first, second.clone()]);
    assert_eq!(upstream.received().len(), 2);

    // The renewed token is cached: the next connection uses it without a request.
    send_one(&mut client, "renewed").await;
    wait_done(&mut events, 1).await;
    assert_eq!(endpoint.requests(), 2);
    assert_eq!(upstream.xoauth2_logins().last().unwrap().1, second);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_google_service_account_gets_its_token_with_a_signed_jwt() {
    use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
    let pki = pki();
    let endpoint = TokenEndpoint::start(pki.acceptor.clone()).await;
    let key = dkim_relay::keys::generate(dkim_relay::keys::Algorithm::Rsa, 2048).unwrap();
    let der = PrivateKeyDer::from_pem_slice(key.private_pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
    let email = "relay@project.iam.gserviceaccount.com";
    endpoint.trust_service_account(
        email,
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    let upstream = FakeUpstream::start().await;
    upstream.accept_xoauth2(endpoint.valid.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    use_oauth(
        &mut config,
        dir.path(),
        &endpoint,
        &pki.ca_pem,
        CLIENT_SECRET,
    );
    let key_file = dir.path().join("service-account.json");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "project",
        "private_key_id": "0123abcd",
        "private_key": key.private_pem.as_str(),
        "client_email": email,
        "client_id": "123456789012345678901",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&key_file, json.to_string()).unwrap();
    let u = config.upstream.as_mut().unwrap();
    u.client_id = None;
    u.client_secret_file = None;
    u.service_account_file = Some(key_file);
    u.scope = Some("https://mail.google.com/".into());
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    send_one(&mut client, "google").await;
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    let claims = endpoint.claims();
    assert_eq!(claims.len(), 1, "one verified assertion");
    assert_eq!(claims[0]["sub"], MAILBOX);
    assert_eq!(claims[0]["scope"], "https://mail.google.com/");
    assert_eq!(
        upstream.xoauth2_logins(),
        [(MAILBOX.to_string(), endpoint.issued()[0].clone())]
    );
    relay.shutdown().await;
}

/// A relay child process (its log is read) sending through the endpoint's tokens, with
/// `secret` as its client secret.
struct ChildSetup {
    child: common::child::ChildRelay,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    config: std::path::PathBuf,
    endpoint: TokenEndpoint,
    upstream: FakeUpstream,
    _dir: tempfile::TempDir,
}

async fn child_with_oauth(secret: &str, endpoint_down: bool) -> ChildSetup {
    let pki = pki();
    let endpoint = TokenEndpoint::start(pki.acceptor.clone()).await;
    endpoint.set_down(endpoint_down);
    let upstream = FakeUpstream::start().await;
    upstream.accept_xoauth2(endpoint.valid.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("client-secret"), format!("{secret}\n")).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // [upstream] is the last table of the file.
    text.push_str(&format!(
        "username = \"{MAILBOX}\"\nauth = \"oauth2\"\ntoken_url = \"{}\"\nscope = \"https://outlook.office365.com/.default\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"client-secret\"\nca_file = \"ca.pem\"\n",
        endpoint.url()
    ));
    std::fs::write(&config, text).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (child, addr) = spawn_relay(&config, log.clone());
    ChildSetup {
        child,
        addr,
        log,
        config,
        endpoint,
        upstream,
        _dir: dir,
    }
}

fn line_with<'a>(lines: &'a [String], what: &str) -> &'a String {
    lines
        .iter()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?}:\n{}", lines.join("\n")))
}

fn assert_no_secret_in(lines: &[String], secrets: &[String]) {
    for secret in secrets {
        assert!(
            !lines.iter().any(|l| l.contains(secret.as_str())),
            "{secret:?} is in the log:\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_defers_and_logs_it_then_the_mail_goes() {
    let t = child_with_oauth(CLIENT_SECRET, true).await;
    let mut client = Client::greeted(t.addr).await;
    let id = send_one(&mut client, "endpoint-down").await;
    wait_for_log(&t.log, "the deferral", |l| {
        l.iter().any(|x| x.contains(&id) && x.contains(" deferred"))
    })
    .await;
    let lines = t.log.lock().unwrap().clone();
    let failure = line_with(&lines, "OAuth token request failed");
    let port = t.upstream.addr.port();
    for words in [
        format!("upstream=upstream (127.0.0.1:{port})"),
        "token_endpoint=127.0.0.1".into(),
        "http_status=none".into(),
        "fault=transport".into(),
        "unreachable".into(),
    ] {
        assert!(failure.contains(&words), "{words} missing: {failure}");
    }
    assert!(t.upstream.received().is_empty());

    t.endpoint.set_down(false);
    let (ok, out) = queue_cmd(&t.config, &["flush"]);
    assert!(ok, "{out}");
    wait_for_log(&t.log, "the delivery", |l| {
        l.iter().any(|x| x.contains(&id) && x.contains(" done"))
    })
    .await;
    assert_eq!(t.upstream.received().len(), 1, "nothing lost");
    assert_eq!(t.endpoint.requests(), 1);
    let lines = t.log.lock().unwrap().clone();
    line_with(&lines, "OAuth token fetched");
    assert_no_secret_in(
        &lines,
        &[CLIENT_SECRET.into(), t.endpoint.issued()[0].clone()],
    );
    t.child.stop();
}

#[tokio::test]
async fn a_wrong_client_secret_defers_as_our_configuration_with_the_endpoints_words() {
    let wrong = "the-secret-ID-not-its-value";
    let t = child_with_oauth(wrong, false).await;
    let mut client = Client::greeted(t.addr).await;
    let id = send_one(&mut client, "wrong-secret").await;
    wait_for_log(&t.log, "the deferral", |l| {
        l.iter().any(|x| x.contains(&id) && x.contains(" deferred"))
    })
    .await;
    let lines = t.log.lock().unwrap().clone();
    let failure = line_with(&lines, "OAuth token request failed");
    for words in [
        "token_endpoint=127.0.0.1",
        "http_status=401",
        "oauth_error=invalid_client",
        "fault=our-config",
        "AADSTS7000215: Invalid client secret provided",
        "check client_id and client_secret_file",
    ] {
        assert!(failure.contains(words), "{words} missing: {failure}");
    }
    let deferred = lines
        .iter()
        .find(|l| l.contains(&id) && l.contains(" deferred"))
        .unwrap();
    assert!(
        deferred.contains("our-config") && deferred.contains("invalid_client"),
        "{deferred}"
    );
    assert!(t.upstream.received().is_empty());
    assert_eq!(
        t.upstream.xoauth2_logins().len() + t.upstream.xoauth2_refused(),
        0,
        "no AUTH without a token"
    );
    assert_no_secret_in(&lines, &[wrong.into()]);
    t.child.stop();
}

async fn wait_for_log(log: &Mutex<Vec<String>>, what: &str, pred: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    while !pred(&log.lock().unwrap()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; log:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
