//! `dkim-relay dmarc import` and `dmarc report`: DMARC aggregate reports into the store,
//! and what they say per domain.

use crate::config::Config;
use crate::dmarc::store::Outcome;
use crate::dmarc::summary::{self, Ours};
use crate::dmarc::{unpack, Limits, Store};
use crate::keys::KeyStore;
use crate::message::rfc5322_date;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum DmarcCommand {
    /// Store the aggregate reports in each PATH: .xml, .xml.gz, .zip, a report mail
    /// (.eml), an mbox, a Maildir, or - for standard input (fetchmail's or procmail's pipe).
    /// Each report is stored once; exit 1 when any input was refused.
    Import(ImportArgs),
    /// Per domain over the last days: volume, DKIM/SPF alignment and DMARC pass rates,
    /// sources (failing first), DKIM selectors and what receivers did.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files, folders (Maildir), or - for standard input.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The period: reports whose period ends in the last N days.
    #[arg(long, default_value_t = 14)]
    pub days: u64,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Look up the reverse name (PTR) of each source, at most 2 seconds each.
    #[arg(long)]
    pub resolve: bool,
    /// Judge as if it were this Unix time (tests and docs).
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

pub fn run(config: &Config, command: DmarcCommand) -> anyhow::Result<()> {
    match command {
        DmarcCommand::Import(args) => import(config, args),
        DmarcCommand::Report(args) => report(config, args),
    }
}

fn day(unix: u64) -> String {
    // "Sat, 28 Nov 2026 00:00:00 +0000" → "28 Nov 2026".
    let full = rfc5322_date(unix);
    full.split_whitespace()
        .skip(1)
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn import(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let store = Store::of(config);
    let limits = Limits::default();
    let now = crate::clock::now_unix();
    let (mut added, mut duplicates, mut refused) = (0, 0, 0);
    for path in &args.paths {
        for found in unpack::read_path(path, &limits) {
            let report = match found.result {
                Ok(r) => r,
                Err(e) => {
                    refused += 1;
                    eprintln!("refused: {}: {e}", found.label);
                    continue;
                }
            };
            let messages: u64 = report.records.iter().map(|r| r.count).sum();
            let what = format!(
                "{} report {} for {} ({} to {}, {} record(s), {} message(s))",
                report.org_name,
                report.report_id,
                report.policy.domain,
                day(report.begin),
                day(report.end),
                report.records.len(),
                summary::thousands(messages)
            );
            match store.add(&report, now, &limits) {
                Ok(Outcome::Added) => {
                    added += 1;
                    println!("stored: {what} from {}", found.label);
                }
                Ok(Outcome::Duplicate) => {
                    duplicates += 1;
                    println!("already stored: {what} from {}", found.label);
                }
                Err(e) => {
                    refused += 1;
                    eprintln!("not stored: {what} from {}: {e}", found.label);
                }
            }
        }
    }
    println!(
        "{added} report(s) stored, {duplicates} already stored, {refused} refused, in {}",
        store.dir().display()
    );
    if refused > 0 {
        return Err(super::Exit {
            status: 1,
            message: format!("{refused} input(s) refused"),
        }
        .into());
    }
    Ok(())
}

fn report(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    let store = Store::of(config);
    let (reports, problems) = store.load_all();
    for p in &problems {
        eprintln!("skipped an unreadable stored report: {p}");
    }
    let only = match &args.domain {
        Some(d) => Some(
            crate::domain::Domain::parse(d)
                .map_err(|e| super::Exit::usage(e.0))?
                .into_string(),
        ),
        None => None,
    };
    let now = args.now.unwrap_or_else(crate::clock::now_unix);
    let since = now.saturating_sub(args.days.saturating_mul(86_400));
    let ours = Ours::of(config, &KeyStore::new(&config.keys.dir));
    let mut summaries =
        summary::summarise(&reports, since, only.as_deref(), &ours, &HashMap::new());
    if args.resolve {
        let ips: Vec<String> = summaries
            .iter()
            .flat_map(|d| d.sources.iter().map(|s| s.ip.clone()))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        match runtime.block_on(crate::dmarc::reverse::names(config.rotation.resolver, &ips)) {
            Ok(names) => {
                summaries = summary::summarise(&reports, since, only.as_deref(), &ours, &names)
            }
            Err(e) => eprintln!("reverse names not looked up: {e}"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        print!("{}", summary::text(&summaries, args.days));
    }
    Ok(())
}
