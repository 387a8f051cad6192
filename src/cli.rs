//! The command line: `serve`, `config check`, `keys …`. Errors here are reported with
//! anyhow and a non-zero exit; the daemon path below `serve` has its own error types.

use crate::config::{Config, DomainConfig};
use crate::keys::{Algorithm, KeyStore, SlotState};
use crate::logging::{self, LogFormat};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
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
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read and validate the config; exit non-zero with the field and problem if it is bad.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate keys for a domain (0600 PEM files) and print the DNS records to publish.
    Generate(GenerateArgs),
    /// Print the DNS TXT records to publish for the keys in the store.
    Dns(DnsArgs),
    /// List domains, selectors and their states.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub domain: String,
    /// Comma-separated: rsa, ed25519.
    #[arg(long, default_value = "rsa", value_delimiter = ',')]
    pub algorithms: Vec<String>,
    #[arg(long, default_value_t = 2048)]
    pub rsa_bits: usize,
}

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// JSON array of {name, value} instead of zone-file lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            logging::init(cli.log_format);
            serve(config)
        }
        Command::Config(ConfigCommand::Check) => {
            let source = cli
                .config
                .as_ref()
                .map_or("the embedded defaults".to_string(), |p| {
                    p.display().to_string()
                });
            println!("{source}: OK");
            Ok(())
        }
        Command::Keys(command) => {
            logging::init(cli.log_format);
            keys(&config, command)
        }
        Command::Queue(command) => crate::control::cli::run(&config, command),
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

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let relay = crate::relay::start(config).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        relay.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// A domain's settings: the configured ones, or the defaults for a domain only in the store.
fn domain_settings(config: &Config, name: &str) -> DomainConfig {
    config
        .domain(name)
        .cloned()
        .unwrap_or_else(|| DomainConfig {
            name: name.to_string(),
            ed25519: false,
            rsa_selectors: ["s1".into(), "s2".into()],
            ed25519_selectors: ["e1".into(), "e2".into()],
        })
}

fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = KeyStore::new(&config.keys.dir);
    match command {
        KeysCommand::Generate(args) => generate(config, &store, args),
        KeysCommand::Dns(args) => dns(config, &store, args),
        KeysCommand::List(args) => list(&store, args),
    }
}

fn generate(config: &Config, store: &KeyStore, args: GenerateArgs) -> anyhow::Result<()> {
    let domain = args
        .domain
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !crate::config::is_dns_name(&domain) || !domain.contains('.') {
        bail!("\"{}\" is not a domain name", args.domain);
    }
    let settings = domain_settings(config, &domain);
    let now = crate::delivery::now_unix();
    for name in &args.algorithms {
        let algorithm = Algorithm::parse(name)
            .with_context(|| format!("unknown algorithm \"{name}\" (use rsa or ed25519)"))?;
        let pair = match algorithm {
            Algorithm::Rsa => &settings.rsa_selectors,
            Algorithm::Ed25519 => &settings.ed25519_selectors,
        };
        let state = store.load(&domain)?;
        let used = |s: &String| {
            state
                .as_ref()
                .and_then(|st| st.slot(s))
                .is_some_and(|slot| slot.state != SlotState::Retired)
        };
        let Some(selector) = pair.iter().find(|s| !used(s)) else {
            bail!(
                "{domain}: both {algorithm} slots ({} and {}) hold keys; retire one first",
                pair[0],
                pair[1]
            );
        };
        // The first key of an algorithm is active at once (nothing to rotate from); a
        // second waits as pending until rotation has seen it in DNS.
        let has_active = state.as_ref().is_some_and(|s| s.has_active(algorithm));
        let slot_state = if has_active {
            SlotState::Pending
        } else {
            SlotState::Active
        };
        let (_, record) =
            store.generate_key(&domain, selector, algorithm, args.rsa_bits, slot_state, now)?;
        println!("; {domain} {algorithm} key in selector {selector} ({slot_state:?}); publish:");
        println!("{}", record.zone_line());
    }
    Ok(())
}

fn dns(config: &Config, store: &KeyStore, args: DnsArgs) -> anyhow::Result<()> {
    let domains = match args.domain {
        Some(d) => vec![d.to_ascii_lowercase()],
        None => store.domains()?,
    };
    let _ = config;
    let mut records = Vec::new();
    for domain in &domains {
        let Some(state) = store.load(domain)? else {
            bail!("{domain}: no keys in {}", store.dir().display());
        };
        for slot in state.slots.iter().filter(|s| s.state != SlotState::Retired) {
            records.push(store.record(domain, slot)?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        for record in records {
            println!("{}", record.zone_line());
        }
    }
    Ok(())
}

fn list(store: &KeyStore, args: ListArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for domain in store.domains()? {
        if let Some(state) = store.load(&domain)? {
            rows.push(state);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<30} {:<10} {:<8} {:<10} CREATED",
        "DOMAIN", "SELECTOR", "ALG", "STATE"
    );
    for state in rows {
        for slot in &state.slots {
            println!(
                "{:<30} {:<10} {:<8} {:<10} {}",
                state.domain,
                slot.selector,
                slot.algorithm.to_string(),
                format!("{:?}", slot.state).to_lowercase(),
                crate::message::rfc5322_date(slot.created)
            );
        }
    }
    Ok(())
}
