//! The wall clock, in one place. Schedules (retry, expiry, rotation) are functions of a
//! `now` they are given; this is where the running relay and the CLI get that `now`.
//!
//! The queue runner takes its `now` from a [`Clock`] it is given rather than from here,
//! so its schedule can run on tokio's clock: under `tokio::time::pause` a test goes
//! through days of retries and an expiry in milliseconds, with no sleeps and no spool
//! files faked to look old.

use std::time::SystemTime;

/// Unix seconds now (0 for a clock set before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a running stage reads the time.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system's wall clock: what the relay runs on.
    #[default]
    System,
    /// Unix time that was `base` at `since` and moves as tokio's clock moves: paused and
    /// advanced with it in tests.
    Tokio {
        base: u64,
        since: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock on tokio's time that reads `base` now.
    pub fn tokio_from(base: u64) -> Clock {
        Clock::Tokio {
            base,
            since: tokio::time::Instant::now(),
        }
    }

    pub fn now_unix(&self) -> u64 {
        match self {
            Clock::System => now_unix(),
            Clock::Tokio { base, since } => base.saturating_add(since.elapsed().as_secs()),
        }
    }
}
