//! Stored reports summed per From domain over a period: volume and the three pass rates,
//! then by source (who sends as the domain, and whether that is this relay or its
//! upstream provider), by DKIM selector (whether it is one of this relay's, in which
//! state) and by what receivers did. `dmarc report`, `doctor` and `/metrics` all read this.

use super::feedback::{Disposition, Record};
use super::Stored;
use crate::config::Config;
use crate::keys::{KeyStore, SlotState};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What the relay knows of itself, to tell its own mail from others'.
#[derive(Debug, Clone, Default)]
pub struct Ours {
    /// The key store's selectors per domain, with their state.
    pub selectors: HashMap<String, Vec<(String, SlotState)>>,
    /// Domains whose names (reverse name, or a passing SPF or DKIM domain) mark a source as
    /// the upstream provider: (domain, provider's name).
    pub provider_domains: Vec<(String, String)>,
}

/// The last two labels: "amazonses.com" of "_spf.amazonses.com". Wrong under suffixes like
/// co.uk, where it only makes the match wider within that provider's own name.
fn organisational(name: &str) -> String {
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    labels[labels.len().saturating_sub(2)..].join(".")
}

fn under(name: &str, domain: &str) -> bool {
    name == domain || name.strip_suffix(domain).is_some_and(|h| h.ends_with('.'))
}

impl Ours {
    pub fn of(config: &Config, store: &KeyStore) -> Ours {
        let mut ours = Ours::default();
        for domain in store.domains().unwrap_or_default() {
            if let Ok(Some(state)) = store.load(&domain) {
                ours.selectors.insert(
                    domain.clone(),
                    state
                        .slots
                        .iter()
                        .map(|s| (s.selector.clone(), s.state))
                        .collect(),
                );
            }
        }
        for upstream in config.upstream_list() {
            match upstream.known_provider() {
                Some(p) => {
                    let mut names = vec![organisational(p.spf_include)];
                    names.extend(p.hosts.iter().map(|h| match h {
                        crate::config::providers::HostPattern::Under(n) => organisational(n),
                        crate::config::providers::HostPattern::OneLabel(_, suffix) => {
                            organisational(suffix)
                        }
                    }));
                    for n in names {
                        ours.provider_domains.push((n, p.name.to_string()));
                    }
                }
                None => ours.provider_domains.push((
                    organisational(&upstream.host),
                    format!("upstream {}", upstream.host),
                )),
            }
        }
        // amazonaws.com is every AWS customer's, not SES's.
        ours.provider_domains.retain(|(d, _)| d != "amazonaws.com");
        ours.provider_domains.sort();
        ours.provider_domains.dedup();
        ours
    }

    fn selector_state(&self, domain: &str, selector: &str) -> Option<SlotState> {
        self.selectors
            .get(domain)?
            .iter()
            .find(|(s, _)| s == selector)
            .map(|(_, state)| *state)
    }

    fn provider_of(&self, name: &str) -> Option<&str> {
        self.provider_domains
            .iter()
            .find(|(d, _)| under(name, d))
            .map(|(_, p)| p.as_str())
    }
}

/// Who a source is, as far as the reports (and its reverse name) tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sender {
    /// A signature of this relay's (its selector, passing) is on its mail.
    ThisRelay { via: Option<String> },
    /// Its reverse name or a passing SPF/DKIM domain is the upstream provider's.
    Provider { name: String },
    /// Neither: another service, a forwarder, or a forger.
    Other,
}

impl Sender {
    pub fn words(&self) -> String {
        match self {
            Sender::ThisRelay { via: Some(p) } => format!("this relay, through {p}"),
            Sender::ThisRelay { via: None } => "this relay".into(),
            Sender::Provider { name } => {
                format!("{name}, this relay's upstream, but not signed by this relay")
            }
            Sender::Other => "not this relay".into(),
        }
    }

    pub fn is_ours(&self) -> bool {
        !matches!(self, Sender::Other)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub messages: u64,
    pub dkim_aligned: u64,
    pub spf_aligned: u64,
    pub dmarc_pass: u64,
}

impl Counts {
    fn add(&mut self, r: &Record) {
        self.messages += r.count;
        self.dkim_aligned += if r.dkim_aligned { r.count } else { 0 };
        self.spf_aligned += if r.spf_aligned { r.count } else { 0 };
        self.dmarc_pass += if r.dmarc_pass() { r.count } else { 0 };
    }

    pub fn failing(&self) -> u64 {
        self.messages - self.dmarc_pass
    }

    /// `part` of the messages as a fraction (0 without messages).
    pub fn ratio(&self, part: u64) -> f64 {
        if self.messages == 0 {
            0.0
        } else {
            part as f64 / self.messages as f64
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_name: Option<String>,
    pub sender: Sender,
    #[serde(flatten)]
    pub counts: Counts,
    /// The DKIM domains and SPF domains seen failing or passing, for the plain words.
    pub dkim: Vec<String>,
    pub spf: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Selector {
    /// The signature's d=.
    pub domain: String,
    pub selector: String,
    pub messages: u64,
    pub passed: u64,
    /// The slot's state when the selector is one of this relay's for that domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ours: Option<SlotState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainSummary {
    pub domain: String,
    /// The period the counted reports cover, Unix seconds.
    pub begin: u64,
    pub end: u64,
    pub reports: usize,
    pub reporters: Vec<String>,
    /// The newest report's published policy.
    pub policy: String,
    /// The earliest report (of all stored) that already saw `policy`.
    pub policy_seen_since: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// Failing first (most failing messages first), then by volume.
    pub sources: Vec<Source>,
    pub selectors: Vec<Selector>,
    pub dispositions: BTreeMap<Disposition, u64>,
}

impl DomainSummary {
    /// Failing sources that are not this relay.
    pub fn failing_others(&self) -> Vec<&Source> {
        self.sources
            .iter()
            .filter(|s| s.counts.failing() > 0 && !s.sender.is_ours())
            .collect()
    }

    /// Failing sources that are this relay or its upstream: mail the relay should make pass.
    pub fn failing_ours(&self) -> Vec<&Source> {
        self.sources
            .iter()
            .filter(|s| s.counts.failing() > 0 && s.sender.is_ours())
            .collect()
    }
}

/// A record counts for `domain` when its header From is the domain or one of its subdomains.
fn aligned(name: &str, domain: &str) -> bool {
    under(name, domain) || under(domain, name)
}

fn sender_of(record: &Record, reverse: Option<&str>, domain: &str, ours: &Ours) -> Sender {
    let provider = reverse
        .and_then(|r| ours.provider_of(r))
        .or_else(|| {
            record
                .spf
                .iter()
                .filter(|s| s.result == "pass")
                .find_map(|s| ours.provider_of(&s.domain))
        })
        .or_else(|| {
            record
                .dkim
                .iter()
                .filter(|d| d.result == "pass")
                .find_map(|d| ours.provider_of(&d.domain))
        })
        .map(str::to_string);
    let signed_here = record.dkim.iter().any(|d| {
        d.result == "pass"
            && aligned(&d.domain, domain)
            && ours.selector_state(&d.domain, &d.selector).is_some()
    });
    match (signed_here, provider) {
        (true, via) => Sender::ThisRelay { via },
        (false, Some(name)) => Sender::Provider { name },
        (false, None) => Sender::Other,
    }
}

/// Sums `reports` whose period ends after `since` per header-From domain (only `only` when
/// given). `reverse` holds the reverse names looked up, if any.
pub fn summarise(
    reports: &[Stored],
    since: u64,
    only: Option<&str>,
    ours: &Ours,
    reverse: &HashMap<String, String>,
) -> Vec<DomainSummary> {
    let mut by_domain: BTreeMap<String, Vec<&Stored>> = BTreeMap::new();
    for s in reports {
        let domain = s.report.policy.domain.clone();
        if only.is_some_and(|o| o != domain) {
            continue;
        }
        by_domain.entry(domain).or_default().push(s);
    }
    let mut out = Vec::new();
    for (domain, all) in by_domain {
        let newest = all
            .iter()
            .max_by_key(|s| s.report.end)
            .map(|s| s.report.policy.p.clone())
            .unwrap_or_default();
        let policy_seen_since = all
            .iter()
            .filter(|s| s.report.policy.p == newest)
            .map(|s| s.report.begin)
            .min()
            .unwrap_or(0);
        let window: Vec<&&Stored> = all.iter().filter(|s| s.report.end > since).collect();
        let mut counts = Counts::default();
        let mut sources: BTreeMap<String, Source> = BTreeMap::new();
        let mut selectors: BTreeMap<(String, String), Selector> = BTreeMap::new();
        let mut dispositions = BTreeMap::new();
        let mut reporters: Vec<String> = Vec::new();
        let (mut begin, mut end) = (u64::MAX, 0);
        for s in &window {
            begin = begin.min(s.report.begin);
            end = end.max(s.report.end);
            if !reporters.contains(&s.report.org_name) {
                reporters.push(s.report.org_name.clone());
            }
            for r in &s.report.records {
                if !aligned(&r.header_from, &domain) {
                    continue;
                }
                counts.add(r);
                *dispositions.entry(r.disposition).or_insert(0) += r.count;
                let name = reverse.get(&r.source_ip);
                let sender = sender_of(r, name.map(String::as_str), &domain, ours);
                let source = sources
                    .entry(r.source_ip.clone())
                    .or_insert_with(|| Source {
                        ip: r.source_ip.clone(),
                        reverse_name: name.cloned(),
                        sender: sender.clone(),
                        counts: Counts::default(),
                        dkim: Vec::new(),
                        spf: Vec::new(),
                    });
                if sender.is_ours() && !source.sender.is_ours() {
                    source.sender = sender;
                }
                source.counts.add(r);
                for d in &r.dkim {
                    let word = format!("{} for {}", d.result, d.domain);
                    if !source.dkim.contains(&word) && source.dkim.len() < 8 {
                        source.dkim.push(word);
                    }
                    let sel = selectors
                        .entry((d.domain.clone(), d.selector.clone()))
                        .or_insert_with(|| Selector {
                            domain: d.domain.clone(),
                            selector: d.selector.clone(),
                            messages: 0,
                            passed: 0,
                            ours: ours.selector_state(&d.domain, &d.selector),
                        });
                    sel.messages += r.count;
                    sel.passed += if d.result == "pass" { r.count } else { 0 };
                }
                for sp in &r.spf {
                    let word = format!("{} for {}", sp.result, sp.domain);
                    if !source.spf.contains(&word) && source.spf.len() < 8 {
                        source.spf.push(word);
                    }
                }
            }
        }
        if window.is_empty() {
            begin = 0;
        }
        let mut sources: Vec<Source> = sources.into_values().collect();
        sources.sort_by(|a, b| {
            (b.counts.failing(), b.counts.messages, &a.ip).cmp(&(
                a.counts.failing(),
                a.counts.messages,
                &b.ip,
            ))
        });
        let mut selectors: Vec<Selector> = selectors.into_values().collect();
        selectors.sort_by_key(|s| std::cmp::Reverse((s.ours.is_some(), s.messages)));
        out.push(DomainSummary {
            domain,
            begin,
            end,
            reports: window.len(),
            reporters,
            policy: newest,
            policy_seen_since,
            counts,
            sources,
            selectors,
            dispositions,
        });
    }
    out
}

/// 12400 as "12,400".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fraction as a percentage with one decimal ("99.7%"), never rounding a failure up to 100.
pub fn percent(ratio: f64) -> String {
    let p = (ratio * 1000.0).floor() / 10.0;
    format!("{p:.1}%")
}

/// One source in plain words: who it is, what failed, and what to do.
pub fn source_words(s: &Source, domain: &str) -> String {
    let name = s
        .reverse_name
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let failed = s.counts.failing();
    let what = if failed == 0 {
        format!(
            "{} message(s), all passed DMARC",
            thousands(s.counts.messages)
        )
    } else {
        format!(
            "{} of {} message(s) failed DMARC (DKIM: {}; SPF: {})",
            thousands(failed),
            thousands(s.counts.messages),
            if s.dkim.is_empty() {
                "no signature".into()
            } else {
                s.dkim.join(", ")
            },
            if s.spf.is_empty() {
                "none".into()
            } else {
                s.spf.join(", ")
            },
        )
    };
    let advice = match (&s.sender, failed > 0) {
        (_, false) => String::new(),
        (Sender::Other, true) => format!(
            ": not this relay; if it is yours, send its mail through this relay (or authorise it for {domain}), otherwise it is forgery that p=quarantine/reject stops"
        ),
        (Sender::Provider { .. }, true) => {
            ": mail through the upstream without this relay's signature; send it through this relay".into()
        }
        (Sender::ThisRelay { .. }, true) => {
            ": mail this relay signed fails at receivers; run dkim-relay doctor and check the DKIM records".into()
        }
    };
    format!("{}{name} [{}]: {what}{advice}", s.ip, s.sender.words())
}

/// Sources listed in text, failing and passing each; `--json` has them all.
const TEXT_SOURCES: usize = 20;

/// The whole summary as text for people.
pub fn text(summaries: &[DomainSummary], days: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if summaries.is_empty() {
        out.push_str("no DMARC reports stored; import some with: dkim-relay dmarc import PATH (a Maildir, an mbox, .eml, .xml, .xml.gz, .zip, or - for stdin)\n");
    }
    for d in summaries {
        let c = &d.counts;
        let _ = writeln!(
            out,
            "{} (policy p={}, last {days} days: {} report(s) from {})",
            d.domain,
            if d.policy.is_empty() { "?" } else { &d.policy },
            d.reports,
            if d.reporters.is_empty() {
                "nobody".into()
            } else {
                d.reporters.join(", ")
            }
        );
        if c.messages == 0 {
            let _ = writeln!(out, "  no messages reported in the period\n");
            continue;
        }
        let _ = writeln!(
            out,
            "  {} message(s): DKIM aligned {}, SPF aligned {}, DMARC pass {}",
            thousands(c.messages),
            percent(c.ratio(c.dkim_aligned)),
            percent(c.ratio(c.spf_aligned)),
            percent(c.ratio(c.dmarc_pass))
        );
        let failing: Vec<&Source> = d
            .sources
            .iter()
            .filter(|s| s.counts.failing() > 0)
            .collect();
        if failing.is_empty() {
            let _ = writeln!(out, "  every source passed DMARC");
        } else {
            let _ = writeln!(out, "  failing sources:");
            for s in failing.iter().take(TEXT_SOURCES) {
                let _ = writeln!(out, "    {}", source_words(s, &d.domain));
            }
            if failing.len() > TEXT_SOURCES {
                let _ = writeln!(
                    out,
                    "    and {} more (--json lists every source)",
                    failing.len() - TEXT_SOURCES
                );
            }
        }
        let passing: Vec<&Source> = d
            .sources
            .iter()
            .filter(|s| s.counts.failing() == 0)
            .collect();
        if !passing.is_empty() {
            let _ = writeln!(out, "  passing sources:");
            for s in passing.iter().take(TEXT_SOURCES) {
                let _ = writeln!(out, "    {}", source_words(s, &d.domain));
            }
            if passing.len() > TEXT_SOURCES {
                let _ = writeln!(
                    out,
                    "    and {} more (--json lists every source)",
                    passing.len() - TEXT_SOURCES
                );
            }
        }
        if !d.selectors.is_empty() {
            let _ = writeln!(out, "  DKIM selectors:");
            for s in &d.selectors {
                let whose = match s.ours {
                    Some(state) => format!("this relay's, {state}"),
                    None => "not this relay's".into(),
                };
                let name = if s.selector.is_empty() {
                    format!("a signature for {} without a selector", s.domain)
                } else {
                    format!("{}._domainkey.{}", s.selector, s.domain)
                };
                let _ = writeln!(
                    out,
                    "    {name} ({whose}): {} of {} passed",
                    thousands(s.passed),
                    thousands(s.messages)
                );
            }
        }
        let _ = writeln!(out, "  receivers applied:");
        for (disposition, n) in &d.dispositions {
            let _ = writeln!(out, "    {}: {}", disposition.as_str(), thousands(*n));
        }
        out.push('\n');
    }
    out
}
