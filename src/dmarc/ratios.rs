//! What `/metrics` exports from the stored reports: per domain, the share of messages that
//! passed, for each of this relay's selectors (the signatures with it that passed) and for
//! the domain as a whole (`selector="all"`: DMARC pass). The period is the latest
//! [`PERIOD_DAYS`] the domain's stored reports cover, not the wall clock, so a relay whose
//! report mailbox stops being imported keeps the last rates (and the report end time
//! tells how old they are) instead of dropping to nothing.
//!
//! The running relay computes this at scrape time and keeps it until the store folder's
//! modification time changes (a `dmarc import` that adds a report renames a file into it),
//! so a scrape reads no report file unless one was added.

use super::summary::{summarise, Ours};
use super::Store;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

pub const PERIOD_DAYS: u64 = 14;

/// One gauge value.
#[derive(Debug, Clone, PartialEq)]
pub struct PassRatio {
    pub domain: String,
    /// One of this relay's selectors, "other" (every other selector together), or "all".
    pub selector: String,
    pub ratio: f64,
    /// The end of the newest report counted, Unix seconds.
    pub report_end: u64,
}

/// The ratios for the domains this relay signs for (`domains`), from `store`.
pub fn compute(store: &Store, ours: &Ours, domains: &[String]) -> Vec<PassRatio> {
    let (reports, _) = store.load_all();
    let mut out = Vec::new();
    for domain in domains {
        let Some(newest) = reports
            .iter()
            .filter(|s| &s.report.policy.domain == domain)
            .map(|s| s.report.end)
            .max()
        else {
            continue;
        };
        let since = newest.saturating_sub(PERIOD_DAYS * 86_400);
        let summaries = summarise(&reports, since, Some(domain), ours, &HashMap::new());
        let Some(s) = summaries.first() else { continue };
        if s.counts.messages == 0 {
            continue;
        }
        let mut other = (0u64, 0u64);
        let mut by_selector: Vec<PassRatio> = Vec::new();
        for sel in s.selectors.iter().filter(|x| &x.domain == domain) {
            if sel.ours.is_some() {
                by_selector.push(PassRatio {
                    domain: domain.clone(),
                    selector: sel.selector.clone(),
                    ratio: sel.passed as f64 / sel.messages.max(1) as f64,
                    report_end: newest,
                });
            } else {
                other.0 += sel.passed;
                other.1 += sel.messages;
            }
        }
        if other.1 > 0 {
            by_selector.push(PassRatio {
                domain: domain.clone(),
                selector: "other".into(),
                ratio: other.0 as f64 / other.1 as f64,
                report_end: newest,
            });
        }
        out.push(PassRatio {
            domain: domain.clone(),
            selector: "all".into(),
            ratio: s.counts.ratio(s.counts.dmarc_pass),
            report_end: newest,
        });
        out.extend(by_selector);
    }
    out
}

/// [`compute`], kept until the store folder changes.
pub fn cached(store: &Store, ours: impl FnOnce() -> Ours, domains: &[String]) -> Vec<PassRatio> {
    type Cache = Option<(Option<SystemTime>, Vec<String>, Vec<PassRatio>)>;
    static CACHE: Mutex<Cache> = Mutex::new(None);
    let changed = store.changed_at();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, for_domains, ratios)) = cache.as_ref() {
        if *at == changed && changed.is_some() && for_domains == domains {
            return ratios.clone();
        }
    }
    let ratios = compute(store, &ours(), domains);
    *cache = Some((changed, domains.to_vec(), ratios.clone()));
    ratios
}
