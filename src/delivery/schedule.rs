//! The retry schedule: a pure function of the attempt count and the clock, so tests use a
//! fixed `now` instead of waiting.

use crate::config::DeliveryConfig;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub lifetime: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this Unix time.
    RetryAt(u64),
    /// The message has outlived `lifetime`: fail what is left.
    Expired,
}

impl RetryPolicy {
    pub fn from_config(delivery: &DeliveryConfig) -> RetryPolicy {
        RetryPolicy {
            initial: delivery.retry_initial.0,
            max: delivery.retry_max.0,
            lifetime: delivery.max_lifetime.0,
        }
    }

    /// Delay after the `attempts`-th failed attempt: initial, doubling, capped at max.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// What to do after a failed attempt at `now` for a message received at `received`.
    pub fn next(&self, received: u64, attempts: u32, now: u64) -> NextStep {
        let deadline = received.saturating_add(self.lifetime.as_secs());
        if now >= deadline {
            return NextStep::Expired;
        }
        // The last retry happens at the deadline rather than not at all.
        let at = now.saturating_add(self.delay(attempts).as_secs().max(1));
        NextStep::RetryAt(at.min(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(5 * 86_400),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (1..=9).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(p.delay(500).as_secs(), 3600);
    }

    #[test]
    fn retries_stop_at_the_lifetime() {
        let p = policy();
        let received = 1_000_000;
        assert_eq!(
            p.next(received, 1, received + 10),
            NextStep::RetryAt(received + 70)
        );
        let almost = received + 5 * 86_400 - 100;
        assert_eq!(
            p.next(received, 20, almost),
            NextStep::RetryAt(received + 5 * 86_400)
        );
        assert_eq!(
            p.next(received, 21, received + 5 * 86_400),
            NextStep::Expired
        );
    }
}
