//! The keys the relay may sign with right now, loaded from the key store.

use super::file_key::FileKey;
use crate::config::{Config, SigningMode};
use crate::keys::{Algorithm, KeyStore, SlotState, Token};
use mail_auth::common::crypto::{Algorithm as DkimAlgorithm, CryptoError, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One private key to sign with: loaded from a PEM file (file_key.rs), or a reference to a key
/// in a PKCS#11 token (which signs there). It deliberately has no derived `Debug`: the
/// manual one shows only the selector and algorithm.
#[derive(Clone)]
pub struct LoadedKey {
    pub selector: String,
    pub algorithm: Algorithm,
    key: SharedKey,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedKey({} {})", self.selector, self.algorithm)
    }
}

impl LoadedKey {
    /// Loads a PKCS#8 (or PKCS#1 for RSA) PEM key.
    pub fn from_pem(selector: &str, algorithm: Algorithm, pem: &str) -> Result<Self, String> {
        Ok(LoadedKey {
            selector: selector.to_string(),
            algorithm,
            key: SharedKey::Memory(Arc::new(FileKey::from_pem(selector, algorithm, pem)?)),
        })
    }

    /// A key that stays in a PKCS#11 token, found there by its CKA_ID.
    pub fn in_token(selector: &str, algorithm: Algorithm, token: Arc<Token>, id: Vec<u8>) -> Self {
        LoadedKey {
            selector: selector.to_string(),
            algorithm,
            key: SharedKey::Token(Arc::new(TokenKey {
                token,
                id,
                algorithm,
            })),
        }
    }

    /// Signs `data` as DKIM does for this algorithm: RSASSA-PKCS1-v1_5 over SHA-256 of
    /// the data, or Ed25519 over the SHA-256 digest (RFC 8463 §3). Exposed so test
    /// vectors can check the primitive byte for byte.
    pub fn sign_raw(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        self.key.sign(data).map_err(|e| e.to_string())
    }

    pub(crate) fn signing_key(&self) -> SharedKey {
        self.key.clone()
    }
}

/// mail-auth's signer takes its key by value; this lets many signers share one key.
#[derive(Clone)]
pub(crate) enum SharedKey {
    Memory(Arc<FileKey>),
    Token(Arc<TokenKey>),
}

/// A key in a token: C_Sign there does what file_key.rs does for a file key.
pub(crate) struct TokenKey {
    token: Arc<Token>,
    id: Vec<u8>,
    algorithm: Algorithm,
}

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        // What mail-auth hands a signer is the canonicalised header data (a few hundred
        // bytes); the signer hashes it (RSA), or it is hashed first (Ed25519, RFC 8463).
        let mut data = Vec::new();
        input.write(&mut data);
        let signed = match self {
            SharedKey::Memory(key) => key.sign(&data),
            SharedKey::Token(key) => key
                .token
                .sign(&key.id, key.algorithm, &data)
                .map_err(|e| e.to_string()),
        };
        signed.map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e)))
    }

    fn algorithm(&self) -> DkimAlgorithm {
        let algorithm = match self {
            SharedKey::Memory(key) => key.algorithm(),
            SharedKey::Token(key) => key.algorithm,
        };
        match algorithm {
            Algorithm::Rsa => DkimAlgorithm::RsaSha256,
            Algorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
        }
    }
}

/// The keys to sign one domain's mail with: RSA first, then Ed25519 if configured.
#[derive(Debug)]
pub struct DomainKeys {
    pub domain: String,
    pub keys: Vec<LoadedKey>,
}

/// What the key ring knows about a From domain.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// Not configured and not in the key store: the relay does not sign for it.
    Unknown,
    /// Configured, but no key can be used now (missing, unreadable, none active).
    Unusable(String),
    Ready(Arc<DomainKeys>),
}

#[derive(Debug, Default)]
pub struct KeyRing {
    domains: HashMap<String, Result<Arc<DomainKeys>, String>>,
    /// Configured domains whose keys also sign their subdomains (`subdomains = true`).
    parents: HashSet<String>,
}

impl KeyRing {
    /// Loads every domain of the config and the key store. A domain whose keys cannot be
    /// used is recorded with the reason, so its mail is deferred, not lost or unsigned.
    pub fn load(store: &KeyStore, config: &Config) -> KeyRing {
        let mut names: Vec<String> = config.domains.iter().map(|d| d.name.clone()).collect();
        match store.domains() {
            Ok(found) => names.extend(found),
            Err(e) => tracing::error!(error = %e, "cannot list the key store"),
        }
        names.sort();
        names.dedup();
        let domains = names
            .into_iter()
            .map(|name| {
                let keys = load_domain(store, config, &name);
                (name, keys)
            })
            .collect();
        let parents = config
            .domains
            .iter()
            .filter(|d| d.subdomains)
            .map(|d| d.name.clone())
            .collect();
        KeyRing { domains, parents }
    }

    /// The keys that sign mail from `domain` (lower case), and so its `d=`: the domain's
    /// own, or else those of the closest domain above it in the ring when that one signs
    /// for its subdomains. The one answer to "who signs this From", read at DATA (to
    /// refuse what cannot be signed) and at each attempt (to sign).
    pub fn lookup(&self, domain: &str) -> KeyLookup {
        let mut name = domain;
        let found = loop {
            if let Some(keys) = self.domains.get(name) {
                if name == domain || self.parents.contains(name) {
                    break Some(keys);
                }
                break None; // the closest configured domain does not sign for subdomains
            }
            match name.split_once('.') {
                // A parent of one label is a TLD: never a signing domain here.
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => break None,
            }
        };
        match found {
            None => KeyLookup::Unknown,
            Some(Err(reason)) => KeyLookup::Unusable(reason.clone()),
            Some(Ok(keys)) => KeyLookup::Ready(keys.clone()),
        }
    }

    /// (domain, Ok(selectors) or Err(reason)) for the start-up log.
    pub fn summary(&self) -> Vec<(String, Result<Vec<String>, String>)> {
        let mut out: Vec<_> = self
            .domains
            .iter()
            .map(|(d, k)| {
                let k = match k {
                    Ok(keys) => Ok(keys
                        .keys
                        .iter()
                        .map(|k| format!("{} ({})", k.selector, k.algorithm))
                        .collect()),
                    Err(e) => Err(e.clone()),
                };
                (d.clone(), k)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn load_domain(store: &KeyStore, config: &Config, domain: &str) -> Result<Arc<DomainKeys>, String> {
    let state = store
        .load(domain)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("no keys in the key store (run: dkim-relay keys generate --domain {domain})")
        })?;
    let want_ed25519 = config.domain(domain).map(|d| d.ed25519);
    let mut keys = Vec::new();
    let signing = match config.rotation.signing {
        SigningMode::Active => state.active(),
        // Every key whose record is published: if one is withdrawn while mail is in
        // flight, the other signature still verifies.
        SigningMode::AllPublished => state.published(),
    };
    if !signing.iter().any(|s| s.algorithm == Algorithm::Rsa) {
        let waiting = state
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Pending | SlotState::Published));
        return Err(if waiting {
            "no active key yet: waiting for DNS to serve the new key (or `dkim-relay keys activate --force`)".into()
        } else {
            "no active RSA key".into()
        });
    }
    for slot in signing {
        if slot.algorithm == Algorithm::Ed25519 && want_ed25519 == Some(false) {
            continue;
        }
        if let Some((token, id)) = store.token_key(domain, slot).map_err(|e| e.to_string())? {
            keys.push(LoadedKey::in_token(
                &slot.selector,
                slot.algorithm,
                token,
                id,
            ));
            continue;
        }
        let pem = store
            .read_private_pem(domain, slot)
            .map_err(|e| e.to_string())?;
        keys.push(LoadedKey::from_pem(&slot.selector, slot.algorithm, &pem)?);
    }
    // RSA is never optional: Gmail and Outlook do not verify Ed25519 (DESIGN §5).
    if !keys.iter().any(|k| k.algorithm == Algorithm::Rsa) {
        return Err("no active RSA key".into());
    }
    if want_ed25519 == Some(true) && !keys.iter().any(|k| k.algorithm == Algorithm::Ed25519) {
        tracing::warn!(
            domain,
            "ed25519 is configured but no Ed25519 key is active; signing with RSA only"
        );
    }
    Ok(Arc::new(DomainKeys {
        domain: domain.to_string(),
        keys,
    }))
}

/// The key ring currently in force, swapped whole when keys change. A delivery attempt
/// takes one `Arc` and keeps using it, so a message in flight keeps its signer.
#[derive(Debug, Default)]
pub struct SharedKeyRing(std::sync::RwLock<Arc<KeyRing>>);

impl SharedKeyRing {
    pub fn new(ring: KeyRing) -> Self {
        SharedKeyRing(std::sync::RwLock::new(Arc::new(ring)))
    }

    pub fn current(&self) -> Arc<KeyRing> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is
        // still a whole KeyRing.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, ring: KeyRing) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }
}
