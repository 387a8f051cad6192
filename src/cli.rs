//! The command line: `serve`, `config check`, `keys …`. Errors here are reported with
//! anyhow and a non-zero exit; the daemon path below `serve` has its own error types.

mod dmarc;
mod keys;
mod keys_import;
mod upstream_check;

use crate::config::Config;
use crate::logging::{self, LogFormat};
use anyhow::Context;
use clap::{Parser, Subcommand};
use keys::KeysCommand;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "dkim-relay",
    version,
    about = "Outbound SMTP relay that DKIM-signs mail for the domain of its From header"
)]
pub struct Cli {
    /// Config file (TOML). Without it, the embedded laptop defaults are used.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: SMTP in, spool, DKIM signing, delivery.
    Serve,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Key store commands.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Queue commands; safe while the relay runs (they go through its control socket).
    #[command(subcommand)]
    Queue(crate::control::cli::QueueCommand),
    /// Inbound AUTH commands.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Check DNS for each signing domain: SPF authorises the upstream, DKIM serves the key
    /// store's keys, DMARC has a policy. Exit 0 without errors, 1 with errors, 2 when the
    /// config or arguments are bad.
    Doctor(DoctorArgs),
    /// Upstream commands.
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// DMARC aggregate reports: import them, and what they say about each domain.
    #[command(subcommand)]
    Dmarc(dmarc::DmarcCommand),
    /// Ask the running relay's health endpoint (for container HEALTHCHECKs); exit 0 if
    /// it answers 200. Uses `[metrics] listen` from the config.
    Health {
        /// "healthz" (the process answers) or "readyz" (it can do its job).
        #[arg(long, default_value = "healthz")]
        check: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Judge as if it were this Unix time (tests and docs).
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

/// The error and its causes on one line, each said once: an error whose message already
/// ends with its cause's text (thiserror's `{source}`) does not repeat it.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// An error that carries its own exit status; other errors exit 1. `doctor` exits 2 for
/// a bad config or argument (like clap's usage errors) and 1 when it found errors.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub status: u8,
    pub message: String,
}

impl Exit {
    fn usage(e: impl std::fmt::Display) -> anyhow::Error {
        Exit {
            status: 2,
            message: e.to_string(),
        }
        .into()
    }
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a password from the first line of stdin; print its argon2id hash for the
    /// `password_hash` of a user in `smtp.auth.users_file`.
    HashPassword,
}

#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Connect to each upstream as delivery would and say what works: reachable, TLS and
    /// certificate, EHLO capabilities, AUTH, and what the relay will do. Sends no mail
    /// unless --send-to. Exit 0 when every upstream is usable, 1 otherwise.
    Check(upstream_check::UpstreamCheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read and validate the config; exit non-zero with the field and problem if it is bad.
    Check,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) if matches!(cli.command, Command::Doctor(_) | Command::Upstream(_)) => {
            return Err(Exit::usage(format!("{e:#}")))
        }
        Err(e) => return Err(e),
    };
    match cli.command {
        Command::Serve => {
            logging::init(cli.log_format);
            serve(config, cli.config)
        }
        Command::Health { check } => health(&config, &check),
        Command::Doctor(args) => doctor(&config, args),
        Command::Config(ConfigCommand::Check) => {
            crate::relay::preflight(&config)?;
            let source = cli
                .config
                .as_ref()
                .map_or("the embedded defaults".to_string(), |p| {
                    p.display().to_string()
                });
            for upstream in config.upstream_list() {
                println!("{}", upstream.profile_choice().explain(&upstream));
            }
            println!("{source}: OK");
            Ok(())
        }
        Command::Upstream(UpstreamCommand::Check(args)) => upstream_check::run(&config, args),
        Command::Keys(command) => {
            logging::init(cli.log_format);
            keys::run(&config, command)
        }
        Command::Queue(command) => crate::control::cli::run(&config, command),
        Command::Dmarc(command) => dmarc::run(&config, command),
        Command::Auth(AuthCommand::HashPassword) => hash_password(),
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::from_file(path).with_context(|| format!("config {}", path.display())),
        None => {
            let mut config = Config::default();
            config.validate().context("embedded defaults")?;
            Ok(config)
        }
    }
}

fn serve(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut relay = crate::relay::start(config).await?;
        relay.log_summary(config_path.as_deref());
        if let Err(e) = relay.watch(config_path) {
            // Without events the relay still works; changes need a restart.
            tracing::warn!(error = %e, "hot reload is off");
        }
        // Handlers first: a signal right after READY=1 must not meet the default action.
        let signals = StopSignals::install();
        crate::systemd::notify_ready();
        signals.wait(&relay).await;
        tracing::info!("shutting down");
        relay.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGTERM and SIGINT stop the relay; SIGHUP re-reads the config and the key store.
struct StopSignals(Option<[tokio::signal::unix::Signal; 3]>);

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => StopSignals(Some([term, int, hup])),
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                StopSignals(None)
            }
        }
    }

    async fn wait(self, relay: &crate::relay::RelayHandle) {
        let Some([mut term, mut int, mut hup]) = self.0 else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: re-reading the config file and the key store");
                    relay.reload();
                }
            }
        }
    }
}

/// Reads one line from stdin (not echoed back, never logged) and prints its hash.
fn hash_password() -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("empty password on stdin");
    }
    println!("{}", crate::auth::hash_password(password.as_bytes())?);
    Ok(())
}

/// Looks the domains up, prints the report, and turns errors found into exit status 1.
fn doctor(config: &Config, args: DoctorArgs) -> anyhow::Result<()> {
    use crate::doctor::DoctorError;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let now = args.now.unwrap_or_else(crate::clock::now_unix);
    let report = match runtime.block_on(crate::doctor::run(config, args.domain.as_deref(), now)) {
        Ok(report) => report,
        Err(e @ (DoctorError::BadDomain(_) | DoctorError::Resolver(_))) => {
            return Err(Exit::usage(e))
        }
        Err(e @ DoctorError::Store(_)) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.errors > 0 {
        return Err(Exit {
            status: 1,
            message: format!("{} error(s) in DNS", report.errors),
        }
        .into());
    }
    Ok(())
}

/// One GET to the health listener with a short timeout; Ok only for 200.
fn health(config: &Config, check: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    if !matches!(check, "healthz" | "readyz") {
        anyhow::bail!("--check is healthz or readyz");
    }
    let mut addr = config
        .metrics
        .listen
        .context("no [metrics] listen address in the config: nothing to ask")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET /{check} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    print!("{body}");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        anyhow::bail!("{check}: {status}")
    }
}
