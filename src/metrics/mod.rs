//! Metrics and health over a small HTTP listener (off unless `[metrics] listen` is set):
//! `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz`
//! (spool writable, keys loaded, an active key per configured domain, DNS serving the keys
//! in use as the DNS watch last saw, upstream reached).
//!
//! Counters live in one process-wide registry, like Prometheus client libraries do. Labels
//! are bounded: reply codes, configured domains and selectors; never ids or addresses.

mod histogram;
mod http;
mod render;

pub use histogram::Histogram;
pub use http::{serve, HttpContext, MAX_CONNECTIONS};
pub use render::{readiness, render};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

type SignatureCounts = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>;

#[derive(Default)]
pub struct Registry {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    /// Refusals by (reply code, enhanced status).
    refusals: Mutex<BTreeMap<(u16, &'static str), u64>>,
    /// Signatures by domain, then selector, then algorithm: nested so that counting one
    /// looks the names up borrowed and allocates only the first time a pair is seen (a
    /// (String, String) key would take two allocations per signed message).
    signatures: Mutex<SignatureCounts>,
    /// Publish hook runs that failed (non-zero exit, timeout, or exit 0 while DNS kept
    /// serving another key), by domain.
    hook_failures: Mutex<BTreeMap<String, u64>>,
    /// Unix time of the last delivery the upstream (or outbox) took, and of the last deferral.
    pub last_delivered: AtomicU64,
    pub last_deferred: AtomicU64,
    /// Unix time of the first deferral since the last delivery; 0 while deliveries go
    /// through. /readyz reads it.
    pub deferring_since: AtomicU64,
    /// Time to compute a message's DKIM signatures (all algorithms together).
    pub signing: Histogram,
    /// Time from taking an upstream connection to the end of its transaction for a message.
    pub upstream: Histogram,
    /// Time from the end of DATA to the 250 (policy checks and the durable spool write).
    pub accept: Histogram,
}

pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    pub fn refusal(&self, code: u16, status: &'static str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((code, status))
            .or_default() += 1;
    }

    pub fn signature(&self, domain: &str, selector: &str, algorithm: &'static str) {
        let mut counts = self.signatures.lock().unwrap_or_else(|e| e.into_inner());
        if !counts.contains_key(domain) {
            counts.insert(domain.to_string(), BTreeMap::new());
        }
        let Some(selectors) = counts.get_mut(domain) else {
            return;
        };
        if !selectors.contains_key(selector) {
            selectors.insert(selector.to_string(), BTreeMap::new());
        }
        let Some(algorithms) = selectors.get_mut(selector) else {
            return;
        };
        *algorithms.entry(algorithm).or_default() += 1;
    }

    pub fn publish_hook_failure(&self, domain: &str) {
        *self
            .hook_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(domain.to_string())
            .or_default() += 1;
    }

    fn hook_failures(&self) -> Vec<(String, u64)> {
        self.hook_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn refusals(&self) -> Vec<((u16, &'static str), u64)> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn signatures(&self) -> Vec<((String, String, &'static str), u64)> {
        self.signatures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(domain, selectors)| {
                selectors.iter().flat_map(move |(selector, algorithms)| {
                    algorithms
                        .iter()
                        .map(move |(a, n)| ((domain.clone(), selector.clone(), *a), *n))
                })
            })
            .collect()
    }
}
