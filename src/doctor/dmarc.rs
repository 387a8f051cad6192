//! DMARC (RFC 7489): the one `v=DMARC1` record at `_dmarc.domain`, its policy and reports.

use super::report::{Check, Finding, Severity};
use super::TxtLookup;
use crate::dmarc::summary::{percent, thousands, DomainSummary, Source};
use crate::rotation::dns::tag;

/// The period of reports doctor judges by.
pub const EVIDENCE_DAYS: u64 = 14;

/// What the stored aggregate reports say about the domain (None in `Context`: not read).
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The last [`EVIDENCE_DAYS`] of reports for the domain; None when there are none.
    pub summary: Option<&'a DomainSummary>,
}

/// How long `p=none` may stay before doctor says to move on (DNS cannot tell a record's
/// age, so the key store's first activation for the domain stands in for it).
pub const LONG_MONITORING: u64 = 30 * 86_400;

/// What the DMARC check needs besides the lookup.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub domain: &'a str,
    /// The organisational domain's record, looked up when the domain is a subdomain
    /// (receivers fall back to it): (its name, the lookup).
    pub parent: Option<(&'a str, &'a TxtLookup)>,
    /// Unix seconds of the first key activation for the domain in the key store.
    pub signing_since: Option<u64>,
    /// The relay signs mail from subdomains with this domain's keys (`subdomains = true`).
    pub signs_subdomains: bool,
    pub now: u64,
    /// The stored DMARC reports, when doctor read them.
    pub evidence: Option<Evidence<'a>>,
}

fn dmarc_records(lookup: &TxtLookup) -> Result<Vec<String>, String> {
    match lookup {
        TxtLookup::Failed(e) => Err(e.clone()),
        TxtLookup::Missing => Ok(Vec::new()),
        TxtLookup::Found(records) => Ok(records
            .iter()
            .map(|s| s.concat().trim().to_string())
            .filter(|r| r.starts_with("v=DMARC1"))
            .collect()),
    }
}

fn publish_line(domain: &str) -> String {
    format!("_dmarc.{domain}. 3600 IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\"")
}

/// Checks the DMARC record of `ctx.domain`.
pub fn check(lookup: &TxtLookup, ctx: &Context) -> Vec<Finding> {
    let domain = ctx.domain;
    let f = |severity, message: String| Finding::new(Check::Dmarc, severity, message);
    let records = match dmarc_records(lookup) {
        Err(e) => {
            return vec![f(
                Severity::Error,
                format!("could not look up _dmarc.{domain}: {e}"),
            )]
        }
        Ok(r) => r,
    };
    match records.as_slice() {
        [] => {
            if let Some((parent, parent_lookup)) = ctx.parent {
                if let Ok(p) = dmarc_records(parent_lookup) {
                    if let [record] = p.as_slice() {
                        let policy = tag(record, "sp").or_else(|| tag(record, "p"));
                        let mut out = vec![f(
                            Severity::Info,
                            format!("no record at _dmarc.{domain}; receivers use the one at _dmarc.{parent} (policy for subdomains: {})", policy.as_deref().unwrap_or("none given")),
                        )];
                        out.extend(policy_findings(record, ctx, true));
                        return out;
                    }
                }
            }
            vec![f(
                Severity::Error,
                format!("no DMARC record at _dmarc.{domain}: receivers apply no policy, so forged mail from {domain} is not stopped (DMARC fails open), and Gmail and Yahoo send bulk mail without DMARC to spam or reject it. Publish at least:"),
            )
            .publish(publish_line(domain))]
        }
        [record] => {
            let mut out = vec![f(Severity::Ok, format!("\"{record}\""))];
            out.extend(policy_findings(record, ctx, false));
            if out.len() > 1 && out[1..].iter().any(|x| x.severity == Severity::Error) {
                out.remove(0);
            }
            out
        }
        several => vec![f(
            Severity::Error,
            format!("{} DMARC records at _dmarc.{domain}: receivers then ignore DMARC for it entirely; keep exactly one", several.len()),
        )],
    }
}

fn policy_findings(record: &str, ctx: &Context, inherited: bool) -> Vec<Finding> {
    let domain = ctx.domain;
    let f = |severity, message: String| Finding::new(Check::Dmarc, severity, message);
    let mut out = Vec::new();
    let policy = if inherited {
        tag(record, "sp").or_else(|| tag(record, "p"))
    } else {
        tag(record, "p")
    };
    match policy.as_deref() {
        None => out.push(f(
            Severity::Error,
            "the record has no p= tag, so it is invalid; start with p=none and move on to quarantine and reject".into(),
        )),
        Some(p @ ("none" | "quarantine" | "reject")) if ctx.evidence.is_some() => {
            out.extend(evidence_findings(p, ctx));
        }
        Some("none") => {
            let since = ctx.signing_since.filter(|s| ctx.now.saturating_sub(*s) > LONG_MONITORING);
            out.push(f(
                Severity::Warn,
                match since {
                    Some(s) => format!(
                        "p=none for a long time (this relay has signed for {domain} for {} days): move on to p=quarantine, then p=reject, once the reports show your mail passes",
                        ctx.now.saturating_sub(s) / 86_400
                    ),
                    None => "p=none is monitoring only: receivers still deliver mail that fails DMARC; move on to quarantine then reject once the reports show your mail passes".into(),
                },
            ))
        }
        Some("quarantine" | "reject") => {}
        Some(other) => out.push(f(
            Severity::Error,
            format!("p={other} is not a DMARC policy (none, quarantine or reject), so receivers ignore the record"),
        )),
    }
    if tag(record, "rua").is_none_or(|r| r.is_empty()) {
        out.push(f(
            Severity::Warn,
            "no rua=: you get no aggregate reports, so you cannot see who sends as this domain or whether your mail passes; add rua=mailto:<address>".into(),
        ));
    }
    let strict = tag(record, "adkim").as_deref() == Some("s");
    match (strict, ctx.signs_subdomains) {
        (true, true) => out.push(f(
            Severity::Warn,
            format!("adkim=s (strict) while this relay signs mail from subdomains of {domain} (root@web01.{domain}) with d={domain}: strict alignment fails that mail; set adkim=r, or set subdomains = false and configure each sending subdomain as a domain of its own"),
        )),
        (true, false) => out.push(f(
            Severity::Info,
            format!("adkim=s (strict): mail with a From in a subdomain of {domain} passes DKIM alignment only if signed for that exact subdomain; configure such subdomains here as domains of their own"),
        )),
        (false, _) => {}
    }
    // Mail from subdomains is judged by sp= when there is one (RFC 7489 §6.3).
    if let (false, true, Some(sp)) = (inherited, ctx.signs_subdomains, tag(record, "sp")) {
        if tag(record, "p").as_deref() != Some(sp.as_str()) {
            out.push(f(
                Severity::Info,
                format!("sp={sp}: mail from subdomains of {domain}, which this relay signs with d={domain}, is judged by sp={sp}, not by p="),
            ));
        }
    }
    out
}

/// How to get reports: the record to publish and how to feed the mailbox to the relay.
fn how_to_get_reports(domain: &str) -> String {
    format!("no DMARC reports stored for {domain} in the last {EVIDENCE_DAYS} days, so nothing shows yet whether your mail passes: publish rua=mailto:dmarc-reports@{domain} in _dmarc.{domain} and feed that mailbox to the relay: `dkim-relay dmarc import ~/Maildir` (a Maildir, an mbox or saved .eml files), or from fetchmail/procmail `| dkim-relay dmarc import -`")
}

/// Up to three sources by address, "and N more".
fn addresses(sources: &[&Source]) -> String {
    let mut words: Vec<String> = sources.iter().take(3).map(|s| s.ip.clone()).collect();
    if sources.len() > 3 {
        words.push(format!("{} more", sources.len() - 3));
    }
    match words.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
        [] => String::new(),
    }
}

/// The advice on the policy from the reports (the issue's sentence): how long the policy
/// has been seen, how much passed, where the failures come from, what to do next.
fn evidence_findings(policy: &str, ctx: &Context) -> Vec<Finding> {
    let domain = ctx.domain;
    let f = |severity, message: String| Finding::new(Check::Dmarc, severity, message);
    let summary = ctx
        .evidence
        .and_then(|e| e.summary)
        .filter(|s| s.counts.messages > 0);
    let Some(s) = summary else {
        return match policy {
            "none" => vec![f(
                Severity::Warn,
                format!(
                    "p=none is monitoring only: receivers still deliver mail that fails DMARC; {}",
                    how_to_get_reports(domain)
                ),
            )],
            "quarantine" => vec![f(Severity::Info, how_to_get_reports(domain))],
            _ => Vec::new(),
        };
    };
    let c = &s.counts;
    let days = ctx.now.saturating_sub(s.policy_seen_since) / 86_400;
    let held = if s.policy == policy && s.policy_seen_since > 0 {
        format!("p={policy} for {days} days")
    } else {
        format!("p={policy}")
    };
    let seen = format!(
        "{held}; in the last {EVIDENCE_DAYS} days {} of {} messages passed aligned DKIM ({} passed DMARC)",
        percent(c.ratio(c.dkim_aligned)),
        thousands(c.messages),
        percent(c.ratio(c.dmarc_pass))
    );
    let ours = s.failing_ours();
    let others = s.failing_others();
    let next = match policy {
        "none" => "p=quarantine",
        _ => "p=reject",
    };
    if !ours.is_empty() {
        let failed: u64 = ours.iter().map(|x| x.counts.failing()).sum();
        return vec![f(
            Severity::Warn,
            format!("{seen}, but {} messages from this relay or its upstream failed (from {}): fix that before moving on (see the DKIM lines above and `dkim-relay dmarc report --domain {domain}`)", thousands(failed), addresses(&ours)),
        )];
    }
    let failures = match others.as_slice() {
        [] => "none failed".to_string(),
        [one] => format!("all failures come from {} (not this relay)", one.ip),
        several => format!(
            "all failures come from {} (not this relay)",
            addresses(several)
        ),
    };
    let (severity, advice) = match (policy, others.is_empty()) {
        ("reject", _) => (Severity::Ok, "receivers reject the rest".to_string()),
        (_, true) => (Severity::Warn, format!("move to {next}")),
        (_, false) => (
            Severity::Warn,
            format!("move to {next}, or add {} first (send its mail through this relay, or authorise it)", if others.len() == 1 { "that source" } else { "those sources" }),
        ),
    };
    let severity = if policy == "quarantine" && severity == Severity::Warn {
        Severity::Info
    } else {
        severity
    };
    vec![f(severity, format!("{seen}, {failures}: {advice}"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn found(records: &[&str]) -> TxtLookup {
        TxtLookup::Found(records.iter().map(|r| vec![r.to_string()]).collect())
    }

    fn ctx(signing_since: Option<u64>) -> Context<'static> {
        Context {
            domain: "example.net",
            parent: None,
            signing_since,
            signs_subdomains: false,
            now: 100 * DAY,
            evidence: None,
        }
    }

    fn severities(findings: &[Finding]) -> Vec<Severity> {
        findings.iter().map(|f| f.severity).collect()
    }

    #[test]
    fn reject_with_reports_is_ok() {
        let out = check(
            &found(&["v=DMARC1; p=reject; rua=mailto:d@example.net"]),
            &ctx(None),
        );
        assert_eq!(severities(&out), [Severity::Ok]);
    }

    #[test]
    fn missing_is_an_error_that_says_it_fails_open() {
        let out = check(&TxtLookup::Missing, &ctx(None));
        assert_eq!(severities(&out), [Severity::Error]);
        assert!(out[0].message.contains("fails open"));
        assert!(out[0].message.contains("spam"));
        assert!(out[0]
            .publish
            .as_deref()
            .is_some_and(|p| p.starts_with("_dmarc.example.net. 3600 IN TXT \"v=DMARC1; p=none")));
    }

    #[test]
    fn a_subdomain_without_a_record_uses_its_parents() {
        let parent = found(&["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.net"]);
        let c = Context {
            domain: "mail.example.net",
            parent: Some(("example.net", &parent)),
            ..ctx(None)
        };
        let out = check(&TxtLookup::Missing, &c);
        assert_eq!(severities(&out), [Severity::Info]);
        assert!(out[0].message.contains("quarantine"));
    }

    #[test]
    fn several_records_are_an_error() {
        let out = check(
            &found(&["v=DMARC1; p=reject", "v=DMARC1; p=none"]),
            &ctx(None),
        );
        assert_eq!(severities(&out), [Severity::Error]);
        assert!(out[0].message.contains("2 DMARC records"));
    }

    #[test]
    fn p_none_is_a_warning_that_says_move_on_after_a_long_time() {
        let rec = found(&["v=DMARC1; p=none; rua=mailto:d@example.net"]);
        let out = check(&rec, &ctx(Some(95 * DAY)));
        assert_eq!(severities(&out), [Severity::Ok, Severity::Warn]);
        assert!(out[1].message.contains("monitoring only"));
        let out = check(&rec, &ctx(Some(10 * DAY)));
        assert!(out[1].message.contains("p=none for a long time"), "{out:?}");
        assert!(out[1].message.contains("90 days"));
    }

    #[test]
    fn a_missing_or_invalid_policy_is_an_error() {
        for r in [
            "v=DMARC1; rua=mailto:d@example.net",
            "v=DMARC1; p=block; rua=mailto:d@example.net",
        ] {
            let out = check(&found(&[r]), &ctx(None));
            assert_eq!(severities(&out), [Severity::Error], "{r}");
        }
    }

    #[test]
    fn no_reports_warns_and_strict_alignment_informs() {
        let out = check(&found(&["v=DMARC1; p=quarantine; adkim=s"]), &ctx(None));
        assert_eq!(
            severities(&out),
            [Severity::Ok, Severity::Warn, Severity::Info]
        );
        assert!(out[1].message.contains("rua="));
        assert!(out[2].message.contains("adkim=s"));
    }

    /// Issue 14 item 5: when the relay signs subdomains with the domain's keys, strict
    /// alignment fails their mail (a warning that names the fix), and an sp= that differs
    /// from p= is said to be what judges them.
    #[test]
    fn strict_alignment_warns_when_subdomains_are_signed_and_sp_is_named() {
        let signing = Context {
            signs_subdomains: true,
            ..ctx(None)
        };
        let out = check(
            &found(&["v=DMARC1; p=reject; adkim=s; rua=mailto:d@example.net"]),
            &signing,
        );
        assert_eq!(severities(&out), [Severity::Ok, Severity::Warn]);
        assert!(out[1].message.contains("adkim=r"), "{}", out[1].message);
        let out = check(
            &found(&["v=DMARC1; p=reject; sp=none; rua=mailto:d@example.net"]),
            &signing,
        );
        assert_eq!(severities(&out), [Severity::Ok, Severity::Info]);
        assert!(out[1].message.contains("sp=none"), "{}", out[1].message);
        // Nothing to say when the relay does not sign subdomains.
        let out = check(
            &found(&["v=DMARC1; p=reject; sp=none; rua=mailto:d@example.net"]),
            &ctx(None),
        );
        assert_eq!(severities(&out), [Severity::Ok]);
    }
}

#[cfg(test)]
mod evidence_tests {
    use super::*;
    use crate::dmarc::summary::{Counts, Sender};

    fn summary(ours_failing: u64, others_failing: u64) -> DomainSummary {
        let source = |ip: &str, sender: Sender, messages: u64, failing: u64| Source {
            ip: ip.into(),
            reverse_name: None,
            sender,
            counts: Counts {
                messages,
                dkim_aligned: messages - failing,
                spf_aligned: 0,
                dmarc_pass: messages - failing,
            },
            dkim: Vec::new(),
            spf: Vec::new(),
        };
        let sources = vec![
            source(
                "192.0.2.1",
                Sender::ThisRelay { via: None },
                1000,
                ours_failing,
            ),
            source("203.0.113.9", Sender::Other, 20, others_failing),
        ];
        let failing = ours_failing + others_failing;
        DomainSummary {
            domain: "example.net".into(),
            begin: 0,
            end: 0,
            reports: 1,
            reporters: vec!["google.com".into()],
            policy: "none".into(),
            policy_seen_since: 55 * 86_400,
            counts: Counts {
                messages: 1020,
                dkim_aligned: 1020 - failing,
                spf_aligned: 0,
                dmarc_pass: 1020 - failing,
            },
            sources,
            selectors: Vec::new(),
            dispositions: Default::default(),
        }
    }

    fn advice(s: &DomainSummary) -> Vec<Finding> {
        let ctx = Context {
            domain: "example.net",
            parent: None,
            signing_since: None,
            signs_subdomains: false,
            now: 100 * 86_400,
            evidence: Some(Evidence { summary: Some(s) }),
        };
        check(
            &TxtLookup::Found(vec![vec![
                "v=DMARC1; p=none; rua=mailto:d@example.net".into()
            ]]),
            &ctx,
        )
    }

    #[test]
    fn failures_of_this_relays_mail_hold_the_policy_back() {
        let out = advice(&summary(10, 0));
        assert_eq!(out[1].severity, Severity::Warn);
        assert!(
            out[1].message.contains("p=none for 45 days"),
            "{}",
            out[1].message
        );
        assert!(out[1].message.contains("10 messages from this relay or its upstream failed (from 192.0.2.1): fix that before moving on"), "{}", out[1].message);
    }

    #[test]
    fn only_others_failing_says_move_on() {
        let out = advice(&summary(0, 20));
        assert!(out[1].message.contains("all failures come from 203.0.113.9 (not this relay): move to p=quarantine, or add that source first"), "{}", out[1].message);
        let out = advice(&summary(0, 0));
        assert!(
            out[1]
                .message
                .ends_with("none failed: move to p=quarantine"),
            "{}",
            out[1].message
        );
    }
}
