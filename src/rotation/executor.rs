//! The thin layer that performs the planner's steps: writes key files, runs the hook,
//! looks records up in DNS, saves the state, under the key store lock. Used by the
//! scheduler inside `serve` and by `keys rotate`.

use super::dns::DnsChecker;
use super::hook::{run_hook, HookAction};
use super::{apply, plan, record_dns_check, Policy, Step, Transition};
use crate::config::{Config, DomainConfig};
use crate::keys::{generate, Algorithm, DnsRecord, DomainState, KeyStore, SlotState, StoreLock};

pub struct Rotator {
    store: KeyStore,
    config: Config,
    dns: Option<DnsChecker>,
}

/// What one run did to one domain.
#[derive(Debug, Default)]
pub struct DomainReport {
    pub transitions: Vec<Transition>,
    /// Records that must be published now (new pending keys).
    pub to_publish: Vec<DnsRecord>,
    /// Problems that made the rotation wait (hook failures, DNS mismatches).
    pub waiting: Vec<String>,
}

impl Rotator {
    pub fn new(config: &Config) -> Result<Rotator, String> {
        let dns = if config.rotation.dns_check {
            Some(DnsChecker::new(config.rotation.resolver)?)
        } else {
            None
        };
        Ok(Rotator {
            store: KeyStore::new(&config.keys.dir),
            config: config.clone(),
            dns,
        })
    }

    /// Settings for a domain: its config entry, or defaults for a domain that is only in
    /// the key store (RSA, plus Ed25519 if the store has an Ed25519 key).
    pub fn domain_settings(&self, name: &str, state: Option<&DomainState>) -> DomainConfig {
        self.config
            .domain(name)
            .cloned()
            .unwrap_or_else(|| DomainConfig {
                name: name.to_string(),
                ed25519: state.is_some_and(|s| {
                    s.slots
                        .iter()
                        .any(|slot| slot.algorithm == Algorithm::Ed25519)
                }),
                rsa_selectors: ["s1".into(), "s2".into()],
                ed25519_selectors: ["e1".into(), "e2".into()],
                // Only a configured domain signs for its subdomains.
                subdomains: false,
            })
    }

    pub fn policy(&self, domain: &DomainConfig) -> Policy {
        let r = &self.config.rotation;
        let mut algorithms = vec![Algorithm::Rsa];
        if domain.ed25519 {
            algorithms.push(Algorithm::Ed25519);
        }
        Policy {
            interval: r.interval.0.as_secs(),
            propagation_wait: r.propagation_wait.0.as_secs(),
            grace: r.grace.0.as_secs(),
            dns_check: r.dns_check,
            dns_recheck: r.dns_recheck.0.as_secs(),
            hook: r.publish_hook.is_some(),
            algorithms,
            rsa_selectors: domain.rsa_selectors.clone(),
            ed25519_selectors: domain.ed25519_selectors.clone(),
        }
    }

    /// Every domain of the config and the store.
    pub fn domains(&self) -> Vec<String> {
        let mut names: Vec<String> = self.config.domains.iter().map(|d| d.name.clone()).collect();
        names.extend(self.store.domains().unwrap_or_default());
        names.sort();
        names.dedup();
        names
    }

    /// Runs the planner for every domain and logs each transition. Returns whether any
    /// key changed state (the key ring must then be reloaded).
    pub async fn run_all(&self, now: u64, force: bool) -> bool {
        let mut changed = false;
        for domain in self.domains() {
            match self.run_domain(&domain, now, force).await {
                Ok(report) => changed |= !report.transitions.is_empty(),
                Err(e) => {
                    tracing::error!(domain = %domain, error = %e, "rotation failed; will retry")
                }
            }
        }
        changed
    }

    /// Plans and performs steps for one domain until nothing more can happen at `now`.
    pub async fn run_domain(
        &self,
        domain: &str,
        now: u64,
        force: bool,
    ) -> Result<DomainReport, String> {
        let dir = self.store.dir().to_path_buf();
        let _lock = tokio::task::spawn_blocking(move || StoreLock::acquire(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("key store lock: {e}"))?;
        let existing = self.store.load(domain).map_err(|e| e.to_string())?;
        if existing.is_none() && !(self.config.keys.generate_missing || force) {
            return Ok(DomainReport::default());
        }
        let settings = self.domain_settings(domain, existing.as_ref());
        let policy = self.policy(&settings);
        let mut state = existing.unwrap_or_else(|| DomainState::new(domain));
        let mut report = DomainReport::default();
        let mut force = force;
        for _ in 0..8 {
            let steps = plan(&state, now, &policy, force);
            force = false;
            if steps.is_empty() {
                break;
            }
            let before = state.clone();
            for step in &steps {
                self.perform(domain, &mut state, step, now, &policy, &mut report)
                    .await?;
            }
            if state == before {
                break;
            }
        }
        // One line per domain and run at info (a first start walks several states at
        // once); each step, and the full record, at debug.
        for t in &report.transitions {
            tracing::debug!(domain, selector = %t.selector, from = t.from.map_or("none", SlotState::as_str), to = %t.to, reason = %t.reason, "key transition");
        }
        if !report.transitions.is_empty() {
            tracing::info!(domain, changes = %transition_summary(&report.transitions), "keys changed");
        }
        for record in &report.to_publish {
            tracing::debug!(domain, record = %record.zone_line(), "record to publish");
            tracing::warn!(domain, name = %record.name, "publish the DNS record at this name; `dkim-relay keys dns` prints it");
        }
        for why in &report.waiting {
            tracing::info!(domain, reason = %why, "rotation waiting");
        }
        Ok(report)
    }

    async fn perform(
        &self,
        domain: &str,
        state: &mut DomainState,
        step: &Step,
        now: u64,
        policy: &Policy,
        report: &mut DomainReport,
    ) -> Result<(), String> {
        let save = |state: &DomainState| self.store.save(state).map_err(|e| e.to_string());
        match step {
            Step::Generate {
                algorithm,
                selector,
            } => {
                let alg = *algorithm;
                let material = tokio::task::spawn_blocking(move || generate(alg, 2048))
                    .await
                    .map_err(|e| e.to_string())??;
                self.store
                    .write_key_file(domain, selector, &material)
                    .map_err(|e| e.to_string())?;
                report
                    .to_publish
                    .push(DnsRecord::new(domain, selector, alg, &material.public_key));
            }
            Step::PublishHook { selector } | Step::RevokeHook { selector } => {
                let Some(hook) = &self.config.rotation.publish_hook else {
                    return Ok(());
                };
                let Some(slot) = state.slot(selector).cloned() else {
                    return Ok(());
                };
                let (action, record) = if matches!(step, Step::PublishHook { .. }) {
                    (
                        HookAction::Publish,
                        self.store
                            .record(domain, &slot)
                            .map_err(|e| e.to_string())?,
                    )
                } else {
                    (
                        HookAction::Revoke,
                        DnsRecord::revoked(domain, selector, slot.algorithm),
                    )
                };
                if let Err(e) =
                    run_hook(hook, action, domain, selector, slot.algorithm, &record).await
                {
                    report
                        .waiting
                        .push(format!("{action:?} hook for {selector} failed: {e}"));
                    return Ok(());
                }
            }
            Step::CheckDns { selector } => {
                let Some(dns) = &self.dns else {
                    return Ok(());
                };
                let Some(slot) = state.slot(selector).cloned() else {
                    return Ok(());
                };
                let record = self
                    .store
                    .record(domain, &slot)
                    .map_err(|e| e.to_string())?;
                let expected = crate::keys::public_key_bytes(&record).unwrap_or_default();
                let check = dns
                    .check(&record.name, slot.algorithm, &expected, now)
                    .await;
                if check.outcome != crate::keys::DnsOutcome::Match {
                    report.waiting.push(format!("{selector}: {}", check.detail));
                }
                record_dns_check(state, selector, check);
                save(state)?;
                return Ok(());
            }
            Step::Retire { selector } => {
                let transitions = apply(state, step, now, policy);
                save(state)?;
                if let Some(slot) = state.slot(selector) {
                    // The state says retired before the file goes: a crash in between
                    // leaves an unused file, never a state pointing at nothing.
                    self.store
                        .remove_key_file(domain, slot)
                        .map_err(|e| e.to_string())?;
                }
                report.transitions.extend(transitions);
                return Ok(());
            }
            Step::MarkPublished { .. } | Step::Activate { .. } => {}
        }
        let transitions = apply(state, step, now, policy);
        save(state)?;
        report.transitions.extend(transitions);
        Ok(())
    }
}

/// "s1 new -> active, e1 pending -> published": where each selector started and ended.
fn transition_summary(transitions: &[Transition]) -> String {
    let mut out: Vec<(&str, Option<SlotState>, SlotState)> = Vec::new();
    for t in transitions {
        match out.iter_mut().find(|(s, _, _)| *s == t.selector) {
            Some(entry) => entry.2 = t.to,
            None => out.push((&t.selector, t.from, t.to)),
        }
    }
    out.iter()
        .map(|(selector, from, to)| {
            format!(
                "{selector} {} -> {to}",
                from.map_or("new", SlotState::as_str)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
