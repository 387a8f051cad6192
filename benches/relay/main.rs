//! `cargo bench --bench relay -- [flags]`: dkim-relay (release build, fsync on, RSA-2048 +
//! Ed25519) between a load generator and a fast sink on 127.0.0.1, or, with `--target`, any
//! other MTA (Postfix + OpenDKIM in bench/postfix-compare.sh) under the identical load.
//! Prints accepted and delivered messages/s, end-of-DATA→250 latency, the server's peak RSS
//! and CPU seconds. See bench/README.md.

mod args;
mod load;
mod postfix_tools;
mod procstat;
mod report;
mod setup;
mod sink;

use args::Args;
use procstat::{GroupWatch, Usage};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

/// The server under test: our relay (one pid) or an external MTA (maybe watched).
enum Server {
    /// Held to the end: dropping them stops the relay and removes its files.
    Relay {
        _process: setup::RelayProcess,
        _dir: tempfile::TempDir,
        metrics: std::net::SocketAddr,
    },
    External(Option<String>),
}

/// The upstream the server delivers to.
enum Upstream {
    Ours(sink::Sink),
    SmtpSink(postfix_tools::Sink),
}

async fn run(args: Args) -> Result<(), String> {
    let mut upstream = if args.postfix_tools {
        Upstream::SmtpSink(postfix_tools::start_sink(args.sink_port, args.n)?)
    } else {
        Upstream::Ours(
            sink::start(args.sink_port)
                .await
                .map_err(|e| format!("sink on port {}: {e}", args.sink_port))?,
        )
    };
    let sink_port = match &upstream {
        Upstream::Ours(s) => s.port,
        Upstream::SmtpSink(s) => s.port,
    };
    let domains = Arc::new(setup::domain_names(args.domains));
    if !args.fsync {
        eprintln!("bench: spool.fsync = false; these numbers are not the durable relay's");
    }
    let (server, target, pid) = match args.target {
        Some(target) => (Server::External(args.watch.clone()), target, None),
        None => {
            let (process, dir, metrics) = start_relay(&args, sink_port, &domains)?;
            let (addr, pid) = (process.addr, process.pid());
            (
                Server::Relay {
                    _process: process,
                    _dir: dir,
                    metrics,
                },
                addr,
                Some(pid),
            )
        }
    };
    let idle = match (args.idle, pid) {
        (0, _) | (_, None) => None,
        (k, Some(pid)) => Some(hold_idle(target, k, pid).await?),
    };

    let watch = match &server {
        Server::External(Some(text)) => Some(GroupWatch::start(text.clone())),
        _ => None,
    };
    let cpu_before = pid.and_then(procstat::cpu_seconds).unwrap_or(0.0);
    let start = Instant::now();
    let outcome = if args.postfix_tools {
        postfix_tools::run_source(
            target,
            args.n,
            args.size,
            args.concurrency,
            args.per_connection,
        )
        .await?
    } else {
        load::run(load::Plan {
            target,
            n: args.n,
            size: args.size,
            concurrency: args.concurrency,
            rate: args.rate,
            domains: domains.clone(),
            header_bomb: args.header_bomb,
            per_connection: args.per_connection,
        })
        .await
        .map_err(|e| format!("load against {target}: {e}"))?
    };
    let deadline = Duration::from_secs(args.timeout_secs);
    let (delivered_after, delivered, signatures) = match &mut upstream {
        Upstream::Ours(sink) => {
            let mut count = sink.count.clone();
            let want = outcome.accepted as u64;
            let all_in = tokio::time::timeout(deadline, count.wait_for(|&n| n >= want)).await;
            let after = matches!(all_in, Ok(Ok(_))).then(|| start.elapsed());
            let first = sink.first.lock().map(|f| f.clone()).unwrap_or(None);
            (after, *sink.count.borrow(), first)
        }
        Upstream::SmtpSink(sink) => {
            let after = sink.delivered(start, deadline).await;
            let got = if after.is_some() { args.n as u64 } else { 0 };
            (after, got, None)
        }
    };

    let usage = match (pid, watch) {
        (Some(pid), _) => Usage {
            cpu_seconds: procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu_before,
            peak_rss: procstat::status_bytes(pid, "VmHWM:").unwrap_or(0),
            processes: 1,
        },
        (None, Some(watch)) => watch.finish(),
        (None, None) => Usage::default(),
    };
    let signing = match &server {
        Server::Relay { metrics, .. } => setup::signing_cost(*metrics).map(|cost| {
            (
                if args.pkcs11 {
                    "pkcs11 (SoftHSM 2)"
                } else {
                    "file (in memory)"
                },
                cost,
            )
        }),
        Server::External(_) => None,
    };
    report::Results {
        signing,
        label: args.label.clone(),
        n: args.n,
        size: args.size,
        concurrency: args.concurrency,
        per_connection: args.per_connection,
        postfix_tools: args.postfix_tools,
        fsync: args.fsync,
        rate: args.rate,
        domains: args.domains,
        outcome,
        delivered_after,
        delivered,
        usage,
        signatures,
        idle,
    }
    .print();
    drop(server);
    drop(upstream);
    Ok(())
}

fn start_relay(
    args: &Args,
    sink_port: u16,
    domains: &[String],
) -> Result<(setup::RelayProcess, tempfile::TempDir, std::net::SocketAddr), String> {
    let dir = tempfile::Builder::new()
        .prefix("dkim-relay-bench.")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let keys_extra = match args.pkcs11 {
        true => setup::softhsm_token(dir.path())?,
        false => String::new(),
    };
    let metrics = setup::free_port()?;
    let config = setup::write_config(
        dir.path(),
        &setup::Settings {
            sink_port,
            domains,
            workers: args.workers,
            connections: args.concurrency + args.idle + 100,
            max_message_size: (args.size + 1_000_000).max(25_000_000),
            fsync: args.fsync,
            keys_extra,
            metrics,
        },
    )
    .map_err(|e| format!("config: {e}"))?;
    setup::make_keys(dir.path(), &config, domains)?;
    // Starting with 10,000 domains loads 20,000 keys; give it time.
    let deadline = Duration::from_secs(60 + domains.len() as u64 / 100);
    let process = setup::spawn(&config, &dir.path().join("relay.log"), deadline)?;
    Ok((process, dir, metrics))
}

/// Opens `k` sessions (greeting and EHLO done), reads the relay's RSS with them open, and
/// closes them. Returns (k, RSS before, RSS with them open).
async fn hold_idle(
    target: std::net::SocketAddr,
    k: usize,
    pid: u32,
) -> Result<(usize, u64, u64), String> {
    let before = procstat::status_bytes(pid, "VmRSS:").unwrap_or(0);
    let mut held = Vec::with_capacity(k);
    for i in 0..k {
        let client = load::Client::connect(target)
            .await
            .map_err(|e| format!("idle session {i}: {e}"))?;
        held.push(client);
    }
    let with = procstat::status_bytes(pid, "VmRSS:").unwrap_or(0);
    drop(held);
    Ok((k, before, with))
}
