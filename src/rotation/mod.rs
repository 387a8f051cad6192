//! Scheduled dual-selector key rotation (DESIGN §6): a pure [`planner`] decides the next
//! steps from (state, now, policy); [`apply`] records them; the executor performs their
//! effects (key files, hooks, DNS lookups), taking the key store lock only to read and
//! record state, never while a hook or a lookup runs; [`dns_watch`] keeps looking the
//! selectors in use up while the relay serves.

pub mod apply;
pub mod dns;
pub mod dns_watch;
pub mod executor;
pub mod hook;
pub mod planner;
pub mod trigger;
pub mod waiting;

pub use apply::{apply, record_dns_check, record_hook_run, Transition};
pub use executor::{DomainReport, HookReport, KeySwap, Rotator};
pub use planner::{
    free_slot, next_move, plan, rotation_due, stuck_for, waiting_since, Ask, HookBecause, NextMove,
    Policy, PublishedBecause, Step,
};
