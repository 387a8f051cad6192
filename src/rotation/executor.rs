//! The thin layer that performs the planner's steps: writes key files, runs the hook,
//! looks records up in DNS, saves the state. Used by the scheduler inside `serve` and by
//! `keys rotate`.
//!
//! The key store lock is held only to read the state, apply the planner's state-only steps
//! and record an effect's result; never while a hook or a DNS lookup runs, so a slow hook
//! cannot make `keys activate` or another domain wait. Domains run concurrently. Every
//! change is stamped with the time at which it is applied.

use super::dns::DnsChecker;
use super::hook::{run_hook, HookAction};
use super::{
    apply, plan, record_dns_check, record_hook_run, stuck_for, Ask, HookBecause, Policy, Step,
    Transition,
};
use crate::config::{Config, DomainConfig};
use crate::keys::{
    Algorithm, DnsOutcome, DnsRecord, DomainState, KeyStore, Slot, SlotState, StoreLock,
};
use std::collections::HashSet;
use std::sync::Arc;

/// Called right after an activation is saved, before anything else happens: the relay
/// swaps its in-memory signing keys here, so no key is retired or revoked while it signs.
pub type KeySwap = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct Rotator {
    store: KeyStore,
    config: Config,
    dns: Option<Arc<DnsChecker>>,
    on_activate: Option<KeySwap>,
}

/// One run of the hook, for the report: what was published or revoked.
#[derive(Debug, Clone)]
pub struct HookReport {
    pub action: HookAction,
    pub selector: String,
    /// The record the hook was given (public: a public key or an empty p=).
    pub record: DnsRecord,
    /// Ok("exit 0") or what went wrong.
    pub result: Result<String, String>,
}

/// What one run did to one domain.
#[derive(Debug, Default)]
pub struct DomainReport {
    pub transitions: Vec<Transition>,
    /// Records that must be published now (new pending keys).
    pub to_publish: Vec<DnsRecord>,
    /// Problems that made the rotation wait (hook failures, DNS mismatches).
    pub waiting: Vec<String>,
    /// Every hook run of this run, in order.
    pub hooks: Vec<HookReport>,
}

impl DomainReport {
    /// The report as lines for an operator (`keys rotate`, the control socket's reply).
    pub fn lines(&self, domain: &str) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.transitions {
            let from = t.from.map_or("-", SlotState::as_str);
            out.push(format!(
                "{domain} {}: {from} -> {} ({})",
                t.selector, t.to, t.reason
            ));
        }
        for r in &self.to_publish {
            out.push(format!("; publish:\n{}", r.zone_line()));
        }
        for h in &self.hooks {
            let verb = match (h.action, h.result.is_ok()) {
                (HookAction::Publish, true) => "published by the hook",
                (HookAction::Revoke, true) => "revoked by the hook",
                (HookAction::Publish, false) => "publish hook failed",
                (HookAction::Revoke, false) => "revoke hook failed",
            };
            let result = match &h.result {
                Ok(r) | Err(r) => r,
            };
            out.push(format!(
                "{domain} {}: {verb} ({result}): {}",
                h.selector,
                h.record.zone_line()
            ));
        }
        for w in &self.waiting {
            out.push(format!("{domain}: waiting: {w}"));
        }
        out
    }
}

/// The time a run stamps its changes with: the caller's `now` (so tests and the CLI can
/// set it) plus how long the run has taken so far (tokio's clock, which tests can pause).
struct RunClock {
    base: u64,
    started: tokio::time::Instant,
}

impl RunClock {
    fn new(base: u64) -> RunClock {
        RunClock {
            base,
            started: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.base.saturating_add(self.started.elapsed().as_secs())
    }
}

/// An effect step, once per run: a hook that failed is not run again in the same run.
fn effect_key(step: &Step) -> Option<(&'static str, String)> {
    match step {
        Step::PublishHook { selector, .. } => Some(("publish", selector.clone())),
        Step::RevokeHook { selector } => Some(("revoke", selector.clone())),
        Step::CheckDns { selector } => Some(("dns", selector.clone())),
        Step::Generate { .. }
        | Step::MarkPublished { .. }
        | Step::Activate { .. }
        | Step::Retire { .. }
        | Step::Withdraw { .. } => None,
    }
}

/// Whether `now` is still the key `then` was (an effect's result is recorded only on the
/// key it was run for: a key replaced meanwhile, by `keys rotate --emergency`, is left).
fn same_key(then: &Slot, now: Option<&Slot>) -> bool {
    now.is_some_and(|s| s.created == then.created && s.state == then.state)
}

impl Rotator {
    pub fn new(config: &Config) -> Result<Rotator, String> {
        let dns = if config.rotation.dns_check {
            Some(Arc::new(DnsChecker::new(config.rotation.resolver)?))
        } else {
            None
        };
        Ok(Rotator {
            store: KeyStore::for_config(&config.keys),
            config: config.clone(),
            dns,
            on_activate: None,
        })
    }

    /// Swaps the signing keys through `swap` right after each activation.
    pub fn with_key_swap(mut self, swap: KeySwap) -> Rotator {
        self.on_activate = Some(swap);
        self
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

    /// Runs the planner for every domain, concurrently, and logs each transition. Returns
    /// whether any key changed state (the key ring must then be reloaded).
    pub async fn run_all(&self, now: u64, force: bool) -> bool {
        let ask = if force { Ask::RotateNow } else { Ask::Schedule };
        self.run_each(now, ask, true).await
    }

    /// What `serve` does before it listens: only the steps that need no hook and no DNS
    /// lookup (first keys, activation after the propagation wait, retirement), so mail can
    /// be signed from the first message yet nothing outside the relay can delay it. The
    /// scheduler's first run, at once after, does the rest.
    pub async fn run_all_local(&self, now: u64) -> bool {
        self.run_each(now, Ask::Schedule, false).await
    }

    async fn run_each(&self, now: u64, ask: Ask, effects: bool) -> bool {
        let mut runs = tokio::task::JoinSet::new();
        for domain in self.domains() {
            let rotator = self.clone();
            runs.spawn(async move {
                let result = rotator.run_with(&domain, now, ask, effects).await;
                (domain, result)
            });
        }
        let mut changed = false;
        while let Some(joined) = runs.join_next().await {
            match joined {
                Ok((_, Ok(report))) => changed |= !report.transitions.is_empty(),
                Ok((domain, Err(e))) => {
                    tracing::error!(domain = %domain, error = %e, "rotation failed; will retry")
                }
                Err(e) => tracing::error!(error = %e, "a rotation run ended abnormally"),
            }
        }
        changed
    }

    /// `force`: `keys rotate --now` (see [`Ask::RotateNow`]).
    pub async fn run_domain(
        &self,
        domain: &str,
        now: u64,
        force: bool,
    ) -> Result<DomainReport, String> {
        let ask = if force { Ask::RotateNow } else { Ask::Schedule };
        self.run(domain, now, ask).await
    }

    /// Plans and performs steps for one domain until nothing more can happen; `now` is
    /// the time at the start of the run.
    pub async fn run(&self, domain: &str, now: u64, ask: Ask) -> Result<DomainReport, String> {
        self.run_with(domain, now, ask, true).await
    }

    async fn run_with(
        &self,
        domain: &str,
        now: u64,
        ask: Ask,
        effects: bool,
    ) -> Result<DomainReport, String> {
        let clock = RunClock::new(now);
        let mut report = DomainReport::default();
        let mut done = HashSet::new();
        let mut ask = ask;
        for _ in 0..12 {
            let Some(steps) = self
                .plan_and_apply(domain, &clock, ask, &mut report, &mut done)
                .await?
            else {
                break;
            };
            ask = Ask::Schedule;
            if !effects {
                continue;
            }
            for step in &steps {
                self.effect(domain, step, &clock, &mut report).await?;
            }
        }
        self.log_report(domain, &report, clock.now());
        Ok(report)
    }

    async fn lock(&self) -> Result<StoreLock, String> {
        let dir = self.store.dir().to_path_buf();
        tokio::task::spawn_blocking(move || StoreLock::acquire(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("key store lock: {e}"))
    }

    /// Under the lock: plans, applies the state-only steps (and writes new key files), and
    /// returns the effects still to perform, or None when nothing more can happen.
    async fn plan_and_apply(
        &self,
        domain: &str,
        clock: &RunClock,
        ask: Ask,
        report: &mut DomainReport,
        done: &mut HashSet<(&'static str, String)>,
    ) -> Result<Option<Vec<Step>>, String> {
        let _lock = self.lock().await?;
        let existing = self.store.load(domain).map_err(|e| e.to_string())?;
        if existing.is_none() && !(self.config.keys.generate_missing || ask == Ask::RotateNow) {
            return Ok(None);
        }
        let settings = self.domain_settings(domain, existing.as_ref());
        let policy = self.policy(&settings);
        let mut state = existing.unwrap_or_else(|| DomainState::new(domain));
        let before = state.clone();
        let mut effects = Vec::new();
        for step in plan(&state, clock.now(), &policy, ask) {
            match effect_key(&step) {
                Some(key) => {
                    if done.insert(key) {
                        effects.push(step);
                    }
                }
                None => {
                    self.perform(domain, &mut state, &step, clock.now(), &policy, report)
                        .await?
                }
            }
        }
        if effects.is_empty() && state == before {
            return Ok(None);
        }
        Ok(Some(effects))
    }

    /// A state-only step (and key generation), under the lock.
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
        if let Step::Generate {
            algorithm,
            selector,
        } = step
        {
            let alg = *algorithm;
            // In a token (C_GenerateKeyPair) or as a file; either is slow work (RSA).
            let store = self.store.clone();
            let (d, s) = (domain.to_string(), selector.clone());
            let key = tokio::task::spawn_blocking(move || store.new_key(&d, &s, alg, 2048))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            report
                .to_publish
                .push(DnsRecord::new(domain, selector, alg, &key.public_key));
            let transitions = apply(state, step, now, policy);
            key.place(state, selector);
            save(state)?;
            report.transitions.extend(transitions);
            return Ok(());
        }
        let transitions = apply(state, step, now, policy);
        save(state)?;
        if let Step::Retire { selector } = step {
            if let Some(slot) = state.slot(selector) {
                // The state says retired before the file goes: a crash in between
                // leaves an unused file, never a state pointing at nothing.
                self.store
                    .remove_key_file(domain, slot)
                    .map_err(|e| e.to_string())?;
            }
        }
        if let (Step::Activate { .. }, Some(swap)) = (step, &self.on_activate) {
            // Before the next step can retire (grace 0) or revoke the replaced keys.
            swap();
        }
        report.transitions.extend(transitions);
        Ok(())
    }

    /// A hook run or a DNS lookup, without the lock; its result is then recorded under
    /// the lock, on the key it was run for, at the time it finished.
    async fn effect(
        &self,
        domain: &str,
        step: &Step,
        clock: &RunClock,
        report: &mut DomainReport,
    ) -> Result<(), String> {
        let Some(state) = self.store.load(domain).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let (Step::PublishHook { selector, .. }
        | Step::RevokeHook { selector }
        | Step::CheckDns { selector }) = step
        else {
            return Ok(());
        };
        let Some(slot) = state.slot(selector).cloned() else {
            return Ok(());
        };
        match step {
            Step::PublishHook { because, .. } => {
                let record = self
                    .store
                    .record(domain, &slot)
                    .map_err(|e| e.to_string())?;
                self.hook(
                    domain,
                    &slot,
                    HookAction::Publish,
                    record,
                    *because,
                    clock,
                    report,
                )
                .await
            }
            Step::RevokeHook { .. } => {
                let record = DnsRecord::revoked(domain, selector, slot.algorithm);
                self.hook(
                    domain,
                    &slot,
                    HookAction::Revoke,
                    record,
                    HookBecause::NewKey,
                    clock,
                    report,
                )
                .await
            }
            _ => self.check_dns(domain, &slot, clock, report).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn hook(
        &self,
        domain: &str,
        slot: &Slot,
        action: HookAction,
        record: DnsRecord,
        because: HookBecause,
        clock: &RunClock,
        report: &mut DomainReport,
    ) -> Result<(), String> {
        let Some(hook) = &self.config.rotation.publish_hook else {
            return Ok(());
        };
        let selector = &slot.selector;
        match because {
            HookBecause::DnsServesOther => {
                crate::metrics::global().publish_hook_failure(domain);
                let detail = slot
                    .last_dns_check
                    .as_ref()
                    .map_or("", |c| c.detail.as_str());
                tracing::warn!(domain, selector = %selector, dns = %detail, "the publish hook exited 0 but DNS does not serve the new key; running it again");
            }
            HookBecause::Asked => {
                tracing::info!(domain, selector = %selector, "running the {} hook again, as asked", action.name())
            }
            HookBecause::NewKey | HookBecause::LastRunFailed => {}
        }
        let timeout = self.config.rotation.hook_timeout.0;
        let result = run_hook(
            hook,
            timeout,
            action,
            domain,
            selector,
            slot.algorithm,
            &record,
        )
        .await;
        if let Err(e) = &result {
            crate::metrics::global().publish_hook_failure(domain);
            tracing::warn!(domain, selector = %selector, action = action.name(), error = %e, "the hook failed; rotation waits and runs it again");
            report
                .waiting
                .push(format!("{} hook for {selector} failed: {e}", action.name()));
        }
        let _lock = self.lock().await?;
        let Some(mut state) = self.store.load(domain).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if same_key(slot, state.slot(selector)) {
            let at = clock.now();
            let publish = action == HookAction::Publish;
            if result.is_ok() {
                let step = match action {
                    HookAction::Publish => Step::PublishHook {
                        selector: selector.clone(),
                        because,
                    },
                    HookAction::Revoke => Step::RevokeHook {
                        selector: selector.clone(),
                    },
                };
                let policy = self.policy(&self.domain_settings(domain, Some(&state)));
                apply(&mut state, &step, at, &policy);
            }
            record_hook_run(&mut state, selector, publish, at, result.clone());
            self.store.save(&state).map_err(|e| e.to_string())?;
        }
        report.hooks.push(HookReport {
            action,
            selector: selector.clone(),
            record,
            result,
        });
        Ok(())
    }

    async fn check_dns(
        &self,
        domain: &str,
        slot: &Slot,
        clock: &RunClock,
        report: &mut DomainReport,
    ) -> Result<(), String> {
        let Some(dns) = &self.dns else {
            return Ok(());
        };
        let record = self.store.record(domain, slot).map_err(|e| e.to_string())?;
        let expected = crate::keys::public_key_bytes(&record).unwrap_or_default();
        let mut check = dns
            .check(&record.name, slot.algorithm, &expected, clock.now())
            .await;
        // When the answer came, not when the question went (a lookup can take seconds).
        check.at = clock.now();
        let selector = &slot.selector;
        match check.outcome {
            DnsOutcome::Match => {}
            DnsOutcome::Mismatch if slot.hook_published.is_some() => {
                tracing::warn!(domain, selector = %selector, dns = %check.detail, "DNS serves another key than the one the publish hook published");
                report.waiting.push(format!("{selector}: {}", check.detail));
            }
            DnsOutcome::Mismatch | DnsOutcome::Missing | DnsOutcome::Error => {
                report.waiting.push(format!("{selector}: {}", check.detail));
            }
        }
        let _lock = self.lock().await?;
        let Some(mut state) = self.store.load(domain).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if same_key(slot, state.slot(selector)) {
            record_dns_check(&mut state, selector, check);
            self.store.save(&state).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One line per domain and run at info (a first start walks several states at once);
    /// each step, and the full record, at debug; a rotation stuck too long at warn.
    fn log_report(&self, domain: &str, report: &DomainReport, now: u64) {
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
        let stuck_after = self.config.rotation.stuck_after.0.as_secs();
        let stuck = self
            .store
            .load(domain)
            .ok()
            .flatten()
            .and_then(|state| stuck_for(&state, now, stuck_after));
        for why in &report.waiting {
            match stuck {
                Some(secs) => {
                    tracing::warn!(domain, reason = %why, waiting_seconds = secs, "rotation stuck: the new key is still not published")
                }
                None => tracing::info!(domain, reason = %why, "rotation waiting"),
            }
        }
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
