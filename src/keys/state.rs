//! The per-domain state file: which selector holds which key, and where it stands.

use super::Algorithm;
use serde::{Deserialize, Serialize};

/// Where one selector slot stands in its life (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Key generated; its record is waiting to be published.
    Pending,
    /// DNS serves the record; the key may become active.
    Published,
    /// Signing uses this key.
    Active,
    /// Replaced by a newer key; kept published for mail in flight.
    Retiring,
    /// No longer used; its record may be revoked.
    Retired,
}

impl SlotState {
    /// The state as a word, as in the state file and `keys status` (never a Debug form).
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Pending => "pending",
            SlotState::Published => "published",
            SlotState::Active => "active",
            SlotState::Retiring => "retiring",
            SlotState::Retired => "retired",
        }
    }
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub selector: String,
    pub algorithm: Algorithm,
    /// PEM file name inside the domain folder (file backend).
    pub key_file: String,
    /// With `backend = "pkcs11"`: the CKA_ID (hex) of the key pair in the token. An
    /// object id, never key material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    pub state: SlotState,
    /// Unix seconds.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_until: Option<u64>,
    /// When the publish hook last succeeded for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_published: Option<u64>,
    /// The last DNS lookup of this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dns_check: Option<DnsCheck>,
    /// When the revoke hook succeeded after retirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_revoked: Option<u64>,
    /// The last run of the hook for this key, success or not: kept so `keys status` can
    /// say why a rotation waits, and so reruns back off. Holds no record value or secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hook: Option<HookRun>,
}

impl Slot {
    /// A key just made or imported into `selector`: nothing published, checked or hooked
    /// yet; active from `now` when it starts active (a first key, an emergency).
    pub fn new(
        selector: &str,
        algorithm: Algorithm,
        key_file: String,
        token_id: Option<String>,
        state: SlotState,
        now: u64,
    ) -> Slot {
        Slot {
            selector: selector.to_string(),
            algorithm,
            key_file,
            token_id,
            state,
            created: now,
            published: None,
            active_since: (state == SlotState::Active).then_some(now),
            retiring_until: None,
            hook_published: None,
            last_dns_check: None,
            hook_revoked: None,
            last_hook: None,
        }
    }
}

/// One run of the publish hook (publish or revoke) for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    /// Unix seconds when it finished.
    pub at: u64,
    /// Exited 0 within the timeout.
    pub ok: bool,
    /// "exit 0", "exit 1: <first stderr line>", "timed out after 60s", "cannot run: …".
    pub result: String,
    /// Publish runs for this key so far (reruns back off by it).
    pub runs: u32,
}

/// What a DNS lookup of a selector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsOutcome {
    /// The record holds exactly this key.
    Match,
    /// A record exists but holds another key (or is revoked).
    Mismatch,
    /// No record.
    Missing,
    /// The lookup itself failed (timeout, SERVFAIL).
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCheck {
    /// Unix seconds.
    pub at: u64,
    pub outcome: DnsOutcome,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub domain: String,
    pub slots: Vec<Slot>,
}

impl DomainState {
    pub fn new(domain: &str) -> Self {
        DomainState {
            domain: domain.to_string(),
            slots: Vec::new(),
        }
    }

    /// The keys to sign with now: the active slot of each algorithm, RSA first.
    pub fn active(&self) -> Vec<&Slot> {
        let mut active: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Active)
            .collect();
        active.sort_by_key(|s| s.algorithm);
        active
    }

    /// Keys whose record is (still) published: active, published and retiring, RSA first.
    pub fn published(&self) -> Vec<&Slot> {
        let mut keys: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SlotState::Active | SlotState::Published | SlotState::Retiring
                )
            })
            .collect();
        keys.sort_by_key(|s| (s.algorithm, s.state != SlotState::Active));
        keys
    }

    pub fn slot(&self, selector: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.selector == selector)
    }

    pub fn has_active(&self, algorithm: Algorithm) -> bool {
        self.slots
            .iter()
            .any(|s| s.algorithm == algorithm && s.state == SlotState::Active)
    }
}
