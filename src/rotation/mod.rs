//! Scheduled dual-selector key rotation (DESIGN §6): a pure [`planner`] decides the next
//! steps from (state, now, policy); [`apply`] records them; the executor performs their
//! effects (key files, hooks, DNS lookups) under the key store lock; [`dns_watch`] keeps
//! looking the selectors in use up while the relay serves.

pub mod apply;
pub mod dns;
pub mod dns_watch;
pub mod executor;
pub mod hook;
pub mod planner;

pub use apply::{apply, record_dns_check, Transition};
pub use executor::{DomainReport, Rotator};
pub use planner::{
    free_slot, next_move, plan, rotation_due, NextMove, Policy, PublishedBecause, Step,
};
