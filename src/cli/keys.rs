//! `dkim-relay keys …`: the key store and rotation by hand. Every command takes the store
//! lock for what it changes, so it is safe next to a running relay.

use crate::config::Config;
use crate::keys::{
    Algorithm, DnsOutcome, DnsRecord, DomainState, KeyStore, Slot, SlotState, StoreLock,
};
use crate::message::rfc5322_date;
use crate::rotation::dns::DnsChecker;
use crate::rotation::{
    apply, free_slot, next_move, rotation_due, Ask, NextMove, PublishedBecause, Rotator, Step,
};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate keys in a domain's free selector slots (0600 PEM) and print the records to
    /// publish. New keys are pending until DNS serves them (or `keys activate --force`).
    Generate(GenerateArgs),
    /// Per selector: algorithm, bits, state, dates, next transition, last DNS check.
    Status(DomainArgs),
    /// The TXT records to publish now, including revocations (empty p=) of retired keys.
    Dns(DnsArgs),
    /// Look every selector up in DNS; exits non-zero when a key in use is not served.
    Check(DomainArgs),
    /// Rotate: `--due` (what the schedule says), `--now` (start one now), or `--emergency`.
    Rotate(RotateArgs),
    /// Run the publish hook again for a domain's pending keys (after fixing the hook or
    /// the DNS provider), through the running relay when there is one.
    Publish(PublishArgs),
    /// Activate pending keys without waiting for DNS (the operator vouches for DNS).
    Activate(ActivateArgs),
    /// Import keys from an OpenDKIM KeyTable and SigningTable.
    ImportOpendkim(super::keys_import::ImportArgs),
    /// Alias of status, as a table.
    List(DomainArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The From domain to make keys for.
    #[arg(long)]
    pub domain: String,
    /// Comma-separated: rsa, ed25519.
    #[arg(long, default_value = "rsa", value_delimiter = ',')]
    pub algorithms: Vec<String>,
    /// RSA key size in bits (at least 2048).
    #[arg(long, default_value_t = 2048)]
    pub rsa_bits: usize,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DomainArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DnsFormat {
    Zone,
    Json,
}

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// "zone" (zone-file lines) or "json".
    #[arg(long, value_enum, default_value = "zone")]
    pub format: DnsFormat,
    /// Same as --format json.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Do what the schedule says is due (for a cron job or Kubernetes CronJob).
    #[arg(long, conflicts_with_all = ["now", "emergency"])]
    pub due: bool,
    /// Start a rotation now even if none is due.
    #[arg(long, conflicts_with = "emergency")]
    pub now: bool,
    /// The active key is compromised: stop using it at once, retire it, make a new one.
    #[arg(long, requires = "domain")]
    pub emergency: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The domain whose pending keys to publish again.
    #[arg(long)]
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The domain whose pending keys to activate.
    #[arg(long)]
    pub domain: String,
    /// Required: activation without DNS confirmation is the operator's decision.
    #[arg(long)]
    pub force: bool,
}

pub fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = KeyStore::for_config(&config.keys);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        KeysCommand::Generate(args) => generate_cmd(config, &store, args),
        KeysCommand::Status(args) | KeysCommand::List(args) => status(config, &store, args),
        KeysCommand::Dns(args) => dns(&store, args),
        KeysCommand::Check(args) => runtime.block_on(check(config, &store, args)),
        KeysCommand::Rotate(args) => runtime.block_on(rotate(config, &store, args)),
        KeysCommand::Publish(args) => runtime.block_on(publish(config, &store, args)),
        KeysCommand::Activate(args) => activate(config, &store, args),
        KeysCommand::ImportOpendkim(args) => super::keys_import::import(&store, args),
    }
}

fn now() -> u64 {
    crate::clock::now_unix()
}

fn normalise(domain: &str) -> anyhow::Result<String> {
    Ok(crate::domain::Domain::parse(domain)?.into_string())
}

fn domains(store: &KeyStore, only: Option<&str>) -> anyhow::Result<Vec<String>> {
    match only {
        Some(d) => Ok(vec![normalise(d)?]),
        None => Ok(store.domains()?),
    }
}

/// A rotator for commands that only plan and change state (no DNS lookups).
fn planning_rotator(config: &Config) -> anyhow::Result<Rotator> {
    let offline = Config {
        rotation: crate::config::RotationConfig {
            dns_check: false,
            ..config.rotation.clone()
        },
        ..config.clone()
    };
    Rotator::new(&offline).map_err(anyhow::Error::msg)
}

fn existing(store: &KeyStore, domain: &str) -> anyhow::Result<DomainState> {
    store
        .load(domain)?
        .with_context(|| {
            format!(
                "{domain}: the key store {} has no keys for this domain (make them: dkim-relay keys generate --domain {domain})",
                store.dir().display()
            )
        })
}

fn lock(store: &KeyStore) -> anyhow::Result<StoreLock> {
    StoreLock::acquire(store.dir())
        .with_context(|| format!("key store lock in {}", store.dir().display()))
}

fn generate_cmd(config: &Config, store: &KeyStore, args: GenerateArgs) -> anyhow::Result<()> {
    let domain = normalise(&args.domain)?;
    let _lock = lock(store)?;
    let rotator = planning_rotator(config)?;
    let mut state = store
        .load(&domain)?
        .unwrap_or_else(|| DomainState::new(&domain));
    let settings = rotator.domain_settings(&domain, Some(&state));
    let policy = rotator.policy(&settings);
    let mut records = Vec::new();
    for name in &args.algorithms {
        let algorithm = Algorithm::parse(name)
            .with_context(|| format!("unknown algorithm \"{name}\" (use rsa or ed25519)"))?;
        let pair = match algorithm {
            Algorithm::Rsa => &settings.rsa_selectors,
            Algorithm::Ed25519 => &settings.ed25519_selectors,
        };
        let Some(selector) = free_slot(&state, &policy, algorithm) else {
            bail!("{domain}: both {algorithm} slots ({} and {}) hold keys in use; `keys rotate` replaces them", pair[0], pair[1]);
        };
        let key = store.new_key(&domain, &selector, algorithm, args.rsa_bits)?;
        apply(
            &mut state,
            &Step::Generate {
                algorithm,
                selector: selector.clone(),
            },
            now(),
            &policy,
        );
        key.place(&mut state, &selector);
        store.save(&state)?;
        records.push(DnsRecord::new(
            &domain,
            &selector,
            algorithm,
            &key.public_key,
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!("; new keys for {domain} are pending. Publish:");
        for r in &records {
            println!("{}", r.zone_line());
        }
        println!("; the relay activates them once DNS serves them (or run: dkim-relay keys activate --force --domain {domain})");
    }
    Ok(())
}

#[derive(Serialize)]
struct SlotStatus {
    domain: String,
    selector: String,
    algorithm: Algorithm,
    bits: Option<usize>,
    state: SlotState,
    created: u64,
    active_since: Option<u64>,
    next: String,
    next_at: Option<u64>,
    last_dns_check: Option<crate::keys::DnsCheck>,
    /// For a pending key: since when it waits and the hook's last run.
    waiting: Option<String>,
    last_hook: Option<crate::keys::HookRun>,
}

/// The planner's next move for the slot, in words, and its time.
fn next_transition(config: &Config, slot: &Slot) -> (String, Option<u64>) {
    let r = &config.rotation;
    let next = next_move(
        slot,
        r.interval.0.as_secs(),
        r.propagation_wait.0.as_secs(),
        r.dns_check,
    );
    let words = match next {
        NextMove::PublishedWhenServed => "published once DNS serves this key",
        NextMove::PublishedAt(_) => "published after the propagation wait",
        NextMove::ActivatedNextRun => "active at the next rotation check",
        NextMove::ReplacedAt(_) => "replaced by rotation",
        NextMove::RetiredAt(_) => "retired when the grace period ends",
        NextMove::Nothing => "none (revoke its record: empty p=)",
    };
    (words.into(), next.at())
}

fn rsa_bits(store: &KeyStore, domain: &str, slot: &Slot) -> Option<usize> {
    let record = store.record(domain, slot).ok()?;
    let der = crate::keys::public_key_bytes(&record)?;
    crate::keys::public_key_bits(slot.algorithm, &der)
}

fn status(config: &Config, store: &KeyStore, args: DomainArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for domain in domains(store, args.domain.as_deref())? {
        let state = existing(store, &domain)?;
        for slot in &state.slots {
            let (next, next_at) = next_transition(config, slot);
            rows.push(SlotStatus {
                domain: domain.clone(),
                selector: slot.selector.clone(),
                algorithm: slot.algorithm,
                bits: if slot.state == SlotState::Retired {
                    None
                } else {
                    rsa_bits(store, &domain, slot)
                },
                state: slot.state,
                created: slot.created,
                active_since: slot.active_since,
                next,
                next_at,
                last_dns_check: slot.last_dns_check.clone(),
                waiting: crate::rotation::waiting::describe(slot),
                last_hook: slot.last_hook.clone(),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = vec![[
        "DOMAIN",
        "SELECTOR",
        "ALG",
        "BITS",
        "STATE",
        "ACTIVE SINCE",
        "NEXT",
    ]
    .map(String::from)];
    for r in rows {
        let when = r
            .next_at
            .map(|t| format!(" at {}", rfc5322_date(t)))
            .unwrap_or_default();
        let dns = match (&r.waiting, &r.last_dns_check) {
            (Some(waiting), _) => format!(" [{waiting}]"),
            (None, Some(c)) => {
                format!(" [dns {:?} {}]", c.outcome, rfc5322_date(c.at)).to_lowercase()
            }
            (None, None) => String::new(),
        };
        table.push([
            r.domain,
            r.selector,
            r.algorithm.to_string(),
            r.bits.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            r.state.to_string(),
            r.active_since
                .map(rfc5322_date)
                .unwrap_or_else(|| "-".into()),
            format!("{}{when}{dns}", r.next),
        ]);
    }
    print!("{}", aligned(&table));
    Ok(())
}

/// Columns as wide as their widest cell (dates vary in length), two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dns(store: &KeyStore, args: DnsArgs) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for domain in domains(store, args.domain.as_deref())? {
        let state = existing(store, &domain)?;
        for slot in &state.slots {
            records.push(match slot.state {
                SlotState::Retired => DnsRecord::revoked(&domain, &slot.selector, slot.algorithm),
                _ => store.record(&domain, slot)?,
            });
        }
    }
    if args.json || args.format == DnsFormat::Json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        for record in records {
            println!("{}", record.zone_line());
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckRow {
    domain: String,
    selector: String,
    state: SlotState,
    result: &'static str,
    detail: String,
}

async fn check(config: &Config, store: &KeyStore, args: DomainArgs) -> anyhow::Result<()> {
    let checker = DnsChecker::new(config.rotation.resolver).map_err(anyhow::Error::msg)?;
    let mut rows = Vec::new();
    let mut bad = 0;
    for domain in domains(store, args.domain.as_deref())? {
        let state = existing(store, &domain)?;
        for slot in state.slots.iter().filter(|s| s.state != SlotState::Retired) {
            let record = store.record(&domain, slot)?;
            let expected = crate::keys::public_key_bytes(&record).unwrap_or_default();
            let found = checker
                .check(&record.name, slot.algorithm, &expected, now())
                .await;
            let in_use = matches!(
                slot.state,
                SlotState::Active | SlotState::Published | SlotState::Retiring
            );
            let result = match (found.outcome, slot.state) {
                (DnsOutcome::Match, _) => "match",
                (DnsOutcome::Missing, SlotState::Pending) => "not yet published",
                (DnsOutcome::Missing, _) => "missing",
                (DnsOutcome::Mismatch, _) => "mismatch",
                (DnsOutcome::Error, _) => "lookup failed",
            };
            if in_use && found.outcome != DnsOutcome::Match {
                bad += 1;
            }
            rows.push(CheckRow {
                domain: domain.clone(),
                selector: slot.selector.clone(),
                state: slot.state,
                result,
                detail: found.detail,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            println!(
                "{:<24} {:<9} {:<9} {:<18} {}",
                r.domain,
                r.selector,
                r.state.to_string(),
                r.result,
                r.detail
            );
        }
    }
    let stuck_after = config.rotation.stuck_after.0.as_secs();
    let mut stuck = 0;
    for domain in domains(store, args.domain.as_deref())? {
        let state = existing(store, &domain)?;
        if let Some(message) = crate::rotation::waiting::stuck_message(&state, now(), stuck_after) {
            stuck += 1;
            eprintln!("{domain}: {message}");
        }
    }
    match (bad, stuck) {
        (0, 0) => Ok(()),
        (0, n) => bail!("{n} domain(s) have a rotation stuck longer than rotation.stuck_after"),
        (b, 0) => bail!("{b} selector(s) in use are not served correctly by DNS"),
        (b, n) => bail!("{b} selector(s) in use are not served correctly by DNS, and {n} domain(s) have a rotation stuck longer than rotation.stuck_after"),
    }
}

/// `keys publish`: the publish hook again, now, for the domain's pending keys.
async fn publish(config: &Config, store: &KeyStore, args: PublishArgs) -> anyhow::Result<()> {
    let domain = normalise(&args.domain)?;
    if config.rotation.publish_hook.is_none() {
        bail!("rotation.publish_hook is not set: publish the records yourself (dkim-relay keys dns --domain {domain})");
    }
    let state = existing(store, &domain)?;
    if !state.slots.iter().any(|s| s.state == SlotState::Pending) {
        bail!("{domain}: no pending key to publish (keys status shows each key's state)");
    }
    for line in run_now(config, &domain, Ask::Publish).await? {
        println!("{line}");
    }
    Ok(())
}

/// Runs the domain's rotation now: in the running relay (through its control socket) when
/// one runs, so its signing keys follow at once, else here.
async fn run_now(config: &Config, domain: &str, ask: Ask) -> anyhow::Result<Vec<String>> {
    if let Some(lines) = crate::control::cli::rotate_on_relay(config, domain, ask)? {
        return Ok(lines);
    }
    let rotator = Rotator::new(config).map_err(anyhow::Error::msg)?;
    let report = rotator
        .run(domain, now(), ask)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(report.lines(domain))
}

async fn rotate(config: &Config, store: &KeyStore, args: RotateArgs) -> anyhow::Result<()> {
    if args.emergency {
        let domain = normalise(args.domain.as_deref().unwrap_or_default())?;
        emergency(config, store, &domain)?;
        if config.rotation.publish_hook.is_some() {
            // Publish the new keys and revoke the old ones through the hook at once, in the
            // running relay (which then stops signing with the old keys) or here.
            println!("; the publish hook runs now:");
            for line in run_now(config, &domain, Ask::Schedule).await? {
                println!("{line}");
            }
        } else {
            // Still have a running relay drop the deleted keys from memory now.
            if let Err(e) = crate::control::cli::rotate_on_relay(config, &domain, Ask::Schedule) {
                eprintln!("; the running relay was not told ({e}); it reloads the key store within a minute");
            }
        }
        return Ok(());
    }
    if !args.due && !args.now {
        bail!("say --due (what the schedule says), --now, or --emergency");
    }
    let rotator = Rotator::new(config).map_err(anyhow::Error::msg)?;
    let targets = match &args.domain {
        Some(d) => vec![normalise(d)?],
        None => rotator.domains(),
    };
    let mut out = Vec::new();
    for domain in targets {
        let report = rotator
            .run_domain(&domain, now(), args.now)
            .await
            .map_err(anyhow::Error::msg)?;
        for t in &report.transitions {
            out.push(serde_json::json!({"domain": domain, "selector": t.selector, "from": t.from, "to": t.to, "reason": t.reason}));
        }
        if !args.json {
            for line in report.lines(&domain) {
                println!("{line}");
            }
        }
        if report.transitions.is_empty()
            && report.waiting.is_empty()
            && report.hooks.is_empty()
            && !args.json
        {
            let due = store.load(&domain)?.is_some_and(|s| {
                rotation_due(
                    &s,
                    now(),
                    &rotator.policy(&rotator.domain_settings(&domain, Some(&s))),
                )
            });
            println!(
                "{domain}: nothing to do{}",
                if due {
                    " (due, but the other slot is still in its grace period)"
                } else {
                    ""
                }
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// A compromised key: stop signing with it now, delete it, and make new pending keys.
fn emergency(config: &Config, store: &KeyStore, domain: &str) -> anyhow::Result<()> {
    let _lock = lock(store)?;
    let mut state = existing(store, domain)?;
    let rotator = planning_rotator(config)?;
    let settings = rotator.domain_settings(domain, Some(&state));
    let policy = rotator.policy(&settings);
    // What goes and what comes is the planner's answer; this carries it out.
    let steps = crate::rotation::planner::emergency(&state, &policy);
    let mut revoke = Vec::new();
    for step in &steps {
        if let Step::Withdraw { selector } = step {
            if let Some(slot) = state.slots.iter().find(|s| &s.selector == selector) {
                revoke.push(DnsRecord::revoked(domain, selector, slot.algorithm));
            }
            apply(&mut state, step, now(), &policy);
        }
    }
    store.save(&state)?;
    for slot in &state.slots {
        store.remove_key_file(domain, slot)?;
    }
    let mut publish = Vec::new();
    for step in &steps {
        if let Step::Generate {
            algorithm,
            selector,
        } = step
        {
            let key = store.new_key(domain, selector, *algorithm, 2048)?;
            apply(&mut state, step, now(), &policy);
            key.place(&mut state, selector);
            publish.push(DnsRecord::new(
                domain,
                selector,
                *algorithm,
                &key.public_key,
            ));
        }
    }
    store.save(&state)?;
    tracing::warn!(
        domain,
        "emergency rotation: every key retired and deleted; new keys pending"
    );
    println!("; {domain}: the old keys are deleted and no longer sign. Mail for {domain} waits until a new key is active.");
    println!("; 1. Revoke the compromised records now (empty p=):");
    for r in &revoke {
        println!("{}", r.zone_line());
    }
    println!(
        "; 2. Publish the new keys (where a name appears in both lists, publish only this one):"
    );
    for r in &publish {
        println!("{}", r.zone_line());
    }
    println!("; 3. The relay activates them once DNS serves them, or now with: dkim-relay keys activate --force --domain {domain}");
    Ok(())
}

fn activate(config: &Config, store: &KeyStore, args: ActivateArgs) -> anyhow::Result<()> {
    if !args.force {
        bail!("activation before DNS confirms the key is the operator's call: add --force");
    }
    let domain = normalise(&args.domain)?;
    let _lock = lock(store)?;
    let mut state = existing(store, &domain)?;
    let rotator = planning_rotator(config)?;
    let policy = rotator.policy(&rotator.domain_settings(&domain, Some(&state)));
    let incoming: Vec<String> = state
        .slots
        .iter()
        .filter(|s| matches!(s.state, SlotState::Pending | SlotState::Published))
        .map(|s| s.selector.clone())
        .collect();
    if incoming.is_empty() {
        bail!("{domain}: no pending key to activate");
    }
    let t = now();
    let mut transitions = Vec::new();
    for selector in &incoming {
        transitions.extend(apply(
            &mut state,
            &Step::MarkPublished {
                selector: selector.clone(),
                because: PublishedBecause::Forced,
            },
            t,
            &policy,
        ));
    }
    transitions.extend(apply(
        &mut state,
        &Step::Activate {
            selectors: incoming,
        },
        t,
        &policy,
    ));
    store.save(&state)?;
    for tr in transitions {
        tracing::warn!(domain = %domain, selector = %tr.selector, to = %tr.to, reason = %tr.reason, "key activated by the operator");
        println!(
            "{domain} {}: -> {} (forced)",
            tr.selector,
            format!("{:?}", tr.to).to_lowercase()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_columns_line_up_whatever_the_date_length() {
        let row = |a: &str, b: &str, c: &str| [a, b, c].map(String::from);
        let table = [
            row("DOMAIN", "ACTIVE SINCE", "NEXT"),
            row(
                "example.net",
                "Wed, 25 Nov 2026 17:57:48 +0000",
                "replaced later",
            ),
            row("a.example", "-", "x"),
        ];
        let text = super::aligned(&table);
        let starts: Vec<usize> = text.lines().map(|l| l.rfind("  ").unwrap() + 2).collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
