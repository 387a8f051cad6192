//! Failed AUTH attempts per client address. After `max` failures within `window` the
//! address gets a temporary refusal (454 4.7.0) until the oldest failure ages out, so a
//! password guesser is slowed to a few tries per window while an honest client that
//! mistyped once is not locked out for long.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct FailureLimiter {
    max: usize,
    window: Duration,
    /// Times of recent failures, oldest first, per address.
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        FailureLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the address is locked out at `now`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = map.get_mut(&ip) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.is_empty() {
            map.remove(&ip);
            return false;
        }
        times.len() >= self.max
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory under a flood of addresses: forget the whole table rather than
        // grow without limit (the per-address connection limits still apply).
        if map.len() > 100_000 {
            map.clear();
        }
        let times = map.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.max {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!limiter.blocked(ip, t0), "after {i} failures");
            limiter.record_failure(ip, t0 + Duration::from_secs(i));
        }
        assert!(limiter.blocked(ip, t0 + Duration::from_secs(10)));
        assert!(!limiter.blocked(other, t0));
        // The first failure ages out at t0+60s.
        assert!(!limiter.blocked(ip, t0 + Duration::from_secs(60)));
    }
}
