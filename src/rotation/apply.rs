//! Applying a planner step to the state file's contents. Pure, like the planner: effects
//! (writing key files, running hooks, DNS lookups) are the executor's, which records their
//! results here.

use super::planner::{Policy, PublishedBecause, Step};
use crate::keys::{DomainState, Slot, SlotState};

/// One state change, for the log: domain, selector, from, to, reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub selector: String,
    pub from: Option<SlotState>,
    pub to: SlotState,
    pub reason: String,
}

fn slot_mut<'a>(state: &'a mut DomainState, selector: &str) -> Option<&'a mut Slot> {
    state.slots.iter_mut().find(|s| s.selector == selector)
}

/// Applies a state-only step. `Generate` records a key the executor has just written;
/// `PublishHook`/`RevokeHook` record a hook run that succeeded. `CheckDns` changes nothing
/// here (the executor stores the lookup with [`record_dns_check`]).
pub fn apply(state: &mut DomainState, step: &Step, now: u64, policy: &Policy) -> Vec<Transition> {
    let mut out = Vec::new();
    match step {
        Step::Generate {
            algorithm,
            selector,
        } => {
            let from = state.slot(selector).map(|s| s.state);
            state.slots.retain(|s| &s.selector != selector);
            state.slots.push(Slot::new(
                selector,
                *algorithm,
                format!("{selector}.pem"),
                None,
                SlotState::Pending,
                now,
            ));
            out.push(Transition {
                selector: selector.clone(),
                from,
                to: SlotState::Pending,
                reason: "new key generated; its record must be published".into(),
            });
        }
        Step::PublishHook { selector, .. } => {
            if let Some(slot) = slot_mut(state, selector) {
                slot.hook_published = Some(now);
            }
        }
        Step::RevokeHook { selector } => {
            if let Some(slot) = slot_mut(state, selector) {
                slot.hook_revoked = Some(now);
            }
        }
        Step::CheckDns { .. } => {}
        Step::MarkPublished { selector, because } => {
            if let Some(slot) = slot_mut(state, selector) {
                if slot.state == SlotState::Pending {
                    slot.state = SlotState::Published;
                    slot.published = Some(now);
                    out.push(Transition {
                        selector: selector.clone(),
                        from: Some(SlotState::Pending),
                        to: SlotState::Published,
                        reason: match because {
                            PublishedBecause::DnsServesIt => "DNS serves exactly this key".into(),
                            PublishedBecause::WaitElapsed => {
                                "DNS checks are off and the propagation wait has passed".into()
                            }
                            PublishedBecause::Forced => {
                                "forced by the operator without a DNS check".into()
                            }
                        },
                    });
                }
            }
        }
        Step::Activate { selectors } => {
            for selector in selectors {
                let Some(algorithm) = state
                    .slot(selector)
                    .filter(|s| s.state == SlotState::Published)
                    .map(|s| s.algorithm)
                else {
                    continue;
                };
                for old in state
                    .slots
                    .iter_mut()
                    .filter(|s| s.algorithm == algorithm && s.state == SlotState::Active)
                {
                    old.state = SlotState::Retiring;
                    old.retiring_until = Some(now.saturating_add(policy.grace));
                    out.push(Transition {
                        selector: old.selector.clone(),
                        from: Some(SlotState::Active),
                        to: SlotState::Retiring,
                        reason: format!(
                            "replaced by {selector}; kept published for the grace period"
                        ),
                    });
                }
                if let Some(new) = slot_mut(state, selector) {
                    new.state = SlotState::Active;
                    new.active_since = Some(now);
                    out.push(Transition {
                        selector: selector.clone(),
                        from: Some(SlotState::Published),
                        to: SlotState::Active,
                        reason: "signing switches to this key".into(),
                    });
                }
            }
        }
        Step::Withdraw { selector } => {
            if let Some(slot) = slot_mut(state, selector) {
                if slot.state != SlotState::Retired {
                    out.push(Transition {
                        selector: selector.clone(),
                        from: Some(slot.state),
                        to: SlotState::Retired,
                        reason:
                            "emergency rotation: withdrawn at once; revoke its record (empty p=)"
                                .into(),
                    });
                    slot.state = SlotState::Retired;
                    slot.retiring_until = None;
                }
            }
        }
        Step::Retire { selector } => {
            if let Some(slot) = slot_mut(state, selector) {
                if slot.state == SlotState::Retiring {
                    slot.state = SlotState::Retired;
                    out.push(Transition {
                        selector: selector.clone(),
                        from: Some(SlotState::Retiring),
                        to: SlotState::Retired,
                        reason: "grace period over; the record may be revoked (empty p=)".into(),
                    });
                }
            }
        }
    }
    out
}

/// Stores a hook run's result on the slot (the count of publish runs goes up by one).
pub fn record_hook_run(
    state: &mut DomainState,
    selector: &str,
    publish: bool,
    at: u64,
    result: Result<String, String>,
) {
    if let Some(slot) = slot_mut(state, selector) {
        let runs = slot.last_hook.as_ref().map_or(0, |r| r.runs) + u32::from(publish);
        let (ok, result) = match result {
            Ok(r) => (true, r),
            Err(r) => (false, r),
        };
        slot.last_hook = Some(crate::keys::HookRun {
            at,
            ok,
            result,
            runs,
        });
    }
}

/// Stores a DNS lookup's result on the slot.
pub fn record_dns_check(state: &mut DomainState, selector: &str, check: crate::keys::DnsCheck) {
    if let Some(slot) = slot_mut(state, selector) {
        slot.last_dns_check = Some(check);
    }
}
