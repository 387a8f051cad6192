//! The DATA deadline with a minimum data rate, after Postfix's
//! `smtpd_per_request_deadline` and `smtpd_min_data_rate`: the transfer starts with
//! `command_timeout`, and every chunk received extends the deadline by the time that
//! chunk is worth at the minimum rate, never past `data_timeout` (nor the session age).
//! A client trickling one byte a second earns 2 ms per byte at 500 B/s, so it is cut off
//! soon after `command_timeout` instead of holding a connection slot for hours.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Pace {
    deadline: Instant,
    cap: Instant,
    /// Bytes per second; 0 means the deadline is simply `cap`.
    min_rate: u64,
}

impl Pace {
    pub fn new(now: Instant, initial: Duration, cap: Instant, min_rate: u64) -> Pace {
        let deadline = if min_rate == 0 {
            cap
        } else {
            (now + initial).min(cap)
        };
        Pace {
            deadline,
            cap,
            min_rate,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// `n` more bytes arrived.
    pub fn received(&mut self, n: usize) {
        if self.min_rate == 0 {
            return;
        }
        let earned = Duration::from_secs_f64(n as f64 / self.min_rate as f64);
        self.deadline = (self.deadline + earned).min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_earns_almost_nothing_and_a_fast_sender_earns_its_time() {
        let t0 = Instant::now();
        let cap = t0 + Duration::from_secs(600);
        let mut slow = Pace::new(t0, Duration::from_secs(300), cap, 500);
        for _ in 0..300 {
            slow.received(1);
        }
        // 300 bytes at 500 B/s are worth 0.6 s.
        assert_eq!(slow.deadline(), t0 + Duration::from_millis(300_600));

        let mut fast = Pace::new(t0, Duration::from_secs(300), cap, 500);
        fast.received(100_000); // 200 s worth
        assert_eq!(fast.deadline(), t0 + Duration::from_secs(500));
        fast.received(1_000_000);
        assert_eq!(fast.deadline(), cap, "never past data_timeout");
    }

    #[test]
    fn a_zero_rate_means_only_the_overall_limit() {
        let t0 = Instant::now();
        let cap = t0 + Duration::from_secs(600);
        assert_eq!(
            Pace::new(t0, Duration::from_secs(5), cap, 0).deadline(),
            cap
        );
    }
}
