//! What the running relay's DNS watch last saw for each selector in use (DESIGN §6: after
//! activation DNS is still watched). The watch (`rotation::dns_watch`) writes it; /metrics,
//! /readyz and delivery read it. It lives here, below all of them, so that none of them
//! has to import another to share it.

use super::{Algorithm, DnsCheck, DnsOutcome, SlotState};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// What DNS serves for one selector, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Exactly our key: signatures verify.
    Ours,
    /// No DKIM record at the name: signatures fail.
    Missing,
    /// A record with another key, a revoked one, or several: signatures fail.
    Other,
    /// The lookup itself failed: DNS said nothing either way.
    Unknown,
}

impl Served {
    pub fn of(outcome: DnsOutcome) -> Served {
        match outcome {
            DnsOutcome::Match => Served::Ours,
            DnsOutcome::Missing => Served::Missing,
            DnsOutcome::Mismatch => Served::Other,
            DnsOutcome::Error => Served::Unknown,
        }
    }

    /// A word for log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Ours => "this key",
            Served::Missing => "no record",
            Served::Other => "another key",
            Served::Unknown => "lookup failed",
        }
    }
}

/// The watch's last results for one selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorSeen {
    pub domain: String,
    pub selector: String,
    pub algorithm: Algorithm,
    /// Active or retiring when it was looked up.
    pub role: SlotState,
    /// The last lookup, whatever it found.
    pub last: DnsCheck,
    /// The last lookup that got an answer (not a failure). Readiness and deferral read
    /// this one, so a resolver timeout is not taken for a deleted record.
    pub answer: Option<DnsCheck>,
}

impl SelectorSeen {
    /// The last answer, when it says receivers cannot verify this selector's signatures.
    pub fn unserved(&self) -> Option<&DnsCheck> {
        self.answer
            .as_ref()
            .filter(|check| check.outcome != DnsOutcome::Match)
    }

    /// "the active rsa key s1 of example.com".
    pub fn describe(&self) -> String {
        format!(
            "the {} {} key {} of {}",
            self.role, self.algorithm, self.selector, self.domain
        )
    }
}

/// Every selector the watch looked at in its last pass, by (domain, selector).
#[derive(Debug, Default)]
pub struct DnsSeen {
    selectors: RwLock<Arc<BTreeMap<(String, String), SelectorSeen>>>,
    /// `rotation.on_dns_mismatch = "defer"` as of the last pass (the config is live).
    defer: AtomicBool,
}

impl DnsSeen {
    /// Replaces everything with one pass's results: selectors no longer active or
    /// retiring drop out.
    pub fn replace(&self, seen: Vec<SelectorSeen>, defer: bool) {
        let map = seen
            .into_iter()
            .map(|s| ((s.domain.clone(), s.selector.clone()), s))
            .collect();
        *self.selectors.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        self.defer.store(defer, Ordering::Relaxed);
    }

    /// The last pass's results, in (domain, selector) order.
    pub fn all(&self) -> Vec<SelectorSeen> {
        self.map().values().cloned().collect()
    }

    pub fn get(&self, domain: &str, selector: &str) -> Option<SelectorSeen> {
        self.map()
            .get(&(domain.to_string(), selector.to_string()))
            .cloned()
    }

    fn map(&self) -> Arc<BTreeMap<(String, String), SelectorSeen>> {
        // A poisoned lock only means a writer panicked while swapping an Arc.
        self.selectors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The one place that decides whether a domain's mail is held for DNS: the reason,
    /// when `on_dns_mismatch = "defer"` and the last answer for one of the selectors it
    /// would be signed with says DNS does not serve that key. A selector the watch has
    /// not looked at yet (just activated, which needed DNS to serve it) does not hold.
    pub fn hold<'a>(
        &self,
        domain: &str,
        selectors: impl IntoIterator<Item = &'a str>,
    ) -> Option<String> {
        if !self.defer.load(Ordering::Relaxed) {
            return None;
        }
        let map = self.map();
        let problems: Vec<String> = selectors
            .into_iter()
            .filter_map(|selector| map.get(&(domain.to_string(), selector.to_string())))
            .filter_map(|seen| {
                seen.unserved()
                    .map(|check| format!("{} ({})", seen.describe(), check.detail))
            })
            .collect();
        (!problems.is_empty()).then(|| {
            format!(
                "DNS does not serve {}; mail waits until it does (rotation.on_dns_mismatch = \"defer\")",
                problems.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(selector: &str, outcome: DnsOutcome, answer: Option<DnsOutcome>) -> SelectorSeen {
        let check = |outcome| DnsCheck {
            at: 100,
            outcome,
            detail: format!("{outcome:?}"),
        };
        SelectorSeen {
            domain: "example.com".into(),
            selector: selector.into(),
            algorithm: Algorithm::Rsa,
            role: SlotState::Active,
            last: check(outcome),
            answer: answer.map(check),
        }
    }

    #[test]
    fn only_defer_mode_and_an_answer_that_is_not_our_key_hold_mail() {
        let board = DnsSeen::default();
        let missing = seen("s1", DnsOutcome::Missing, Some(DnsOutcome::Missing));
        board.replace(vec![missing.clone()], false);
        assert_eq!(board.hold("example.com", ["s1"]), None, "alert mode");
        board.replace(vec![missing], true);
        let why = board.hold("example.com", ["s1", "e1"]).unwrap();
        assert!(
            why.contains("the active rsa key s1 of example.com"),
            "{why}"
        );
        assert_eq!(board.hold("example.org", ["s1"]), None);
        assert_eq!(board.hold("example.com", ["s2"]), None, "not signing");
        // A failed lookup after a good answer is no evidence the record went away.
        board.replace(
            vec![seen("s1", DnsOutcome::Error, Some(DnsOutcome::Match))],
            true,
        );
        assert_eq!(board.hold("example.com", ["s1"]), None);
        board.replace(vec![seen("s1", DnsOutcome::Error, None)], true);
        assert_eq!(board.hold("example.com", ["s1"]), None);
    }
}
