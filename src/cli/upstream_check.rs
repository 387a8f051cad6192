//! `dkim-relay upstream check`: opens a session with each configured upstream the way
//! delivery does (`Upstream::check`), and says in plain words what it found and what the
//! relay will therefore do. Sends mail only with `--send-to`. Exit 0 when every upstream
//! checked is usable, 1 otherwise, 2 for a bad argument.

use super::Exit;
use crate::config::{Config, UpstreamConfig};
use crate::delivery::{CheckReport, SigningProfile, TestSend, Upstream};
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct UpstreamCheckArgs {
    /// Only the upstream of this name.
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Send one signed test message to this address through each upstream checked.
    #[arg(long, value_name = "ADDR")]
    pub send_to: Option<String>,
}

/// One upstream's check and the relay's plan for it.
#[derive(Debug, serde::Serialize)]
struct Entry {
    #[serde(flatten)]
    report: CheckReport,
    plan: Plan,
    /// Things that work but are worth changing.
    warnings: Vec<String>,
}

/// What the relay does with mail for this upstream.
#[derive(Debug, serde::Serialize)]
struct Plan {
    profile: &'static str,
    /// Why this profile (provider recognised, or set).
    profile_reason: String,
    /// (From domain, signatures per message).
    signatures: Vec<(String, usize)>,
    eight_bit: String,
    smtputf8: String,
    pipelining: Option<bool>,
}

pub fn run(config: &Config, args: UpstreamCheckArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut list = config.upstream_list();
    if list.is_empty() {
        return Err(Exit {
            status: 1,
            message: "no upstream is configured: signed mail is written to delivery.outbox_dir; nothing to check".into(),
        }
        .into());
    }
    if let Some(name) = &args.upstream {
        list.retain(|u| &u.name == name);
        if list.is_empty() {
            let names: Vec<String> = config.upstream_list().into_iter().map(|u| u.name).collect();
            return Err(Exit::usage(format!(
                "no upstream is named \"{name}\" (configured: {})",
                names.join(", ")
            )));
        }
    }
    if let Some(to) = &args.send_to {
        crate::message::Mailbox::parse(to)
            .map_err(|e| Exit::usage(format!("--send-to {to}: {e}")))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut entries = Vec::new();
    for cfg in &list {
        entries.push(runtime.block_on(check_one(config, cfg, args.send_to.as_deref()))?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for entry in &entries {
            print!("{}", text(entry));
        }
    }
    let bad = entries.iter().filter(|e| !usable(&e.report)).count();
    if bad > 0 {
        return Err(Exit {
            status: 1,
            message: format!("{bad} of {} upstream(s) not usable", entries.len()),
        }
        .into());
    }
    Ok(())
}

fn usable(r: &CheckReport) -> bool {
    r.usable && r.test_delivered != Some(false)
}

async fn check_one(
    config: &Config,
    cfg: &UpstreamConfig,
    send_to: Option<&str>,
) -> anyhow::Result<Entry> {
    let upstream = Upstream::new(cfg, &config.hostname)
        .map_err(|e| anyhow::anyhow!("upstream {}: {e}", cfg.name))?;
    let test = match send_to {
        Some(to) => Some(test_message(config, &upstream, to)?),
        None => None,
    };
    let report = upstream.check(test.as_ref()).await;
    let plan = plan(config, cfg, &report);
    let warnings = warnings(config, &report);
    Ok(Entry {
        report,
        plan,
        warnings,
    })
}

fn plan(config: &Config, cfg: &UpstreamConfig, report: &CheckReport) -> Plan {
    let choice = cfg.profile_choice();
    let signatures = config
        .domains
        .iter()
        .filter(|d| {
            config
                .upstreams_for_domain(&d.name)
                .iter()
                .any(|u| u.name == cfg.name)
        })
        .map(|d| {
            let n = crate::config::providers::signature_count(
                d,
                choice.profile,
                config.rotation.signing,
            );
            (d.name.clone(), n)
        })
        .collect();
    let caps = report.seen.ehlo.as_ref();
    let eight_bit = match caps.map(|c| c.eight_bit_mime) {
        Some(true) if config.smtp.upstream_8bitmime => "8-bit messages are sent as they are, with BODY=8BITMIME".to_string(),
        Some(true) => "8-bit parts are converted to quoted-printable before signing (smtp.upstream_8bitmime = false)".to_string(),
        Some(false) => "the upstream does not offer 8BITMIME: 8-bit parts are converted to quoted-printable before signing".to_string(),
        None => "unknown: EHLO was not reached".to_string(),
    };
    let offered = match caps.map(|c| c.smtputf8) {
        Some(true) => "the upstream offers SMTPUTF8: UTF-8 mail goes as it is",
        Some(false) => "the upstream does not offer SMTPUTF8: UTF-8 header values go as RFC 2047 encoded-words; mail to or from a UTF-8 address bounces",
        None => "EHLO was not reached",
    };
    Plan {
        profile: choice.profile.name(),
        profile_reason: choice.explain(cfg),
        signatures,
        eight_bit,
        smtputf8: offered.to_string(),
        pipelining: caps.map(|c| c.pipelining),
    }
}

fn warnings(config: &Config, report: &CheckReport) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Some(limit)) = report.seen.ehlo.as_ref().map(|c| c.size) {
        let ours = config.smtp.max_message_size.0;
        if limit > 0 && (limit as u64) < ours {
            out.push(format!("the upstream takes messages up to {limit} bytes, smtp.max_message_size accepts {ours}: larger messages would be accepted and then bounced; lower smtp.max_message_size to {limit}"));
        }
    }
    if let Some(cert) = &report.seen.certificate {
        if report.usable && cert.expires_in_days < 14 {
            out.push(format!(
                "the upstream's certificate expires in {} days ({})",
                cert.expires_in_days, cert.not_after
            ));
        }
    }
    let offers_auth = report
        .seen
        .ehlo
        .as_ref()
        .is_some_and(|c| !c.auth.is_empty());
    if report.usable && report.seen.auth_ok.is_none() && offers_auth {
        out.push("no credentials are configured and the upstream offers AUTH: if it refuses MAIL with 530, set username and password_file".into());
    }
    out
}

/// A short signed message from the first configured domain whose mail goes to this
/// upstream, signed with the upstream's profile as delivery signs it.
fn test_message(config: &Config, upstream: &Upstream, to: &str) -> anyhow::Result<TestSend> {
    let name = upstream.name();
    let domain = config
        .domains
        .iter()
        .find(|d| {
            config
                .upstreams_for_domain(&d.name)
                .iter()
                .any(|u| u.name == name)
        })
        .or(config.domains.first())
        .context("no [[domains]] configured: a test message needs a domain to sign for")?;
    let store = crate::keys::KeyStore::for_config(&config.keys);
    let ring = crate::dkim::KeyRing::load(&store, config);
    let keys = match ring.lookup(&domain.name) {
        crate::dkim::KeyLookup::Ready(keys) => keys,
        crate::dkim::KeyLookup::Unusable(reason) => {
            anyhow::bail!("cannot sign a test message for {}: {reason}", domain.name)
        }
        crate::dkim::KeyLookup::Unknown => {
            anyhow::bail!(
                "no keys for {} in {}",
                domain.name,
                config.keys.dir.display()
            )
        }
    };
    let now = crate::clock::now_unix();
    let id = crate::spool::QueueId::generate(std::time::SystemTime::now());
    let from = format!("postmaster@{}", domain.name);
    let message = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: dkim-relay upstream check ({name})\r\nDate: {}\r\nMessage-ID: <{id}.check@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nA test message from `dkim-relay upstream check` on {}, through the\r\nupstream \"{name}\", signed for {} as delivery signs it.\r\n",
        crate::message::rfc5322_date(now),
        config.hostname,
        config.hostname,
        domain.name,
    );
    let profile: &SigningProfile = upstream.profile();
    let leave_out: Vec<&str> = profile.leave_out.iter().map(String::as_str).collect();
    let signatures = crate::dkim::sign(&keys, message.as_bytes(), &leave_out, profile.rsa_only)
        .map_err(|e| anyhow::anyhow!("cannot sign the test message: {e}"))?;
    let headers: String = signatures.iter().map(|s| s.header.as_str()).collect();
    let envelope = crate::spool::Envelope {
        id,
        received: now,
        client: std::net::IpAddr::from([127, 0, 0, 1]),
        helo: config.hostname.clone(),
        mail_from: from,
        rcpts: vec![to.to_string()],
        from_domain: domain.name.clone(),
        size: message.len() as u64,
        eight_bit: false,
        origin: crate::spool::Origin::Client,
        utf8: Default::default(),
    };
    Ok(TestSend {
        envelope,
        parts: vec![headers.into_bytes(), message.into_bytes()],
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn text(e: &Entry) -> String {
    let r = &e.report;
    let s = &r.seen;
    let mut out = format!(
        "upstream \"{}\" {}:{} (tls = \"{}\")\n",
        r.name, r.host, r.port, r.tls
    );
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<12} {value}\n"));
    match (&s.address, s.connect_ms) {
        (Some(addr), Some(ms)) => line("reachable", format!("yes, {addr} in {ms} ms")),
        _ => line("reachable", "no".into()),
    }
    if let Some(g) = &s.greeting {
        line("greeting", g.clone());
    }
    if let Some(offered) = s.starttls_offered {
        line(
            "STARTTLS",
            if offered {
                "offered".into()
            } else {
                "NOT offered".into()
            },
        );
    }
    if let Some(v) = &s.tls_version {
        line(
            "TLS",
            format!("{v}, {}", s.cipher.as_deref().unwrap_or("cipher unknown")),
        );
    }
    if let Some(c) = &s.certificate {
        let verifies = if r.usable || r.phase.is_some_and(|p| p != "TLS") {
            "yes".to_string()
        } else {
            "NO".to_string()
        };
        line("certificate", format!("subject {}", c.subject));
        line("", format!("issuer {}", c.issuer));
        line(
            "",
            format!(
                "names {}",
                if c.names.is_empty() {
                    "(none)".to_string()
                } else {
                    c.names.join(", ")
                }
            ),
        );
        line(
            "",
            format!("expires {} (in {} days)", c.not_after, c.expires_in_days),
        );
        line("", format!("verifies {verifies}"));
        for issuer in &s.chain_issuers {
            line("", format!("chain: issued by {issuer}"));
        }
    }
    if let Some(c) = &s.ehlo {
        let size = match c.size {
            Some(0) => "yes (no limit)".to_string(),
            Some(n) => format!("yes, {n} bytes"),
            None => "no".to_string(),
        };
        line(
            "EHLO",
            format!(
                "PIPELINING {}, SIZE {size}, 8BITMIME {}, SMTPUTF8 {}, AUTH {}",
                yes(c.pipelining),
                yes(c.eight_bit_mime),
                yes(c.smtputf8),
                if c.auth.is_empty() {
                    "none".to_string()
                } else {
                    c.auth.join(" ")
                }
            ),
        );
    }
    match s.auth_ok {
        Some(true) => line("AUTH", "succeeded with the configured credentials".into()),
        Some(false) => line("AUTH", "FAILED with the configured credentials".into()),
        None if r.usable => line("AUTH", "not configured (no username)".into()),
        None => {}
    }
    let p = &e.plan;
    line("signing", p.profile_reason.clone());
    for (domain, n) in &p.signatures {
        line("", format!("{domain}: {n} DKIM-Signature(s) per message"));
    }
    line("8-bit", p.eight_bit.clone());
    line("SMTPUTF8", p.smtputf8.clone());
    if let Some(pipelining) = p.pipelining {
        line(
            "commands",
            if pipelining {
                "MAIL, RCPT and DATA pipelined".into()
            } else {
                "MAIL, RCPT and DATA one at a time".into()
            },
        );
    }
    if let Some(reply) = &r.test_reply {
        line("test mail", reply.clone());
    }
    for w in &e.warnings {
        line("warning", w.clone());
    }
    match (&r.problem, usable(r)) {
        (Some(problem), _) => {
            line("result", format!("NOT usable: {problem}"));
            if let Some(fix) = &r.fix {
                line("fix", fix.clone());
            }
        }
        (None, false) => line(
            "result",
            "NOT usable: the test message was not accepted".into(),
        ),
        (None, true) => line("result", "usable".into()),
    }
    out.push('\n');
    out
}
