//! The wall clock, in one place. Schedules (retry, expiry, rotation) are functions of a
//! `now` they are given; this is where the running relay and the CLI get that `now`.

use std::time::SystemTime;

/// Unix seconds now (0 for a clock set before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
