//! `dkim-relay doctor`: checks what DNS publishes for each signing domain (SPF, the DKIM
//! records of the key store's selectors, DMARC) and says in plain words what is wrong and
//! what to publish.
//!
//! The checks ([`spf`], [`dkim`], [`dmarc`]) are pure functions of the TXT records fetched;
//! [`run`] is the one place that does the lookups, all at once and each bounded by
//! [`LOOKUP_TIMEOUT`], through the same resolver as `keys check`.

pub mod dkim;
pub mod dmarc;
pub mod report;
pub mod spf;

use crate::config::Config;
use crate::keys::{KeyStore, SlotState};
use crate::rotation::dns::{DnsChecker, LookupError};
pub use report::{Check, DomainReport, Finding, Report, Severity};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The longest one lookup may take before it is reported as failed.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(7);

/// What a TXT lookup returned: every record as its character-strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtLookup {
    Found(Vec<Vec<String>>),
    Missing,
    Failed(String),
}

/// Why doctor could not run at all (exit status 2: usage or config).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("\"{0}\" is not a domain name")]
    BadDomain(String),
    #[error("key store: {0}")]
    Store(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Resolver(String),
}

/// The domains to check: `only`, or every configured domain and every domain with keys.
pub fn domains(
    config: &Config,
    store: &KeyStore,
    only: Option<&str>,
) -> Result<Vec<String>, DoctorError> {
    if let Some(d) = only {
        let d = crate::domain::Domain::parse(d).map_err(|e| DoctorError::BadDomain(e.0))?;
        return Ok(vec![d.into_string()]);
    }
    let mut all: Vec<String> = config.domains.iter().map(|d| d.name.clone()).collect();
    all.extend(store.domains()?);
    all.sort();
    all.dedup();
    Ok(all)
}

/// The upstreams mail from `domain` may go to (its route's, else every upstream), each
/// once, with the provider behind it.
pub fn upstream_hosts(config: &Config, domain: &str) -> Vec<spf::Target> {
    let mut targets: Vec<spf::Target> = Vec::new();
    for upstream in config.upstreams_for_domain(domain) {
        if !targets.iter().any(|t| t.host == upstream.host) {
            targets.push(spf::Target::of(&upstream));
        }
    }
    targets
}

/// A naive organisational domain (the last two labels) for a subdomain, where receivers
/// look for DMARC when the subdomain has none. Wrong under suffixes like co.uk, where it
/// only costs one extra lookup.
fn parent_of(domain: &str) -> Option<String> {
    let labels: Vec<&str> = domain.split('.').collect();
    (labels.len() > 2).then(|| labels[labels.len() - 2..].join("."))
}

/// Everything to look up for one domain.
struct Plan {
    domain: String,
    upstreams: Vec<spf::Target>,
    slots: Vec<dkim::KeySlot>,
    slot_errors: Vec<Finding>,
    parent: Option<String>,
    signing_since: Option<u64>,
    /// The relay signs this domain's subdomains with its keys (`subdomains = true`).
    signs_subdomains: bool,
}

fn plan(config: &Config, store: &KeyStore, domain: &str, now: u64) -> Result<Plan, DoctorError> {
    let mut slots = Vec::new();
    let mut slot_errors = Vec::new();
    let mut signing_since = None;
    match store.load(domain)? {
        None => slot_errors.push(Finding::new(
            Check::Dkim,
            Severity::Error,
            format!("the key store has no keys for {domain}, so its mail cannot be signed; run: dkim-relay keys generate --domain {domain}"),
        )),
        Some(state) => {
            signing_since = state.slots.iter().filter_map(|s| s.active_since).min();
            let stuck_after = config.rotation.stuck_after.0.as_secs();
            if let Some(message) = crate::rotation::waiting::stuck_message(&state, now, stuck_after) {
                slot_errors.push(Finding::new(Check::Dkim, Severity::Error, message));
            }
            for slot in &state.slots {
                let record = match slot.state {
                    SlotState::Retired => None,
                    _ => match store.record(domain, slot) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            slot_errors.push(
                                Finding::new(Check::Dkim, Severity::Error, format!("cannot read the key: {e}"))
                                    .about(&slot.selector),
                            );
                            continue;
                        }
                    },
                };
                slots.push(dkim::KeySlot {
                    domain: domain.to_string(),
                    selector: slot.selector.clone(),
                    algorithm: slot.algorithm,
                    state: slot.state,
                    record,
                });
            }
        }
    }
    Ok(Plan {
        domain: domain.to_string(),
        upstreams: upstream_hosts(config, domain),
        slots,
        slot_errors,
        parent: parent_of(domain),
        signing_since,
        signs_subdomains: config.domain(domain).is_some_and(|d| d.subdomains),
    })
}

impl Plan {
    fn names(&self) -> Vec<String> {
        let mut names = vec![self.domain.clone(), format!("_dmarc.{}", self.domain)];
        names.extend(self.parent.iter().map(|p| format!("_dmarc.{p}")));
        names.extend(self.slots.iter().map(|s| s.name()));
        names
    }

    fn report(
        &self,
        found: &HashMap<String, TxtLookup>,
        now: u64,
        evidence: &[crate::dmarc::summary::DomainSummary],
    ) -> DomainReport {
        let failed = TxtLookup::Failed("not looked up".into());
        let get = |name: &str| found.get(name).unwrap_or(&failed);
        let mut findings = spf::check(&self.domain, get(&self.domain), &self.upstreams);
        findings.extend(self.slot_errors.iter().cloned());
        for slot in &self.slots {
            findings.push(dkim::check(slot, get(&slot.name())));
        }
        let parent_name = self.parent.as_ref().map(|p| format!("_dmarc.{p}"));
        let ctx = dmarc::Context {
            domain: &self.domain,
            parent: self.parent.as_deref().zip(parent_name.as_deref().map(get)),
            signing_since: self.signing_since,
            signs_subdomains: self.signs_subdomains,
            now,
            evidence: Some(dmarc::Evidence {
                summary: evidence.iter().find(|s| s.domain == self.domain),
            }),
        };
        findings.extend(dmarc::check(get(&format!("_dmarc.{}", self.domain)), &ctx));
        DomainReport {
            domain: self.domain.clone(),
            findings,
        }
    }
}

/// Looks up every name at once, each bounded by [`LOOKUP_TIMEOUT`].
async fn lookup_all(checker: Arc<DnsChecker>, names: Vec<String>) -> HashMap<String, TxtLookup> {
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let checker = checker.clone();
        tasks.spawn(async move {
            let result =
                match tokio::time::timeout(LOOKUP_TIMEOUT, checker.txt_records(&name)).await {
                    Err(_) => {
                        TxtLookup::Failed(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs()))
                    }
                    Ok(Err(LookupError::Missing)) => TxtLookup::Missing,
                    Ok(Err(LookupError::Failed(e))) => TxtLookup::Failed(e),
                    Ok(Ok(records)) => TxtLookup::Found(records),
                };
            (name, result)
        });
    }
    let mut found = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, result)) = done {
            found.insert(name, result);
        }
    }
    found
}

/// Checks `only` (or every domain) and returns what was found.
pub async fn run(config: &Config, only: Option<&str>, now: u64) -> Result<Report, DoctorError> {
    let store = KeyStore::for_config(&config.keys);
    let plans = domains(config, &store, only)?
        .iter()
        .map(|d| plan(config, &store, d, now))
        .collect::<Result<Vec<_>, _>>()?;
    let checker =
        Arc::new(DnsChecker::new(config.rotation.resolver).map_err(DoctorError::Resolver)?);
    let mut names: Vec<String> = plans.iter().flat_map(Plan::names).collect();
    names.sort();
    names.dedup();
    let found = lookup_all(checker, names).await;
    // The stored DMARC reports of the last EVIDENCE_DAYS, for the advice on the policy.
    let (stored, _unreadable) = crate::dmarc::Store::of(config).load_all();
    let ours = crate::dmarc::summary::Ours::of(config, &store);
    let since = now.saturating_sub(dmarc::EVIDENCE_DAYS * 86_400);
    let evidence = crate::dmarc::summary::summarise(&stored, since, None, &ours, &HashMap::new());
    let mut report = Report::default();
    for p in &plans {
        report.push(p.report(&found, now, &evidence));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_narrows_the_upstreams_of_its_domains() {
        let config = Config::from_toml(
            r#"
[[upstreams]]
name = "ses"
host = "email-smtp.eu-west-1.amazonaws.com"
[[upstreams]]
name = "sg"
host = "smtp.sendgrid.net"
[[routes]]
from_domains = ["news.example.net"]
upstreams = ["sg"]
"#,
        )
        .unwrap();
        let hosts: Vec<String> = upstream_hosts(&config, "news.example.net")
            .into_iter()
            .map(|t| t.host)
            .collect();
        assert_eq!(hosts, ["smtp.sendgrid.net"]);
        assert_eq!(upstream_hosts(&config, "example.net").len(), 2);
    }

    #[test]
    fn only_subdomains_have_a_parent() {
        assert_eq!(
            parent_of("mail.example.net").as_deref(),
            Some("example.net")
        );
        assert_eq!(parent_of("example.net"), None);
    }
}
