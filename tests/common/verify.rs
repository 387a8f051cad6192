//! DKIM verification with mail-auth against the records the key store publishes, through
//! an in-memory TXT cache (no DNS traffic).

use dkim_relay::keys::KeyStore;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::Mutex;

#[derive(Default)]
pub struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

impl TxtCache {
    /// Inserts a record under its lower-case FQDN with a trailing dot (DESIGN §8).
    pub fn add(&self, name: &str, value: &str) {
        let key = DomainKey::parse(value.as_bytes()).expect("record parses");
        self.0.lock().unwrap().insert(
            format!("{}.", name.to_ascii_lowercase()).into(),
            Txt::from(key),
        );
    }

    /// Every record of the key store at `dir`.
    pub fn from_store(dir: &Path) -> TxtCache {
        let cache = TxtCache::default();
        let store = KeyStore::new(dir);
        for domain in store.domains().unwrap() {
            let state = store.load(&domain).unwrap().unwrap();
            for slot in &state.slots {
                let record = store.record(&domain, slot).unwrap();
                cache.add(&record.name, &record.value);
            }
        }
        cache
    }
}

/// Verifies every DKIM-Signature of `message`; returns (a=, d=, s=, result) per signature.
pub async fn verify(message: &[u8], cache: &TxtCache) -> Vec<(String, String, String, DkimResult)> {
    let authenticator = loopback_authenticator();
    // mail-auth 0.13.3's verifier has the same trailing-blank-line bug as its signer
    // (issue #62); relaxed canonicalization ignores those lines, so verify without them.
    // `relaxed_body_hash` below checks bh= independently on the full message.
    let message = dkim_relay::dkim::signable_prefix(message);
    let parsed = AuthenticatedMessage::parse(message).expect("message parses");
    let outputs = authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(cache))
        .await;
    outputs
        .iter()
        .map(|o| {
            let sig = o.signature().expect("signature present");
            (
                sig.a.name().to_string(),
                sig.d.clone(),
                sig.s.clone(),
                o.result().clone(),
            )
        })
        .collect()
}

/// Asserts the message carries a passing RSA and a passing Ed25519 signature for `domain`.
pub async fn assert_signed(message: &[u8], cache: &TxtCache, domain: &str) {
    let results = verify(message, cache).await;
    let algorithms: Vec<&str> = results.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(algorithms, ["rsa-sha256", "ed25519-sha256"], "{results:?}");
    let expected_bh = relaxed_body_hash(message);
    for bh in tag_values(message, "bh") {
        assert_eq!(
            bh, expected_bh,
            "bh= differs from an independent relaxed body hash"
        );
    }
    for (a, d, _, result) in &results {
        assert_eq!(d, domain);
        assert_eq!(
            *result,
            DkimResult::Pass,
            "{a} did not pass: {result:?}\n{}",
            String::from_utf8_lossy(message)
        );
    }
}

/// RFC 6376 §3.4.4 relaxed body canonicalization, written from the RFC for the tests:
/// trailing WSP removed from each line, runs of WSP reduced to one space, empty lines at
/// the end removed, and a non-empty body ends in CRLF. Returns base64(SHA-256).
pub fn relaxed_body_hash(message: &[u8]) -> String {
    use base64::Engine;
    let body = match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &message[p + 4..],
        None => &[][..],
    };
    let text = body.strip_suffix(b"\r\n").unwrap_or(body);
    let mut lines: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let mut out = Vec::new();
            let mut in_wsp = false;
            for &b in l {
                if b == b' ' || b == b'\t' {
                    in_wsp = true;
                } else {
                    if in_wsp {
                        out.push(b' ');
                    }
                    in_wsp = false;
                    out.push(b);
                }
            }
            out
        })
        .collect();
    if body.is_empty() {
        lines.clear();
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut canon = Vec::new();
    for l in lines {
        canon.extend_from_slice(&l);
        canon.extend_from_slice(b"\r\n");
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &canon);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The values of tag `name` in every DKIM-Signature field, whitespace removed.
pub fn tag_values(message: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let unfolded = text.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .filter_map(|l| {
            l.split(';').map(|t| t.trim()).find_map(|t| {
                t.strip_prefix(&format!("{name}="))
                    .map(|v| v.replace([' ', '\t'], ""))
            })
        })
        .collect()
}

/// A verifier whose resolver points at 127.0.0.1 (nothing listens there), so a record
/// missing from the cache fails fast instead of reaching for the network.
fn loopback_authenticator() -> MessageAuthenticator {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let config =
        ResolverConfig::from_name_servers(vec![NameServerConfig::tcp([127, 0, 0, 1].into())]);
    let mut opts = ResolverOpts::default();
    opts.timeout = std::time::Duration::from_secs(1);
    opts.attempts = 1;
    MessageAuthenticator::new(config, opts).unwrap()
}
