//! A fixed-bucket latency histogram in the Prometheus shape (cumulative `le` buckets, `_sum`,
//! `_count`), lock-free so that observing costs a few atomic adds on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: from 100 µs (an Ed25519 signature) to 30 s (a slow upstream).
pub const BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The metric's lines (`# TYPE`, buckets, sum, count) under `name` with extra `labels`
    /// (already formatted as `k="v"`, or empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BOUNDS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".into()])
            .enumerate()
        {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum{braces} {sum}\n"));
        out.push_str(&format!(
            "{name}_count{braces} {}\n",
            self.count.load(Ordering::Relaxed)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_matches() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render("x_seconds", "stage=\"a\"", &mut out);
        assert!(out.contains("x_seconds_bucket{stage=\"a\",le=\"0.0001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"a\",le=\"30\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{stage=\"a\"} 3\n"));
        assert!(out.contains("x_seconds_sum{stage=\"a\"} 60.00305\n"));
    }
}
