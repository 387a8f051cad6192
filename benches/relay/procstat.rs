//! CPU time and memory of the process(es) under test, from /proc.
//!
//! For dkim-relay (one process) the kernel's own counters are exact: VmHWM is the peak
//! RSS, utime+stime the CPU time. For Postfix + OpenDKIM (many processes that come and go)
//! a sampler thread adds up the processes whose command line or environment names the
//! throwaway instance; a process that exits between two samples loses its last 100 ms.
//! Their memory is the peak of the summed PSS (shared pages split between processes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_sec())
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    kb_field(pid, "status", field)
}

/// A `kB` field of a /proc/PID file, in bytes.
fn kb_field(pid: u32, file: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What was used between [`GroupWatch::start`] and [`GroupWatch::finish`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Peak RSS (one process) or peak summed PSS (a group).
    pub peak_rss: u64,
    pub processes: usize,
}

/// Samples every process matching a text until finished.
pub struct GroupWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Usage>,
}

#[derive(Default)]
struct Seen {
    /// CPU seconds at the first sample (0 for processes born during the run) and at the last.
    first_cpu: f64,
    last_cpu: f64,
}

impl GroupWatch {
    pub fn start(text: String) -> GroupWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<u32, Seen> = HashMap::new();
            let mut peak_rss = 0;
            let mut first_round = true;
            loop {
                let mut rss = 0;
                for pid in matching_pids(&text) {
                    let Some(cpu) = cpu_seconds(pid) else {
                        continue;
                    };
                    // Proportional set size: shared libraries and Postfix's shared
                    // pages counted once over all processes, not once per process.
                    rss += kb_field(pid, "smaps_rollup", "Pss:").unwrap_or(0);
                    let entry = seen.entry(pid).or_insert_with(|| Seen {
                        first_cpu: if first_round { cpu } else { 0.0 },
                        last_cpu: 0.0,
                    });
                    entry.last_cpu = cpu;
                }
                peak_rss = peak_rss.max(rss);
                first_round = false;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            Usage {
                cpu_seconds: seen.values().map(|s| s.last_cpu - s.first_cpu).sum(),
                peak_rss,
                processes: seen.len(),
            }
        });
        GroupWatch { stop, thread }
    }

    pub fn finish(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn matching_pids(text: &str) -> Vec<u32> {
    // The bench and the cargo and shell processes that started it name the text in their
    // arguments; they are not the server.
    let mine = ancestry();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !mine.contains(pid))
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|file| {
                std::fs::read(format!("/proc/{pid}/{file}"))
                    .is_ok_and(|bytes| contains(&bytes, text.as_bytes()))
            })
        })
        .collect()
}

/// This process and its ancestors.
fn ancestry() -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    while let Some(parent) = parent_of(*pids.last().unwrap_or(&1)) {
        if parent <= 1 || pids.contains(&parent) {
            break;
        }
        pids.push(parent);
    }
    pids
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
