//! Failed AUTH attempts per client: an IPv4 address, or an IPv6 /64 (one host is handed a
//! whole /64, so counting single IPv6 addresses would give it 2^64 tries). After `max`
//! failures within `window` the client gets a temporary refusal (454 4.7.0) until the
//! oldest failure ages out, so a password guesser is slowed to a few tries per window
//! while an honest client that mistyped once is not locked out for long.
//!
//! An attempt counts from the moment it is begun, before its password is checked: 40
//! guesses sent in parallel see each other's attempts in flight, so at most `max` of them
//! are ever checked. An attempt that turns out right, or was never checked, is withdrawn.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The unit failures are counted in: the address itself for IPv4, its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[derive(Default)]
struct Entry {
    /// Times of recent failures, oldest first.
    failures: VecDeque<Instant>,
    /// Attempts begun and not yet settled.
    in_flight: usize,
    /// The last time this client began an attempt: the least recent are forgotten first.
    last_seen: Option<Instant>,
}

impl Entry {
    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.failures.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.failures.is_empty()
    }
}

pub struct FailureLimiter {
    max: usize,
    window: Duration,
    /// Clients remembered at most (`smtp.auth.max_tracked_clients`).
    capacity: usize,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// An attempt counted against its client until it is settled. Dropped unsettled (the
/// session went away mid-check) it counts as a failure: the password was tried.
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    key: IpAddr,
    began: Instant,
    settled: bool,
}

impl Attempt<'_> {
    /// The password was wrong (or the user unknown): it stays counted until the window
    /// passes.
    pub fn failed(mut self, now: Instant) {
        self.settle(Some(now));
    }

    /// The password was right, or it was never checked: the attempt no longer counts.
    pub fn withdraw(mut self) {
        self.settle(None);
    }

    fn settle(&mut self, failed_at: Option<Instant>) {
        self.settled = true;
        let mut table = self.limiter.lock();
        let entry = table.entry(self.key).or_default();
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if let Some(at) = failed_at {
            entry.failures.push_back(at);
            while entry.failures.len() > self.limiter.max {
                entry.failures.pop_front();
            }
        }
        if entry.idle() {
            table.remove(&self.key);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let began = self.began;
            self.settle(Some(began));
        }
    }
}

impl FailureLimiter {
    pub fn new(max: usize, window: Duration, capacity: usize) -> Self {
        FailureLimiter {
            max,
            window,
            capacity: capacity.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the client is locked out at `now` (failures plus attempts in flight).
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        let mut table = self.lock();
        let Some(entry) = table.get_mut(&key) else {
            return false;
        };
        entry.expire(now, self.window);
        let count = entry.failures.len() + entry.in_flight;
        if entry.idle() {
            table.remove(&key);
        }
        count >= self.max
    }

    /// Counts an attempt for the client before its password is checked; None when the
    /// client is locked out (failures and attempts in flight already reach `max`).
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Option<Attempt<'_>> {
        let key = client_key(ip);
        let mut table = self.lock();
        if !table.contains_key(&key) && table.len() >= self.capacity {
            self.evict(&mut table, now);
        }
        let entry = table.entry(key).or_default();
        entry.expire(now, self.window);
        if entry.failures.len() + entry.in_flight >= self.max {
            return None;
        }
        entry.in_flight += 1;
        entry.last_seen = Some(now);
        Some(Attempt {
            limiter: self,
            key,
            began: now,
            settled: false,
        })
    }

    /// Makes room for one more client: first the entries whose failures have all aged
    /// out, then, if that is not enough, the tenth of the table seen least recently.
    /// Entries with attempts in flight stay (there are at most as many as sessions).
    fn evict(&self, table: &mut HashMap<IpAddr, Entry>, now: Instant) {
        table.retain(|_, e| {
            e.expire(now, self.window);
            !e.idle()
        });
        if table.len() < self.capacity {
            return;
        }
        let mut settled: Vec<(Option<Instant>, IpAddr)> = table
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .map(|(k, e)| (e.last_seen, *k))
            .collect();
        let n = (self.capacity / 10).max(1).min(settled.len());
        if n == 0 {
            return;
        }
        settled.select_nth_unstable(n - 1);
        for (_, key) in &settled[..n] {
            table.remove(key);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_blocked_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 100);
        let (a, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!limiter.blocked(a, t0), "after {i} failures");
            let at = t0 + Duration::from_secs(i);
            limiter.begin(a, at).unwrap().failed(at);
        }
        assert!(limiter.blocked(a, t0 + Duration::from_secs(10)));
        assert!(limiter.begin(a, t0 + Duration::from_secs(10)).is_none());
        assert!(!limiter.blocked(other, t0));
        // The first failure ages out at t0+60s.
        assert!(!limiter.blocked(a, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn attempts_in_flight_count_before_their_check_so_parallel_guesses_are_bounded() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 100);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        let begun: Vec<Attempt> = (0..40).filter_map(|_| limiter.begin(a, t0)).collect();
        assert_eq!(begun.len(), 3);
        assert!(limiter.blocked(a, t0));
        // A right password (or one never checked) gives its place back...
        let mut begun = begun.into_iter();
        begun.next().unwrap().withdraw();
        assert!(!limiter.blocked(a, t0));
        let again = limiter.begin(a, t0).unwrap();
        // ...a wrong one keeps it, and so does an attempt dropped mid-check.
        begun.next().unwrap().failed(t0);
        drop(begun);
        assert!(limiter.begin(a, t0).is_none());
        again.withdraw();
        assert!(limiter.begin(a, t0).is_some());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        limiter.begin(ip("2001:db8:1:2::1"), t0).unwrap().failed(t0);
        limiter
            .begin(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t0)
            .unwrap()
            .failed(t0);
        assert!(limiter.blocked(ip("2001:db8:1:2::abcd"), t0));
        assert!(!limiter.blocked(ip("2001:db8:1:3::1"), t0));
        assert!(!limiter.blocked(ip("192.0.2.1"), t0));
    }

    #[test]
    fn a_full_table_forgets_the_clients_seen_least_recently_not_everyone() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(600), 20);
        let t0 = Instant::now();
        let client = |i: u8| IpAddr::from([198, 51, 100, i]);
        for i in 0..20u8 {
            let at = t0 + Duration::from_secs(u64::from(i));
            limiter.begin(client(i), at).unwrap().failed(at);
        }
        assert_eq!(limiter.tracked(), 20);
        // One more client: room is made by forgetting the two oldest (a tenth).
        let late = t0 + Duration::from_secs(30);
        limiter.begin(client(200), late).unwrap().failed(late);
        assert_eq!(limiter.tracked(), 19);
        assert!(!limiter.blocked(client(0), late));
        assert!(!limiter.blocked(client(1), late));
        for i in 2..20u8 {
            assert!(limiter.blocked(client(i), late), "client {i} was forgotten");
        }
        assert!(limiter.blocked(client(200), late));
    }
}
