//! The cache and single-flight rules with a stand-in endpoint and tokio's paused clock,
//! and the two grants' request bodies (the JWT verified with the key's public half).

use super::*;
use std::sync::atomic::AtomicUsize;

/// Hands out "tok-1", "tok-2", … with the given lifetime, once `gate` has a permit.
struct Counting {
    calls: Arc<AtomicUsize>,
    lifetime: Option<Duration>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Fetch for Counting {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Fetched, TokenError>> + Send + '_>> {
        Box::pin(async move {
            let _permit = self.gate.acquire().await;
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Fetched {
                token: Secret::new(format!("tok-{n}")),
                expires_in: self.lifetime,
            })
        })
    }
}

struct Harness {
    tokens: Arc<TokenSource>,
    calls: Arc<AtomicUsize>,
    /// Closed: fetches wait until the test adds permits.
    gate: Arc<tokio::sync::Semaphore>,
    /// The clock the source reads; tests move it by hand.
    now: Arc<std::sync::Mutex<Instant>>,
}

impl Harness {
    fn new(lifetime: Option<Duration>, open: bool) -> Harness {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(if open {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let fetcher = Counting {
            calls: calls.clone(),
            lifetime,
            gate: gate.clone(),
        };
        let now = Arc::new(std::sync::Mutex::new(Instant::now()));
        let clock = now.clone();
        let tokens = TokenSource::with_fetcher(Box::new(fetcher), "login.test")
            .with_clock(Arc::new(move || *clock.lock().unwrap()));
        Harness {
            tokens: Arc::new(tokens),
            calls,
            gate,
            now,
        }
    }

    fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Lets every spawned task run until it waits (the test runtime has one thread).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn renewal_is_five_minutes_early_or_at_eighty_percent() {
    assert_eq!(
        renew_after(Duration::from_secs(3600)),
        Duration::from_secs(3300)
    );
    assert_eq!(
        renew_after(Duration::from_secs(100)),
        Duration::from_secs(80)
    );
    assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    assert_eq!(
        renew_after(Duration::from_secs(u64::MAX)),
        renew_after(MAX_LIFETIME)
    );
}

#[tokio::test]
async fn a_token_is_reused_until_its_renewal_time_then_fetched_again() {
    let h = Harness::new(Some(Duration::from_secs(100)), true);
    let first = h.tokens.token().await.unwrap();
    assert!(!first.cached);
    h.advance(Duration::from_secs(79));
    let again = h.tokens.token().await.unwrap();
    assert!(again.cached);
    assert_eq!(again.value.expose(), "tok-1");
    h.advance(Duration::from_secs(2));
    let renewed = h.tokens.token().await.unwrap();
    assert_eq!(renewed.value.expose(), "tok-2");
    assert!(!renewed.cached);
    assert_eq!(h.calls(), 2);
    assert_eq!(h.tokens.fetches(), 2);
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    let h = Harness::new(None, false);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let tokens = h.tokens.clone();
        tasks.push(tokio::spawn(async move { tokens.token().await.unwrap() }));
    }
    // All eight are waiting: one inside the fetch, the others for its answer.
    settle().await;
    h.gate.add_permits(1000);
    for t in tasks {
        assert_eq!(t.await.unwrap().value.expose(), "tok-1");
    }
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_however_many_connections_report_it() {
    let h = Harness::new(None, false);
    h.gate.add_permits(1);
    let refused = h.tokens.token().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (tokens, refused) = (h.tokens.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            tokens.renew(&refused).await.unwrap()
        }));
    }
    settle().await;
    h.gate.add_permits(1000);
    for t in tasks {
        assert_eq!(t.await.unwrap().value.expose(), "tok-2");
    }
    assert_eq!(h.calls(), 2);
    // The renewed token is cached like any other.
    assert_eq!(h.tokens.token().await.unwrap().value.expose(), "tok-2");
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached() {
    struct Down(AtomicUsize);
    impl Fetch for Down {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Fetched, TokenError>> + Send + '_>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Err(TokenError {
                    endpoint: "login.test".into(),
                    problem: TokenProblem::Unreachable("connection refused".into()),
                })
            })
        }
    }
    let tokens = TokenSource::with_fetcher(Box::new(Down(AtomicUsize::new(0))), "login.test");
    assert!(tokens.token().await.is_err());
    assert!(tokens.token().await.is_err());
    assert_eq!(tokens.fetches(), 2);
}

#[test]
fn debug_never_shows_a_token_or_secret() {
    let s = Secret::new("very-secret-value".into());
    assert_eq!(format!("{s:?}"), "<redacted>");
    let token = AccessToken {
        value: s,
        cached: false,
        generation: 1,
    };
    assert!(!format!("{token:?}").contains("very-secret"));
}

#[test]
fn the_client_credentials_form_has_the_four_fields() {
    let grant = grant::Grant::ClientSecret {
        client_id: "app-id".into(),
        secret: Secret::new("s3cret".into()),
        scope: "https://outlook.office365.com/.default".into(),
    };
    let form = grant.form(0).unwrap();
    let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        fields,
        [
            ("grant_type", "client_credentials"),
            ("client_id", "app-id"),
            ("client_secret", "s3cret"),
            ("scope", "https://outlook.office365.com/.default"),
        ]
    );
    assert!(!format!("{grant:?}").contains("s3cret"));
}

#[test]
fn the_service_account_assertion_is_an_rs256_jwt_the_key_verifies() {
    use base64::Engine;
    let material = crate::keys::generate(crate::keys::Algorithm::Rsa, 2048).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sa.json");
    let json = serde_json::json!({
        "type": "service_account",
        "client_email": "relay@project.iam.gserviceaccount.com",
        "private_key_id": "kid-1",
        "private_key": material.private_pem.as_str(),
    });
    std::fs::write(&path, json.to_string()).unwrap();
    let settings = OAuthSettings {
        token_url: "https://oauth2.googleapis.com/token".into(),
        scope: "https://mail.google.com/".into(),
        user: "box@example.com".into(),
        grant: crate::config::OAuthGrant::ServiceAccount {
            key_file: path.clone(),
        },
    };
    let grant = grant::Grant::load(&settings).unwrap();
    assert!(!format!("{grant:?}").contains("PRIVATE"));
    let form = grant.form(1_800_000_000).unwrap();
    assert_eq!(form[0].0, "grant_type");
    assert_eq!(
        form[0].1.as_str(),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let jwt = form[1].1.as_str();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "kid-1");
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "relay@project.iam.gserviceaccount.com");
    assert_eq!(claims["sub"], "box@example.com");
    assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
    assert_eq!(claims["scope"], "https://mail.google.com/");
    assert_eq!(claims["iat"], 1_800_000_000u64);
    assert_eq!(claims["exp"], 1_800_003_600u64);
    // Verify with the public half, as Google does.
    use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
    let der = PrivateKeyDer::from_pem_slice(material.private_pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(signed.as_bytes(), &b64.decode(parts[2]).unwrap())
        .unwrap();

    // A key file of the wrong kind is refused, naming the field and not the key.
    std::fs::write(&path, r#"{"type":"authorized_user","client_id":"x"}"#).unwrap();
    let err = grant::Grant::load(&settings).unwrap_err();
    assert!(err.contains("upstream.service_account_file") && err.contains("authorized_user"));
    std::fs::write(
        &path,
        "{\"private_key\": \"-----BEGIN PRIVATE KEY-----\nMIIE",
    )
    .unwrap();
    let err = grant::Grant::load(&settings).unwrap_err();
    assert!(!err.contains("MIIE"), "{err}");
}
