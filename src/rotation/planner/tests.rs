//! The planner on a fixed clock, with a simulated DNS, through full rotation cycles, and
//! each invariant of DESIGN §6 checked after every step.

use super::*;
use crate::keys::{DnsCheck, DnsOutcome};
use crate::rotation::apply::{apply, record_dns_check};
use std::collections::HashMap;

const DAY: u64 = 86_400;

fn policy(dns_check: bool) -> Policy {
    Policy {
        interval: 90 * DAY,
        propagation_wait: 3600,
        grace: 7 * DAY,
        dns_check,
        dns_recheck: 300,
        hook: true,
        algorithms: vec![Algorithm::Rsa, Algorithm::Ed25519],
        rsa_selectors: ["s1".into(), "s2".into()],
        ed25519_selectors: ["e1".into(), "e2".into()],
    }
}

/// What DNS serves: selector → `created` time of the key it holds.
type Dns = HashMap<String, u64>;

/// Runs plan/apply until nothing is left to do at `now`, simulating the effects. The
/// publish hook "publishes" into `dns` only if `publish` is true (DNS can lag).
fn settle(
    state: &mut DomainState,
    now: u64,
    p: &Policy,
    dns: &mut Dns,
    publish: bool,
    log: &mut Vec<String>,
) {
    for _ in 0..20 {
        let steps = plan(state, now, p, Ask::Schedule);
        if steps.is_empty() {
            return;
        }
        let before = state.clone();
        for step in &steps {
            match step {
                // The hook succeeds; whether its record reaches DNS is up to the test.
                Step::PublishHook { selector, .. } if publish => {
                    let created = state.slot(selector).unwrap().created;
                    dns.insert(selector.clone(), created);
                }
                Step::CheckDns { selector } => {
                    let created = state.slot(selector).unwrap().created;
                    let outcome = match dns.get(selector) {
                        Some(&c) if c == created => DnsOutcome::Match,
                        Some(_) => DnsOutcome::Mismatch,
                        None => DnsOutcome::Missing,
                    };
                    record_dns_check(
                        state,
                        selector,
                        DnsCheck {
                            at: now,
                            outcome,
                            detail: String::new(),
                        },
                    );
                    continue;
                }
                _ => {}
            }
            if let Step::Activate { selectors } = step {
                for sel in selectors {
                    let slot = state.slot(sel).unwrap();
                    if p.dns_check {
                        assert_eq!(
                            dns.get(sel),
                            Some(&slot.created),
                            "activating {sel}, which DNS does not serve"
                        );
                    }
                }
            }
            for t in apply(state, step, now, p) {
                log.push(format!("{} {:?}->{:?}", t.selector, t.from, t.to));
            }
            check_invariants(&before, state, now);
        }
        if *state == before {
            return;
        }
    }
    panic!("planner did not settle");
}

fn check_invariants(before: &DomainState, after: &DomainState, now: u64) {
    for alg in [Algorithm::Rsa, Algorithm::Ed25519] {
        let active = after
            .slots
            .iter()
            .filter(|s| s.algorithm == alg && s.state == SlotState::Active)
            .count();
        assert!(active <= 1, "two active {alg} keys: {after:?}");
        let had = before
            .slots
            .iter()
            .any(|s| s.algorithm == alg && s.state == SlotState::Active);
        assert!(!had || active == 1, "{alg} lost its active key: {after:?}");
    }
    let ed = after
        .slots
        .iter()
        .any(|s| s.algorithm == Algorithm::Ed25519 && s.state == SlotState::Active);
    let rsa = after
        .slots
        .iter()
        .any(|s| s.algorithm == Algorithm::Rsa && s.state == SlotState::Active);
    assert!(!ed || rsa, "Ed25519 active without RSA: {after:?}");
    for old in before
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Retiring)
    {
        let gone = after
            .slot(&old.selector)
            .is_none_or(|s| s.state != SlotState::Retiring);
        if gone {
            assert!(
                now >= old.retiring_until.unwrap(),
                "{} left its grace period early",
                old.selector
            );
        }
    }
}

fn active(state: &DomainState) -> Vec<String> {
    state.active().iter().map(|s| s.selector.clone()).collect()
}

#[test]
fn two_full_cycles_on_a_fixed_clock() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    let t0 = 1_700_000_000;
    settle(&mut state, t0, &p, &mut dns, true, &mut log);
    assert_eq!(
        active(&state),
        ["s1", "e1"],
        "bootstrap activates once DNS serves the keys"
    );

    // Nothing happens before the interval.
    let steps = plan(&state, t0 + 89 * DAY, &p, Ask::Schedule);
    assert!(steps.is_empty(), "{steps:?}");

    // Cycle 1: at 90 days, s2/e2 are generated, published, activated; s1/e1 retire.
    let t1 = t0 + 90 * DAY;
    settle(&mut state, t1, &p, &mut dns, true, &mut log);
    assert_eq!(active(&state), ["s2", "e2"]);
    assert_eq!(state.slot("s1").unwrap().state, SlotState::Retiring);
    settle(&mut state, t1 + 7 * DAY - 1, &p, &mut dns, true, &mut log);
    assert_eq!(
        state.slot("s1").unwrap().state,
        SlotState::Retiring,
        "grace not over"
    );
    settle(&mut state, t1 + 7 * DAY, &p, &mut dns, true, &mut log);
    assert_eq!(state.slot("s1").unwrap().state, SlotState::Retired);

    // Cycle 2: back to s1/e1 with new keys.
    let t2 = t1 + 90 * DAY;
    settle(&mut state, t2, &p, &mut dns, true, &mut log);
    assert_eq!(active(&state), ["s1", "e1"]);
    assert_eq!(state.slot("s1").unwrap().created, t2);
    settle(&mut state, t2 + 7 * DAY, &p, &mut dns, true, &mut log);
    assert_eq!(state.slot("s2").unwrap().state, SlotState::Retired);
    assert!(log.len() >= 12, "{log:?}");
}

#[test]
fn a_key_dns_does_not_serve_is_never_activated() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    // The hook "succeeds" but nothing reaches DNS.
    settle(&mut state, 1000, &p, &mut dns, false, &mut log);
    assert!(active(&state).is_empty());
    // Still pending days later: a DNS record with another key does not count either.
    dns.insert("s1".into(), 1);
    dns.insert("e1".into(), 1);
    settle(&mut state, 1000 + 3 * DAY, &p, &mut dns, false, &mut log);
    assert!(active(&state).is_empty());
    assert_eq!(state.slot("s1").unwrap().state, SlotState::Pending);
    assert_eq!(
        state
            .slot("s1")
            .unwrap()
            .last_dns_check
            .as_ref()
            .unwrap()
            .outcome,
        DnsOutcome::Mismatch
    );
}

#[test]
fn rsa_and_ed25519_switch_together() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    settle(&mut state, 0, &p, &mut dns, true, &mut log);
    let t = 90 * DAY;
    // Only the RSA record reaches DNS: nothing may switch.
    let steps = plan(&state, t, &p, Ask::Schedule);
    for step in &steps {
        if let Step::Generate {
            algorithm,
            selector,
        } = step
        {
            state.slots.retain(|s| &s.selector != selector);
            apply(&mut state, step, t, &p);
            if *algorithm == Algorithm::Rsa {
                dns.insert(selector.clone(), t);
            }
        }
    }
    for s in state.slots.iter_mut() {
        s.hook_published = s.hook_published.or(Some(t));
    }
    settle(&mut state, t + 3600, &p, &mut dns, false, &mut log);
    assert_eq!(active(&state), ["s1", "e1"], "RSA switched without Ed25519");
    assert_eq!(state.slot("s2").unwrap().state, SlotState::Published);
    dns.insert("e2".into(), t);
    settle(&mut state, t + 7200, &p, &mut dns, false, &mut log);
    assert_eq!(active(&state), ["s2", "e2"]);
}

#[test]
fn rotation_waits_while_the_other_slot_is_in_its_grace_period() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    settle(&mut state, 0, &p, &mut dns, true, &mut log);
    settle(&mut state, 90 * DAY, &p, &mut dns, true, &mut log);
    // Forced rotation one day later: s1 is still retiring, so there is nowhere to go.
    let steps = plan(&state, 91 * DAY, &p, Ask::RotateNow);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(state.slot("s1").unwrap().state, SlotState::Retiring);
}

#[test]
fn without_dns_checks_the_propagation_wait_counts() {
    let p = policy(false);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    settle(&mut state, 0, &p, &mut dns, true, &mut log);
    assert!(
        active(&state).is_empty(),
        "activated before the propagation wait"
    );
    settle(&mut state, 3599, &p, &mut dns, true, &mut log);
    assert!(active(&state).is_empty());
    settle(&mut state, 3600, &p, &mut dns, true, &mut log);
    assert_eq!(active(&state), ["s1", "e1"]);
}

#[test]
fn a_year_of_quarterly_rotation_keeps_one_active_key_per_algorithm() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let mut dns = Dns::new();
    let mut log = Vec::new();
    let mut t = 0;
    while t <= 365 * DAY {
        settle(&mut state, t, &p, &mut dns, true, &mut log);
        if t > 0 {
            assert_eq!(active(&state).len(), 2, "at day {}", t / DAY);
        }
        t += DAY;
    }
    let activations = log.iter().filter(|l| l.contains("->Active")).count();
    assert_eq!(
        activations,
        2 * 5,
        "bootstrap + 4 rotations, two algorithms: {log:?}"
    );
}

/// `keys status` and /metrics read when a key moves next from here, not from copies.
#[test]
fn next_move_follows_the_planner_rules() {
    let slot = |state: SlotState| Slot {
        selector: "s1".into(),
        algorithm: Algorithm::Rsa,
        key_file: "s1.pem".into(),
        token_id: None,
        state,
        created: 1_000,
        published: None,
        active_since: Some(2_000),
        retiring_until: Some(9_000),
        hook_published: Some(1_500),
        last_dns_check: None,
        hook_revoked: None,
        last_hook: None,
    };
    let next = |state, dns| next_move(&slot(state), 100_000, 600, dns);
    assert_eq!(
        next(SlotState::Pending, true),
        NextMove::PublishedWhenServed
    );
    assert_eq!(
        next(SlotState::Pending, false),
        NextMove::PublishedAt(2_100)
    );
    assert_eq!(next(SlotState::Published, true), NextMove::ActivatedNextRun);
    assert_eq!(next(SlotState::Active, true), NextMove::ReplacedAt(102_000));
    assert_eq!(next(SlotState::Active, true).at(), Some(102_000));
    assert_eq!(
        next(SlotState::Retiring, true),
        NextMove::RetiredAt(Some(9_000))
    );
    assert_eq!(next(SlotState::Retired, true).at(), None);
}

/// A pending key whose hook exited 0 at `published`, and a DNS lookup at `checked`.
fn hooked_pending(published: u64, checked: u64, outcome: DnsOutcome) -> DomainState {
    let mut state = DomainState::new("example.com");
    state.slots.push(Slot {
        selector: "s1".into(),
        algorithm: Algorithm::Rsa,
        key_file: "s1.pem".into(),
        token_id: None,
        state: SlotState::Pending,
        created: 0,
        published: None,
        active_since: None,
        retiring_until: None,
        hook_published: Some(published),
        last_dns_check: Some(DnsCheck {
            at: checked,
            outcome,
            detail: "another key".into(),
        }),
        hook_revoked: None,
        last_hook: None,
    });
    state
}

fn rsa_only(mut p: Policy) -> Policy {
    p.algorithms = vec![Algorithm::Rsa];
    p
}

#[test]
fn a_hook_that_exited_0_while_dns_serves_another_key_runs_again_backing_off() {
    let p = rsa_only(policy(true));
    let state = hooked_pending(100, 110, DnsOutcome::Mismatch);
    let hook_steps = |state: &DomainState, now: u64, ask: Ask| -> Vec<HookBecause> {
        plan(state, now, &p, ask)
            .into_iter()
            .filter_map(|s| match s {
                Step::PublishHook { because, .. } => Some(because),
                _ => None,
            })
            .collect()
    };
    // Not before dns_recheck has passed since the hook ran.
    assert!(hook_steps(&state, 100 + 299, Ask::Schedule).is_empty());
    assert_eq!(
        hook_steps(&state, 100 + 300, Ask::Schedule),
        [HookBecause::DnsServesOther]
    );
    // After the third run, it waits 4 × dns_recheck; capped at 32 ×.
    let mut third = state.clone();
    third.slots[0].last_hook = Some(crate::keys::HookRun {
        at: 1000,
        ok: true,
        result: "exit 0".into(),
        runs: 3,
    });
    third.slots[0].hook_published = Some(1000);
    third.slots[0].last_dns_check.as_mut().unwrap().at = 1001;
    assert!(hook_steps(&third, 1000 + 4 * 300 - 1, Ask::Schedule).is_empty());
    assert_eq!(hook_steps(&third, 1000 + 4 * 300, Ask::Schedule).len(), 1);
    third.slots[0].last_hook.as_mut().unwrap().runs = 40;
    assert_eq!(hook_steps(&third, 1000 + 32 * 300, Ask::Schedule).len(), 1);
    // A match, or a lookup that failed, is no reason to run it again.
    assert!(hook_steps(
        &hooked_pending(100, 110, DnsOutcome::Error),
        DAY,
        Ask::Schedule
    )
    .is_empty());
    // The operator can always ask: `keys rotate --now`, `keys publish`.
    assert_eq!(
        hook_steps(&state, 101, Ask::RotateNow),
        [HookBecause::Asked]
    );
    assert_eq!(hook_steps(&state, 101, Ask::Publish), [HookBecause::Asked]);
}

#[test]
fn a_rotation_is_stuck_once_its_key_waited_longer_than_stuck_after() {
    let state = hooked_pending(100, 110, DnsOutcome::Mismatch);
    assert_eq!(waiting_since(&state).map(|s| s.created), Some(0));
    assert_eq!(stuck_for(&state, DAY, DAY), None);
    assert_eq!(stuck_for(&state, DAY + 1, DAY), Some(DAY + 1));
    let mut done = state.clone();
    done.slots[0].state = SlotState::Active;
    assert_eq!(stuck_for(&done, 10 * DAY, DAY), None);
}

/// Issue 13: the emergency rotation's rules are the planner's. With s2/e2 active and
/// s1/e1 in their grace period, every key in use is withdrawn at once and the new keys go
/// under s1/e1 (the names that did not carry the compromised keys); with the new keys
/// pending, nothing signs until DNS serves them, and the schedule carries on from there.
#[test]
fn an_emergency_withdraws_every_key_in_use_and_refills_the_uncompromised_slots() {
    let p = policy(true);
    let mut state = DomainState::new("example.com");
    let (mut dns, mut log) = (Dns::new(), Vec::new());
    let t0 = 1_700_000_000;
    settle(&mut state, t0, &p, &mut dns, true, &mut log);
    settle(&mut state, t0 + 90 * DAY, &p, &mut dns, true, &mut log);
    assert_eq!(active(&state), ["s2", "e2"]);

    let now = t0 + 91 * DAY;
    let steps = emergency(&state, &p);
    let withdrawn: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Withdraw { selector } => Some(selector.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(withdrawn, ["s1", "e1", "s2", "e2"]);
    let generated: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Generate { selector, .. } => Some(selector.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(generated, ["s1", "e1"]);
    for step in &steps {
        apply(&mut state, step, now, &p);
    }
    assert!(active(&state).is_empty(), "a compromised key still signs");
    for s in ["s2", "e2"] {
        assert_eq!(state.slot(s).unwrap().state, SlotState::Retired);
    }
    for s in ["s1", "e1"] {
        assert_eq!(state.slot(s).unwrap().state, SlotState::Pending);
        assert_eq!(state.slot(s).unwrap().created, now);
    }
    settle(&mut state, now, &p, &mut dns, true, &mut log);
    assert_eq!(active(&state), ["s1", "e1"]);
}
