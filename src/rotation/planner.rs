//! The rotation planner: a pure function of (domain state, now, policy) that says what to
//! do next. It performs nothing; the executor applies its steps and runs it again. That
//! keeps every safety rule of DESIGN §6 in one place, testable on a fixed clock.

use crate::keys::{Algorithm, DnsOutcome, DomainState, Slot, SlotState};

/// The longest a publish hook that exits 0 while DNS serves another key waits between
/// reruns, in multiples of `dns_recheck` (1, 2, 4 … 32).
const MAX_RERUN_BACKOFF_SHIFT: u32 = 5;

/// The rules of rotation for one domain, all in seconds.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Age of the active keys after which the domain rotates.
    pub interval: u64,
    /// With DNS checks off: how long after publishing a key counts as published.
    pub propagation_wait: u64,
    /// How long a replaced key stays published (and its file kept) after the switch.
    pub grace: u64,
    /// Activate only keys DNS is seen to serve.
    pub dns_check: bool,
    /// How often a pending key's record is looked up again.
    pub dns_recheck: u64,
    /// A publish hook is configured.
    pub hook: bool,
    /// The algorithms this domain signs with; RSA is always among them.
    pub algorithms: Vec<Algorithm>,
    /// The two selector slots of each algorithm.
    pub rsa_selectors: [String; 2],
    pub ed25519_selectors: [String; 2],
}

impl Policy {
    fn selectors(&self, algorithm: Algorithm) -> &[String; 2] {
        match algorithm {
            Algorithm::Rsa => &self.rsa_selectors,
            Algorithm::Ed25519 => &self.ed25519_selectors,
        }
    }
}

/// Why a key counts as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedBecause {
    DnsServesIt,
    WaitElapsed,
    /// `keys activate --force`: the operator vouches for DNS.
    Forced,
}

/// What the caller asks of a run, beyond what the schedule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ask {
    /// Only what is due (the scheduler, `keys rotate --due`).
    Schedule,
    /// `keys rotate --now`: start a rotation, or, if one waits, run its publish hook again.
    RotateNow,
    /// `keys publish`: run the publish hook of every pending key again, now.
    Publish,
}

impl Ask {
    /// As a word, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Ask::Schedule => "schedule",
            Ask::RotateNow => "rotate now",
            Ask::Publish => "publish",
        }
    }
}

/// Why the publish hook runs for a pending key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookBecause {
    /// Never run for this key yet.
    NewKey,
    /// Its last run failed (non-zero exit, timeout): retried at every run.
    LastRunFailed,
    /// It exited 0 but DNS still serves another key (or nothing): run again, backing off.
    DnsServesOther,
    /// The operator asked (`keys rotate --now`, `keys publish`).
    Asked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Generate a key in this (free or retired) slot, as pending.
    Generate {
        algorithm: Algorithm,
        selector: String,
    },
    /// Run the publish hook for a pending key.
    PublishHook {
        selector: String,
        because: HookBecause,
    },
    /// Look the pending key's record up in DNS and record what was found.
    CheckDns { selector: String },
    MarkPublished {
        selector: String,
        because: PublishedBecause,
    },
    /// Switch signing to these (published) keys, one per algorithm; the keys they replace
    /// start their grace period.
    Activate { selectors: Vec<String> },
    /// The grace period is over: stop publishing, delete the key file.
    Retire { selector: String },
    /// Run the revoke hook for a retired key.
    RevokeHook { selector: String },
    /// A compromised key (or one in a slot a compromised key's replacement needs): out of
    /// use at once, with no grace; its record is to be revoked (`keys rotate --emergency`).
    Withdraw { selector: String },
}

fn slots_of(state: &DomainState, algorithm: Algorithm) -> impl Iterator<Item = &Slot> {
    state.slots.iter().filter(move |s| s.algorithm == algorithm)
}

fn in_state(state: &DomainState, algorithm: Algorithm, wanted: SlotState) -> Option<&Slot> {
    slots_of(state, algorithm).find(|s| s.state == wanted)
}

/// A key on its way in: pending or published.
fn incoming(state: &DomainState, algorithm: Algorithm) -> Option<&Slot> {
    slots_of(state, algorithm)
        .find(|s| matches!(s.state, SlotState::Pending | SlotState::Published))
}

/// The slot a new key of `algorithm` may go into: one never used, or retired. Also what
/// `keys generate` asks, so both pick the same slot.
pub fn free_slot(state: &DomainState, policy: &Policy, algorithm: Algorithm) -> Option<String> {
    policy
        .selectors(algorithm)
        .iter()
        .find_map(|sel| match state.slot(sel) {
            None => Some(sel.clone()),
            Some(slot) if slot.state == SlotState::Retired && slot.algorithm == algorithm => {
                Some(sel.clone())
            }
            Some(_) => None,
        })
}

/// What happens to a key next, and when (Unix seconds) where a time decides it: the
/// planner's own rules, for `keys status` and /metrics to render rather than re-derive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextMove {
    /// Pending with DNS checks on: published once DNS serves exactly this key.
    PublishedWhenServed,
    /// Pending with DNS checks off: published when the propagation wait has passed.
    PublishedAt(u64),
    /// Published: becomes active at the next planner run.
    ActivatedNextRun,
    /// Active: replaced when it is older than the interval.
    ReplacedAt(u64),
    /// Retiring: retired when its grace period ends (None: no end recorded).
    RetiredAt(Option<u64>),
    /// Retired: nothing more; its record may be revoked.
    Nothing,
}

impl NextMove {
    /// When it happens, where a time decides it.
    pub fn at(self) -> Option<u64> {
        match self {
            NextMove::PublishedAt(t) | NextMove::ReplacedAt(t) => Some(t),
            NextMove::RetiredAt(t) => t,
            NextMove::PublishedWhenServed | NextMove::ActivatedNextRun | NextMove::Nothing => None,
        }
    }
}

/// The next move of `slot` under the rotation settings (interval, propagation wait and
/// whether DNS is checked, in seconds).
pub fn next_move(slot: &Slot, interval: u64, propagation_wait: u64, dns_check: bool) -> NextMove {
    match slot.state {
        SlotState::Pending if dns_check => NextMove::PublishedWhenServed,
        SlotState::Pending => NextMove::PublishedAt(
            slot.hook_published
                .unwrap_or(slot.created)
                .saturating_add(propagation_wait),
        ),
        SlotState::Published => NextMove::ActivatedNextRun,
        SlotState::Active => NextMove::ReplacedAt(
            slot.active_since
                .unwrap_or(slot.created)
                .saturating_add(interval),
        ),
        SlotState::Retiring => NextMove::RetiredAt(slot.retiring_until),
        SlotState::Retired => NextMove::Nothing,
    }
}

/// Whether the domain is due to rotate at `now`: some active key is older than the interval.
/// What `keys rotate --emergency` does when the active keys are compromised: every key
/// in use (active, retiring, published, pending) is withdrawn now, then one new pending
/// key per algorithm goes under the selector that did not carry a compromised (active)
/// key, so that name can be revoked and stay revoked. The caller applies the steps in
/// order and deletes the withdrawn keys' files.
pub fn emergency(state: &DomainState, policy: &Policy) -> Vec<Step> {
    let compromised: Vec<&str> = state
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Active)
        .map(|s| s.selector.as_str())
        .collect();
    let mut steps: Vec<Step> = state
        .slots
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                SlotState::Active | SlotState::Retiring | SlotState::Published | SlotState::Pending
            )
        })
        .map(|s| Step::Withdraw {
            selector: s.selector.clone(),
        })
        .collect();
    for &algorithm in &policy.algorithms {
        let pair = policy.selectors(algorithm);
        let selector = pair
            .iter()
            .find(|s| !compromised.contains(&s.as_str()))
            .unwrap_or(&pair[0])
            .clone();
        steps.push(Step::Generate {
            algorithm,
            selector,
        });
    }
    steps
}

pub fn rotation_due(state: &DomainState, now: u64, policy: &Policy) -> bool {
    policy.algorithms.iter().any(|&alg| {
        in_state(state, alg, SlotState::Active).is_some_and(|s| {
            now >= s
                .active_since
                .unwrap_or(s.created)
                .saturating_add(policy.interval)
        })
    })
}

/// Whether (and why) the publish hook runs for this pending key at `now`. A hook that
/// exited 0 is run again only once a DNS lookup after it still found another key or none,
/// at most every `dns_recheck`, doubling up to 32 times that, so a hook that published a
/// wrong value cannot wedge the rotation and a broken one cannot hammer the provider.
fn publish_hook_due(slot: &Slot, now: u64, policy: &Policy, ask: Ask) -> Option<HookBecause> {
    if !policy.hook {
        return None;
    }
    if matches!(ask, Ask::RotateNow | Ask::Publish) {
        return Some(HookBecause::Asked);
    }
    let Some(published) = slot.hook_published else {
        return Some(match &slot.last_hook {
            Some(run) if !run.ok => HookBecause::LastRunFailed,
            _ => HookBecause::NewKey,
        });
    };
    if !policy.dns_check {
        return None;
    }
    let check = slot.last_dns_check.as_ref()?;
    if check.at < published || !matches!(check.outcome, DnsOutcome::Mismatch | DnsOutcome::Missing)
    {
        return None;
    }
    let runs = slot.last_hook.as_ref().map_or(1, |r| r.runs.max(1));
    let last = slot
        .last_hook
        .as_ref()
        .map_or(published, |r| r.at.max(published));
    let wait = policy
        .dns_recheck
        .max(1)
        .saturating_mul(1u64 << (runs - 1).min(MAX_RERUN_BACKOFF_SHIFT));
    (now >= last.saturating_add(wait)).then_some(HookBecause::DnsServesOther)
}

/// Since when the domain's rotation has waited for a key to be published: the creation
/// of its oldest pending key (None: nothing waits).
pub fn waiting_since(state: &DomainState) -> Option<&Slot> {
    state
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Pending)
        .min_by_key(|s| s.created)
}

/// A rotation waiting longer than `stuck_after` (`rotation.stuck_after`, seconds): how
/// long it has waited, in seconds.
pub fn stuck_for(state: &DomainState, now: u64, stuck_after: u64) -> Option<u64> {
    let waited = now.saturating_sub(waiting_since(state)?.created);
    (waited > stuck_after).then_some(waited)
}

/// The next steps for one domain at `now`, and what the caller asked for.
pub fn plan(state: &DomainState, now: u64, policy: &Policy, ask: Ask) -> Vec<Step> {
    let force_rotation = ask == Ask::RotateNow;
    let mut steps = Vec::new();
    let rotating = policy
        .algorithms
        .iter()
        .any(|&a| incoming(state, a).is_some());

    // 1. Start a rotation (or the first keys): every algorithm together, so RSA and
    //    Ed25519 always switch at the same moment.
    let needs_first_keys = policy
        .algorithms
        .iter()
        .any(|&a| in_state(state, a, SlotState::Active).is_none() && incoming(state, a).is_none());
    if !rotating && (needs_first_keys || force_rotation || rotation_due(state, now, policy)) {
        let mut generate = Vec::new();
        for &alg in &policy.algorithms {
            match free_slot(state, policy, alg) {
                Some(selector) => generate.push(Step::Generate {
                    algorithm: alg,
                    selector,
                }),
                // The other slot is still in its grace period: wait for it, never cut it short.
                None => return steps,
            }
        }
        return generate;
    }

    // 2. Move incoming keys towards published.
    for &alg in &policy.algorithms {
        let Some(slot) = incoming(state, alg) else {
            continue;
        };
        if slot.state != SlotState::Pending {
            continue;
        }
        let selector = slot.selector.clone();
        if let Some(because) = publish_hook_due(slot, now, policy, ask) {
            steps.push(Step::PublishHook { selector, because });
            continue;
        }
        if policy.dns_check {
            match &slot.last_dns_check {
                Some(check) if check.outcome == DnsOutcome::Match && check.at >= slot.created => {
                    steps.push(Step::MarkPublished {
                        selector,
                        because: PublishedBecause::DnsServesIt,
                    });
                }
                // Just published by the hook: look at once rather than at the next recheck.
                Some(check)
                    if now < check.at.saturating_add(policy.dns_recheck)
                        && slot.hook_published.is_none_or(|h| h <= check.at) => {}
                _ => steps.push(Step::CheckDns { selector }),
            }
        } else {
            let since = slot.hook_published.unwrap_or(slot.created);
            if now >= since.saturating_add(policy.propagation_wait) {
                steps.push(Step::MarkPublished {
                    selector,
                    because: PublishedBecause::WaitElapsed,
                });
            }
        }
    }

    // 3. Activate when every algorithm's incoming key is published (together).
    let incoming_all: Vec<&Slot> = policy
        .algorithms
        .iter()
        .filter_map(|&a| incoming(state, a))
        .collect();
    if !incoming_all.is_empty() && incoming_all.iter().all(|s| s.state == SlotState::Published) {
        // An algorithm with no incoming key keeps its active one; RSA must end up active.
        let rsa_after = incoming(state, Algorithm::Rsa).is_some()
            || in_state(state, Algorithm::Rsa, SlotState::Active).is_some();
        if rsa_after {
            steps.push(Step::Activate {
                selectors: incoming_all.iter().map(|s| s.selector.clone()).collect(),
            });
        }
    }

    // 4. End grace periods; revoke what is retired.
    for slot in &state.slots {
        match slot.state {
            SlotState::Retiring if slot.retiring_until.is_some_and(|until| now >= until) => {
                steps.push(Step::Retire {
                    selector: slot.selector.clone(),
                });
            }
            SlotState::Retired if policy.hook && slot.hook_revoked.is_none() => {
                steps.push(Step::RevokeHook {
                    selector: slot.selector.clone(),
                });
            }
            _ => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests;
