//! A waiting rotation in words, for `keys status`, `keys check` and `doctor`: since when
//! the new key waits, and what the hook's last run came to (from the state file).

use super::stuck_for;
use crate::keys::{DomainState, Slot, SlotState};
use crate::message::rfc5322_date;

/// "waiting for DNS since …, hook last run …, exit 1: …" for a pending key; None for
/// any other.
pub fn describe(slot: &Slot) -> Option<String> {
    if slot.state != SlotState::Pending {
        return None;
    }
    let mut out = format!("waiting for DNS since {}", rfc5322_date(slot.created));
    if let Some(run) = &slot.last_hook {
        out.push_str(&format!(
            ", hook last run {}, {}",
            rfc5322_date(run.at),
            run.result
        ));
    }
    if let Some(check) = &slot.last_dns_check {
        out.push_str(&format!(", DNS: {}", check.detail));
    }
    Some(out)
}

/// When the domain's rotation has waited longer than `stuck_after` seconds: what to tell
/// the operator, naming the key and what to do.
pub fn stuck_message(state: &DomainState, now: u64, stuck_after: u64) -> Option<String> {
    let waited = stuck_for(state, now, stuck_after)?;
    let slot = super::waiting_since(state)?;
    Some(format!(
        "rotation stuck for {} (longer than rotation.stuck_after): {} {}; fix the publish hook or DNS, then run: dkim-relay keys publish --domain {}",
        rough(waited),
        slot.selector,
        describe(slot).unwrap_or_default(),
        state.domain
    ))
}

/// A wait in its largest whole unit ("3d", "5h", "12m", "40s").
fn rough(seconds: u64) -> String {
    match seconds {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3600 => format!("{}h", s / 3600),
        s if s >= 120 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
