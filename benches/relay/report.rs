//! The results block: a table for people, then `key=value` lines for scripts
//! (bench/postfix-compare.sh and bench/run-all.sh read those).

use crate::load::Outcome;
use crate::procstat::Usage;
use crate::sink::FirstMessage;
use std::time::Duration;

pub struct Results {
    pub label: String,
    pub n: usize,
    pub size: usize,
    pub concurrency: usize,
    /// One message per connection (else each session sends message after message).
    pub per_connection: bool,
    /// smtp-source and smtp-sink were the load and the upstream.
    pub postfix_tools: bool,
    pub fsync: bool,
    pub rate: Option<f64>,
    pub domains: usize,
    pub outcome: Outcome,
    /// From the first connection until the sink had every accepted message.
    pub delivered_after: Option<Duration>,
    pub delivered: u64,
    pub usage: Usage,
    pub signatures: Option<FirstMessage>,
    /// Idle sessions held, RSS before and with them open.
    pub idle: Option<(usize, u64, u64)>,
    /// Keys used, and mean signing ms per message with the messages counted (from /metrics).
    pub signing: Option<(&'static str, (f64, u64))>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// The CPU model and the cores this process may run on, for the conditions line.
fn machine() -> (String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    (model, cores)
}

/// The 1-minute load average: on a shared machine, how busy the others kept it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

impl Results {
    pub fn print(&self) {
        let o = &self.outcome;
        let accepted_rate = o.accepted as f64 / o.elapsed.as_secs_f64().max(1e-9);
        let delivered_rate = self
            .delivered_after
            .map(|d| self.delivered as f64 / d.as_secs_f64().max(1e-9))
            .unwrap_or(0.0);
        let lat = &o.latencies_us;
        let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
        let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
        let offered = self
            .rate
            .map(|r| format!("{r} msg/s (open loop)"))
            .unwrap_or_else(|| "closed loop".into());
        let sigs = self
            .signatures
            .as_ref()
            .map(|f| format!("{} ({})", f.signatures, f.algorithms.join(", ")))
            .unwrap_or_else(|| "no message seen".into());
        let (cpu_model, cores) = machine();
        let mode = if self.per_connection {
            "one message per connection"
        } else {
            "messages back to back per session"
        };
        let tools = if self.postfix_tools {
            "smtp-source -> server -> smtp-sink"
        } else {
            "bench generator -> server -> bench sink"
        };
        let fsync = if self.fsync { "on" } else { "OFF" };
        let per_msg_ms = match self.delivered {
            0 => 0.0,
            n => self.usage.cpu_seconds * 1000.0 / n as f64,
        };
        let conditions = format!(
            "{cpu_model}, {cores} cores (load avg {}); {} bytes/message; signing RSA-2048 + \
             Ed25519; fsync {fsync}; {} sessions, {mode}; {tools}",
            load_average(),
            self.size,
            self.concurrency
        );
        println!("==== {} ====", self.label);
        println!("conditions  {conditions}");
        println!(
            "load        {} messages x {} bytes, {} sessions ({mode}), {} domain(s), {offered}",
            self.n, self.size, self.concurrency, self.domains
        );
        println!(
            "accepted    {} ({} refused) in {:.2} s = {accepted_rate:.1} msg/s",
            o.accepted,
            o.refused,
            o.elapsed.as_secs_f64()
        );
        match self.delivered_after {
            Some(d) => println!(
                "delivered   {} in {:.2} s = {delivered_rate:.1} msg/s",
                self.delivered,
                d.as_secs_f64()
            ),
            None => println!(
                "delivered   {} of {} before the timeout",
                self.delivered, o.accepted
            ),
        }
        if lat.is_empty() {
            println!("latency     end of DATA -> 250: not measured (smtp-source reports none)");
        } else {
            println!(
                "latency     end of DATA -> 250: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
            );
        }
        println!(
            "server      peak RSS {:.1} MiB, CPU {:.2} s = {per_msg_ms:.3} ms per delivered message ({} process(es))",
            mib(self.usage.peak_rss),
            self.usage.cpu_seconds,
            self.usage.processes
        );
        println!("signatures  on the first message at the sink: {sigs}");
        if let Some((keys, (ms, count))) = self.signing {
            println!(
                "signing     {ms:.3} ms per message (RSA + Ed25519), keys {keys}, over {count} messages (dkim_relay_signing_seconds)"
            );
        }
        if let Some(refusal) = &o.first_refusal {
            println!("refusal     {refusal}");
        }
        if let Some((k, before, with)) = self.idle {
            println!(
                "idle        {k} sessions: RSS {:.1} MiB before, {:.1} MiB with them open",
                mib(before),
                mib(with)
            );
        }
        let kv: Vec<(&str, String)> = vec![
            ("label", self.label.replace(' ', "_")),
            ("n", self.n.to_string()),
            ("size", self.size.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("per_connection", self.per_connection.to_string()),
            ("postfix_tools", self.postfix_tools.to_string()),
            ("fsync", self.fsync.to_string()),
            ("signing", "rsa-2048+ed25519".to_string()),
            ("cpu_model", cpu_model.replace(' ', "_")),
            ("cores", cores.to_string()),
            ("loadavg", load_average()),
            ("rate", self.rate.map(|r| r.to_string()).unwrap_or_default()),
            ("domains", self.domains.to_string()),
            ("accepted", o.accepted.to_string()),
            ("refused", o.refused.to_string()),
            ("delivered", self.delivered.to_string()),
            ("accepted_per_s", format!("{accepted_rate:.1}")),
            ("delivered_per_s", format!("{delivered_rate:.1}")),
            ("p50_ms", format!("{p50:.3}")),
            ("p99_ms", format!("{p99:.3}")),
            ("max_ms", format!("{max:.3}")),
            ("peak_rss_mib", format!("{:.1}", mib(self.usage.peak_rss))),
            ("cpu_s", format!("{:.2}", self.usage.cpu_seconds)),
            ("cpu_ms_per_msg", format!("{per_msg_ms:.3}")),
            (
                "dkim_signatures",
                self.signatures
                    .as_ref()
                    .map(|f| f.signatures.to_string())
                    .unwrap_or_default(),
            ),
            (
                "signing_ms",
                self.signing
                    .map(|(_, (ms, _))| format!("{ms:.3}"))
                    .unwrap_or_default(),
            ),
            (
                "idle_rss_mib",
                self.idle
                    .map(|(_, _, with)| format!("{:.1}", mib(with)))
                    .unwrap_or_default(),
            ),
        ];
        for (k, v) in kv {
            println!("bench.{k}={v}");
        }
    }
}
