//! Reading and writing the key store on disk.

use super::{
    generate, id_from_hex, id_hex, public_key_of, Algorithm, DnsRecord, DomainState, KeyMaterial,
    Slot, SlotState, Token, TokenError,
};
use crate::config::{is_dns_name, KeysConfig};
use crate::fsutil::{ensure_dir, write_atomic};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

const STATE_FILE: &str = "state.json";

/// Errors name the file and the problem; they never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: readable by group or others (mode {mode:03o}); private keys must be 0600 (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Token(#[from] TokenError),
}

/// A slot's key in a token: the token and the key's CKA_ID.
pub type TokenKeyRef = (Arc<Token>, Vec<u8>);

/// A key just made for a selector: the public key to publish and, in a token, its CKA_ID
/// for the slot.
pub struct NewKey {
    pub public_key: Vec<u8>,
    pub token_id: Option<String>,
}

impl NewKey {
    /// Notes where the key is on the slot that `apply` made for it.
    pub fn place(&self, state: &mut DomainState, selector: &str) {
        if let Some(slot) = state.slots.iter_mut().find(|s| s.selector == selector) {
            slot.token_id = self.token_id.clone();
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    /// With `backend = "pkcs11"`: where new keys are made and token keys are used.
    token: Option<Arc<Token>>,
}

impl KeyStore {
    /// A store whose keys are PEM files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyStore {
            dir: dir.into(),
            token: None,
        }
    }

    /// The store the `[keys]` section describes: state files in `dir`, private keys in
    /// files or in the configured token (opened at first use).
    pub fn for_config(keys: &KeysConfig) -> Self {
        KeyStore {
            dir: keys.dir.clone(),
            token: keys.pkcs11().map(|settings| Token::shared(&settings)),
        }
    }

    /// The token new keys go into, if the store uses one.
    pub fn token(&self) -> Option<&Arc<Token>> {
        self.token.as_ref()
    }

    /// The token and CKA_ID of a slot whose key is in a token.
    pub fn token_key(&self, domain: &str, slot: &Slot) -> Result<Option<TokenKeyRef>, KeyError> {
        let Some(hex) = &slot.token_id else {
            return Ok(None);
        };
        let id = id_from_hex(hex).ok_or_else(|| {
            KeyError::Refused(format!(
                "{domain}: selector {} has token_id \"{hex}\", which is not hex",
                slot.selector
            ))
        })?;
        let token = self.token.clone().ok_or_else(|| {
            KeyError::Refused(format!(
                "{domain}: the key of selector {} is in a PKCS#11 token, but [keys] backend is not \"pkcs11\"",
                slot.selector
            ))
        })?;
        Ok(Some((token, id)))
    }

    /// Makes a key for a selector: in the token, or as a PEM file (replacing a retired
    /// key's file of the same name). The caller records the slot (`apply`, then
    /// [`NewKey::place`]).
    pub fn new_key(
        &self,
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        rsa_bits: usize,
    ) -> Result<NewKey, KeyError> {
        self.domain_dir(domain)?;
        if let Some(token) = &self.token {
            let pair = token.generate(&token_label(domain, selector), algorithm, rsa_bits)?;
            tracing::info!(domain, selector, token = %token.label(), id = %id_hex(&pair.id), "key pair generated in the token");
            return Ok(NewKey {
                public_key: pair.public_key,
                token_id: Some(id_hex(&pair.id)),
            });
        }
        let material = generate(algorithm, rsa_bits).map_err(KeyError::Refused)?;
        self.write_key_file(domain, selector, &material)?;
        Ok(NewKey {
            public_key: material.public_key.clone(),
            token_id: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn domain_dir(&self, domain: &str) -> Result<PathBuf, KeyError> {
        // The domain becomes a path component: refuse anything that could leave the store.
        if !is_dns_name(domain) {
            return Err(KeyError::Refused(format!(
                "\"{domain}\" is not a domain name"
            )));
        }
        Ok(self.dir.join(domain))
    }

    /// Domains that have a state file, sorted.
    pub fn domains(&self) -> Result<Vec<String>, KeyError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut domains = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_dns_name(&name) && entry.path().join(STATE_FILE).is_file() {
                domains.push(name);
            }
        }
        domains.sort();
        Ok(domains)
    }

    /// The state of a domain, or `None` if the store has nothing for it.
    pub fn load(&self, domain: &str) -> Result<Option<DomainState>, KeyError> {
        let path = self.domain_dir(domain)?.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let state: DomainState = serde_json::from_str(&text).map_err(|e| KeyError::Invalid {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        if state.domain != domain {
            return Err(KeyError::Invalid {
                path,
                problem: format!("describes {} instead of {domain}", state.domain),
            });
        }
        Ok(Some(state))
    }

    /// Writes a domain's state atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self, state: &DomainState) -> Result<(), KeyError> {
        let dir = self.domain_dir(&state.domain)?;
        ensure_dir(&dir, 0o700).map_err(io_err(&dir))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| KeyError::Invalid {
            path: dir.join(STATE_FILE),
            problem: e.to_string(),
        })?;
        write_atomic(&dir, STATE_FILE, &[&json], 0o644, true).map_err(io_err(&dir))
    }

    /// Reads a slot's private key, refusing files that others can read.
    pub fn read_private_pem(
        &self,
        domain: &str,
        slot: &Slot,
    ) -> Result<Zeroizing<String>, KeyError> {
        let path = self.key_path(domain, slot)?;
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path, mode });
        }
        std::fs::read_to_string(&path)
            .map(Zeroizing::new)
            .map_err(io_err(&path))
    }

    fn key_path(&self, domain: &str, slot: &Slot) -> Result<PathBuf, KeyError> {
        let file = &slot.key_file;
        if file.contains('/') || file.starts_with('.') || file.is_empty() {
            return Err(KeyError::Refused(format!(
                "{domain}: key file name \"{file}\" must be a plain file name in the domain folder"
            )));
        }
        Ok(self.domain_dir(domain)?.join(file))
    }

    /// Writes a new private key (mode 0600, never overwriting) and records its slot.
    pub fn add_key(
        &self,
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        material: &KeyMaterial,
        state: SlotState,
        now: u64,
    ) -> Result<Slot, KeyError> {
        let mut domain_state = self.vacant(domain, selector)?;
        let (key_file, token_id) = match &self.token {
            Some(token) => {
                let pair = token.import(
                    &token_label(domain, selector),
                    algorithm,
                    &material.private_pem,
                )?;
                tracing::info!(domain, selector, token = %token.label(), id = %id_hex(&pair.id), "private key imported into the token");
                (format!("{selector}.pem"), Some(id_hex(&pair.id)))
            }
            None => (self.write_key_file(domain, selector, material)?, None),
        };
        let slot = Slot::new(selector, algorithm, key_file, token_id, state, now);
        domain_state.slots.retain(|s| s.selector != selector);
        domain_state.slots.push(slot.clone());
        self.save(&domain_state)?;
        Ok(slot)
    }

    /// The domain's state, when `selector` may take a new key (empty or retired); else
    /// the refusal that names what it holds.
    fn vacant(&self, domain: &str, selector: &str) -> Result<DomainState, KeyError> {
        let domain_state = self
            .load(domain)?
            .unwrap_or_else(|| DomainState::new(domain));
        if let Some(existing) = domain_state.slot(selector) {
            if existing.state != SlotState::Retired {
                return Err(KeyError::Refused(format!(
                    "{domain}: selector {selector} already holds a {} key in state {}",
                    existing.algorithm,
                    existing.state.as_str()
                )));
            }
        }
        Ok(domain_state)
    }

    /// Writes a slot's private key file (mode 0600, fsynced), replacing a retired key's
    /// file of the same name. The caller records the slot in the state.
    pub fn write_key_file(
        &self,
        domain: &str,
        selector: &str,
        material: &KeyMaterial,
    ) -> Result<String, KeyError> {
        let dir = self.domain_dir(domain)?;
        ensure_dir(&dir, 0o700).map_err(io_err(&dir))?;
        let key_file = format!("{selector}.pem");
        let path = dir.join(&key_file);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(material.private_pem.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io_err(&path))?;
        Ok(key_file)
    }

    /// Deletes a retired slot's private key: its file, or both halves in the token.
    pub fn remove_key_file(&self, domain: &str, slot: &Slot) -> Result<(), KeyError> {
        if let Some((token, id)) = self.token_key(domain, slot)? {
            let destroyed = token.destroy(&id)?;
            tracing::info!(domain, selector = %slot.selector, token = %token.label(), id = %id_hex(&id), objects = destroyed, "retired key destroyed in the token");
            return Ok(());
        }
        let path = self.key_path(domain, slot)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Generates and stores a key in a slot.
    pub fn generate_key(
        &self,
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        rsa_bits: usize,
        state: SlotState,
        now: u64,
    ) -> Result<(Slot, DnsRecord), KeyError> {
        if self.token.is_none() {
            let material = generate(algorithm, rsa_bits).map_err(KeyError::Refused)?;
            let slot = self.add_key(domain, selector, algorithm, &material, state, now)?;
            let record = DnsRecord::new(domain, selector, algorithm, &material.public_key);
            return Ok((slot, record));
        }
        let mut domain_state = self.vacant(domain, selector)?;
        let key = self.new_key(domain, selector, algorithm, rsa_bits)?;
        let slot = Slot::new(
            selector,
            algorithm,
            format!("{selector}.pem"),
            key.token_id.clone(),
            state,
            now,
        );
        domain_state.slots.retain(|s| s.selector != selector);
        domain_state.slots.push(slot.clone());
        self.save(&domain_state)?;
        let record = DnsRecord::new(domain, selector, algorithm, &key.public_key);
        Ok((slot, record))
    }

    /// The DNS record of a slot, computed from its private key file or read from the
    /// public key object in the token.
    pub fn record(&self, domain: &str, slot: &Slot) -> Result<DnsRecord, KeyError> {
        if let Some((token, id)) = self.token_key(domain, slot)? {
            let public = token.public_key(&id, slot.algorithm)?;
            return Ok(DnsRecord::new(
                domain,
                &slot.selector,
                slot.algorithm,
                &public,
            ));
        }
        let pem = self.read_private_pem(domain, slot)?;
        let public = public_key_of(slot.algorithm, &pem).map_err(|problem| KeyError::Invalid {
            path: self.key_path(domain, slot).unwrap_or_default(),
            problem,
        })?;
        Ok(DnsRecord::new(
            domain,
            &slot.selector,
            slot.algorithm,
            &public,
        ))
    }
}

/// CKA_LABEL of a key pair in the token: who it belongs to, for people listing objects.
fn token_label(domain: &str, selector: &str) -> String {
    format!("dkim-relay {domain} {selector}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_0600_and_state_records_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (slot, record) = store
            .generate_key(
                "example.org",
                "e1",
                Algorithm::Ed25519,
                0,
                SlotState::Active,
                1000,
            )
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("example.org/e1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.domains().unwrap(), vec!["example.org".to_string()]);
        let state = store.load("example.org").unwrap().unwrap();
        assert_eq!(state.active(), vec![&slot]);
        assert_eq!(store.record("example.org", &slot).unwrap(), record);
    }

    #[test]
    fn world_readable_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (slot, _) = store
            .generate_key(
                "example.org",
                "e1",
                Algorithm::Ed25519,
                0,
                SlotState::Active,
                1,
            )
            .unwrap();
        let path = dir.path().join("example.org/e1.pem");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.read_private_pem("example.org", &slot).err().unwrap();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("PRIVATE"));
    }

    #[test]
    fn an_occupied_slot_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store
            .generate_key(
                "example.org",
                "e1",
                Algorithm::Ed25519,
                0,
                SlotState::Active,
                1,
            )
            .unwrap();
        assert!(store
            .generate_key(
                "example.org",
                "e1",
                Algorithm::Ed25519,
                0,
                SlotState::Active,
                2
            )
            .is_err());
    }

    #[test]
    fn path_escapes_are_refused() {
        let store = KeyStore::new("/nonexistent");
        assert!(store.load("../etc").is_err());
    }
}
