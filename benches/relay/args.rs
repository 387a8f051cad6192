//! Command-line flags of the benchmark (`cargo bench --bench relay -- --help`).

use std::net::SocketAddr;

pub const USAGE: &str = "\
cargo bench --bench relay -- [flags]

  --n N              messages to send (default 5000; 0 = no load, e.g. with --idle)
  --size S           message size: 4KB, 25MB, 1MiB, 512 (default 4KB)
  --concurrency C    concurrent client sessions (default 20)
  --rate R           open loop: offer R messages/s in total (default: closed loop, as fast as replies come)
  --domains K        signing domains with keys, From spread over them (default 1)
  --idle K           before the load, hold K idle sessions (after EHLO) and report the relay's RSS
  --workers W        relay delivery workers and upstream pool size (default 4, the relay's default)
  --header-bomb      each message's header block is --size bytes of tiny fields (X: y), then a
                     short body: the relay must refuse it (552 5.3.4) without buffering it
  --per-connection   one message per connection (connect, EHLO, one transaction, QUIT), as cron
                     and most hosts send; the default reuses each session for message after message
  --postfix-tools    Postfix's smtp-source as the load (with --per-connection its default of one
                     message per connection, else -d) and smtp-sink as the upstream (the issue's
                     setup); no latency figures (smtp-source reports none), delivered = the
                     time smtp-sink exits after its Nth message (-M N)
  --keys K           file (default: PEM files, signed in memory) or pkcs11 (a SoftHSM 2 token made
                     in the temp dir; needs softhsm2): the signing cost per message is printed
  --no-fsync         spool.fsync = false: only to see what fsync costs (the issue's numbers are with fsync)
  --target HOST:PORT drive an external MTA (e.g. Postfix) instead of starting dkim-relay
  --sink-port P      port of the in-process sink (default: any free port; needed with --target)
  --watch TEXT       with --target: measure CPU/RSS of processes whose command line or
                     environment contains TEXT (e.g. the Postfix instance's config directory)
  --label NAME       name printed in the results (default dkim-relay, or target)
  --timeout SECS     give up waiting for delivery after this long (default 600)

Environment: BENCH_RELAY_BIN=PATH runs that dkim-relay binary instead of this build's
(e.g. a release build of the code before a change).";

#[derive(Debug, Clone)]
pub struct Args {
    pub n: usize,
    pub size: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub domains: usize,
    pub idle: usize,
    pub workers: usize,
    pub fsync: bool,
    pub header_bomb: bool,
    /// A new connection for every message.
    pub per_connection: bool,
    /// smtp-source as the load, smtp-sink as the upstream.
    pub postfix_tools: bool,
    pub target: Option<SocketAddr>,
    pub sink_port: u16,
    pub watch: Option<String>,
    pub label: String,
    pub timeout_secs: u64,
    /// Keys in PEM files (false) or in a SoftHSM token (true).
    pub pkcs11: bool,
}

impl Args {
    pub fn parse(argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            n: 5000,
            size: 4096,
            concurrency: 20,
            rate: None,
            domains: 1,
            idle: 0,
            workers: 4,
            fsync: true,
            header_bomb: false,
            per_connection: false,
            postfix_tools: false,
            target: None,
            sink_port: 0,
            watch: None,
            label: String::new(),
            timeout_secs: 600,
            pkcs11: false,
        };
        let mut argv = argv.peekable();
        while let Some(flag) = argv.next() {
            // cargo bench appends --bench to the command line of every benchmark.
            if flag == "--bench" {
                continue;
            }
            if flag == "--no-fsync" {
                args.fsync = false;
                continue;
            }
            if flag == "--header-bomb" {
                args.header_bomb = true;
                continue;
            }
            if flag == "--per-connection" {
                args.per_connection = true;
                continue;
            }
            if flag == "--postfix-tools" {
                args.postfix_tools = true;
                continue;
            }
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_string());
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--n" => args.n = value.parse().map_err(|e| bad(&e))?,
                "--size" => {
                    // The relay's own size syntax: 4KB = 4,000, 4KiB = 4,096, 25MB, 1MiB.
                    let bytes = dkim_relay::config::parse_size(&value).map_err(|e| bad(&e))?;
                    args.size = usize::try_from(bytes).map_err(|e| bad(&e.to_string()))?
                }
                "--concurrency" => args.concurrency = value.parse().map_err(|e| bad(&e))?,
                "--rate" => args.rate = Some(value.parse().map_err(|e| bad(&e))?),
                "--domains" => args.domains = value.parse().map_err(|e| bad(&e))?,
                "--idle" => args.idle = value.parse().map_err(|e| bad(&e))?,
                "--workers" => args.workers = value.parse().map_err(|e| bad(&e))?,
                "--target" => args.target = Some(value.parse().map_err(|e| bad(&e))?),
                "--sink-port" => args.sink_port = value.parse().map_err(|e| bad(&e))?,
                "--watch" => args.watch = Some(value),
                "--label" => args.label = value,
                "--timeout" => args.timeout_secs = value.parse().map_err(|e| bad(&e))?,
                "--keys" => {
                    args.pkcs11 = match value.as_str() {
                        "file" => false,
                        "pkcs11" => true,
                        _ => return Err(bad(&"use file or pkcs11")),
                    }
                }
                _ => return Err(format!("unknown flag {flag}\n\n{USAGE}")),
            }
        }
        if args.concurrency == 0 || args.domains == 0 || args.workers == 0 {
            return Err("--concurrency, --domains and --workers must be at least 1".into());
        }
        if args.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
        if args.size < 512 {
            return Err("--size must be at least 512 bytes (headers take about 300)".into());
        }
        if args.postfix_tools && (args.rate.is_some() || args.header_bomb || args.domains > 1) {
            return Err("--postfix-tools sends smtp-source's own messages: no --rate, --header-bomb or --domains".into());
        }
        if args.label.is_empty() {
            args.label = match args.target {
                Some(t) => format!("target {t}"),
                None => "dkim-relay".into(),
            };
        }
        Ok(args)
    }
}
