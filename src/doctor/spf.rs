//! SPF (RFC 7208): the one `v=spf1` TXT record at the domain, whether it authorises the
//! upstream provider the relay hands mail to, and its `all` term.

use super::report::{Check, Finding, Severity};
use super::TxtLookup;
use crate::config::Provider;

/// An upstream mail for the domain can go to, and the known provider behind it
/// (src/config/providers.rs: from `provider`, else from the host name).
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub provider: Option<&'static Provider>,
}

impl Target {
    pub fn of(upstream: &crate::config::UpstreamConfig) -> Target {
        Target {
            host: upstream.host.clone(),
            provider: upstream.known_provider(),
        }
    }
}

fn is_spf(record: &str) -> bool {
    let r = record.trim_start();
    r.len() >= 6
        && r.is_char_boundary(6)
        && r[..6].eq_ignore_ascii_case("v=spf1")
        && r[6..].chars().next().is_none_or(|c| c == ' ')
}

fn suggestion(domain: &str, includes: &[&str], existing: Option<&str>) -> String {
    let value = match existing {
        Some(record) => {
            let mut terms: Vec<String> = record.split_whitespace().map(str::to_string).collect();
            let at = terms
                .iter()
                .position(|t| {
                    t.to_ascii_lowercase()
                        .trim_start_matches(['+', '-', '~', '?'])
                        == "all"
                })
                .unwrap_or(terms.len());
            for (i, inc) in includes.iter().enumerate() {
                terms.insert(at + i, format!("include:{inc}"));
            }
            terms.join(" ")
        }
        None => {
            let mut v = String::from("v=spf1");
            for inc in includes {
                v.push_str(&format!(" include:{inc}"));
            }
            v.push_str(" ~all");
            v
        }
    };
    format!("{domain}. 3600 IN TXT \"{value}\"")
}

/// Checks the TXT records at `domain` against the upstream hosts mail for it goes to.
pub fn check(domain: &str, lookup: &TxtLookup, upstreams: &[Target]) -> Vec<Finding> {
    let f = |severity, message: String| Finding::new(Check::Spf, severity, message);
    let mut known: Vec<(String, &Provider)> = upstreams
        .iter()
        .filter_map(|t| t.provider.map(|p| (t.host.clone(), p)))
        .collect();
    let mut seen = Vec::new();
    known.retain(|(_, p)| {
        let first = !seen.contains(&p.spf_include);
        seen.push(p.spf_include);
        first
    });
    let includes: Vec<&str> = known.iter().map(|(_, p)| p.spf_include).collect();
    let records: Vec<String> = match lookup {
        TxtLookup::Failed(e) => {
            return vec![f(
                Severity::Error,
                format!("could not look up the TXT records of {domain}: {e}"),
            )]
        }
        TxtLookup::Missing => Vec::new(),
        TxtLookup::Found(records) => records
            .iter()
            .map(|strings| strings.concat())
            .filter(|r| is_spf(r))
            .collect(),
    };
    let record = match records.as_slice() {
        [] => {
            return vec![f(
                Severity::Error,
                format!("no SPF record at {domain}: receivers cannot tell which servers may send mail for it. Publish:"),
            )
            .publish(suggestion(domain, &includes, None))]
        }
        [one] => one.trim().to_string(),
        several => {
            return vec![f(
                Severity::Error,
                format!(
                    "{} SPF records at {domain}: RFC 7208 makes that a permanent error, so SPF fails for all its mail. Merge them into one: {}",
                    several.len(),
                    several.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(" and ")
                ),
            )]
        }
    };
    let mut out = Vec::new();
    let terms: Vec<String> = record
        .split_whitespace()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    let mut missing = Vec::new();
    for (host, p) in &known {
        let wanted = format!("include:{}", p.spf_include);
        if terms.iter().any(|t| t.trim_start_matches('+') == wanted) {
            out.push(f(
                Severity::Ok,
                format!(
                    "\"{record}\" authorises {} ({wanted}), the upstream {host}",
                    p.name
                ),
            ));
        } else {
            missing.push(p.spf_include);
            out.push(f(
                Severity::Error,
                format!(
                    "\"{record}\" does not authorise {} (the upstream {host}): it lacks {wanted}, so mail it sends with an envelope sender in {domain} fails SPF. Publish:",
                    p.name
                ),
            ));
        }
    }
    if let Some(last) = out.iter_mut().rev().find(|x| x.severity == Severity::Error) {
        last.publish = Some(suggestion(domain, &missing, Some(&record)));
    }
    for host in upstreams
        .iter()
        .filter(|t| t.provider.is_none())
        .map(|t| &t.host)
    {
        out.push(f(
            Severity::Info,
            format!("the upstream {host} is not a provider doctor knows; check that \"{record}\" covers its addresses"),
        ));
    }
    if upstreams.is_empty() {
        out.push(f(
            Severity::Ok,
            format!("\"{record}\" (no upstream configured: mail goes to the outbox)"),
        ));
    }
    match terms.iter().find(|t| t.trim_start_matches(['+', '-', '~', '?']) == "all") {
        Some(all) if all == "all" || all == "+all" => out.push(f(
            Severity::Error,
            format!("\"{all}\" lets every server on the internet pass SPF as {domain}: end the record with ~all or -all"),
        )),
        Some(all) if all == "?all" => out.push(f(
            Severity::Warn,
            "\"?all\" (neutral) protects nothing: servers not listed still get no fail; end the record with ~all or -all".to_string(),
        )),
        Some(_) => {}
        None if terms.iter().any(|t| t.starts_with("redirect=")) => {}
        None => out.push(f(
            Severity::Info,
            "the record has no all term, so servers not listed get a neutral result; end it with ~all or -all".to_string(),
        )),
    }
    if !known.is_empty() {
        out.push(f(
            Severity::Info,
            "SPF is checked against the envelope sender (Return-Path), which a provider may set to its own domain; DMARC then passes on the DKIM signature".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(records: &[&str]) -> TxtLookup {
        TxtLookup::Found(records.iter().map(|r| vec![r.to_string()]).collect())
    }

    fn severities(findings: &[Finding]) -> Vec<Severity> {
        findings.iter().map(|f| f.severity).collect()
    }

    const SES: &str = "email-smtp.eu-west-1.amazonaws.com";

    /// Upstreams by host name, their providers recognised from the table.
    fn to(hosts: &[&str]) -> Vec<Target> {
        hosts
            .iter()
            .map(|h| Target {
                host: h.to_string(),
                provider: crate::config::providers::by_host(h),
            })
            .collect()
    }

    /// A provider named by `provider = …` counts even when the host does not show it.
    #[test]
    fn an_explicit_provider_is_checked_like_a_recognised_one() {
        let target = Target {
            host: "smtp-proxy.internal".into(),
            provider: Some(crate::config::providers::by_id(
                crate::config::ProviderId::Ses,
            )),
        };
        let out = check("example.net", &found(&["v=spf1 mx -all"]), &[target]);
        assert_eq!(out[0].severity, Severity::Error);
        assert!(out[0].message.contains("does not authorise Amazon SES"));
    }

    #[test]
    fn a_good_record_with_the_providers_include_is_ok() {
        let out = check(
            "example.net",
            &found(&[
                "google-site-verification=x",
                "v=spf1 include:amazonses.com -all",
            ]),
            &to(&[SES]),
        );
        assert_eq!(severities(&out), [Severity::Ok, Severity::Info]);
        assert!(out[0].message.contains("authorises Amazon SES"));
        assert!(out[1].message.contains("envelope sender"));
    }

    #[test]
    fn a_missing_record_is_an_error_with_a_record_to_publish() {
        for lookup in [TxtLookup::Missing, found(&["some-other=txt"])] {
            let out = check("example.net", &lookup, &to(&[SES]));
            assert_eq!(severities(&out), [Severity::Error]);
            assert!(out[0].message.contains("no SPF record"));
            assert_eq!(
                out[0].publish.as_deref(),
                Some("example.net. 3600 IN TXT \"v=spf1 include:amazonses.com ~all\"")
            );
        }
    }

    #[test]
    fn several_spf_records_are_a_permerror() {
        let out = check(
            "example.net",
            &found(&["v=spf1 include:amazonses.com -all", "v=spf1 mx -all"]),
            &to(&[SES]),
        );
        assert_eq!(severities(&out), [Severity::Error]);
        assert!(out[0].message.contains("2 SPF records"));
        assert!(out[0].message.contains("permanent error"));
    }

    #[test]
    fn a_record_without_the_upstreams_include_is_an_error() {
        let out = check(
            "example.net",
            &found(&["v=spf1 include:_spf.google.com ~all"]),
            &to(&["smtp.sendgrid.net"]),
        );
        assert_eq!(out[0].severity, Severity::Error);
        assert!(out[0].message.contains("does not authorise SendGrid"));
        assert_eq!(
            out[0].publish.as_deref(),
            Some("example.net. 3600 IN TXT \"v=spf1 include:_spf.google.com include:sendgrid.net ~all\"")
        );
    }

    #[test]
    fn plus_all_is_an_error_and_question_all_a_warning() {
        let out = check("example.net", &found(&["v=spf1 +all"]), &[]);
        assert!(out
            .iter()
            .any(|f| f.severity == Severity::Error && f.message.contains("every server")));
        let out = check("example.net", &found(&["v=spf1 mx ?all"]), &[]);
        assert_eq!(severities(&out), [Severity::Ok, Severity::Warn]);
    }

    #[test]
    fn unknown_upstreams_get_the_record_as_information() {
        let out = check(
            "example.net",
            &found(&["v=spf1 ip4:192.0.2.1 -all"]),
            &to(&["mail.example.org"]),
        );
        assert_eq!(severities(&out), [Severity::Info]);
        assert!(out[0].message.contains("v=spf1 ip4:192.0.2.1 -all"));
    }

    #[test]
    fn a_failed_lookup_is_an_error() {
        let out = check("example.net", &TxtLookup::Failed("timed out".into()), &[]);
        assert_eq!(severities(&out), [Severity::Error]);
        assert!(out[0].message.contains("could not look up"));
    }
}
