//! The Prometheus text page and the readiness verdict, computed at scrape time from the
//! counters, the spool directory and the key store.

use super::global;
use crate::config::Config;
use crate::dkim::{KeyLookup, SharedKeyRing};
use crate::keys::{DnsCheck, DnsOutcome, DnsSeen, KeyStore, SlotState};
use crate::spool::Spool;
use std::sync::atomic::Ordering;

/// (number of queued messages, age in seconds of the oldest) from the spool's queue ids:
/// they start with 14 hex digits of microseconds since the epoch.
fn queue_stats(spool: &Spool, now: u64) -> (u64, u64) {
    let mut count = 0;
    let mut oldest = u64::MAX;
    for id in spool.queued_ids().unwrap_or_default() {
        count += 1;
        let id = id.as_str();
        if let Some(micros) = id.get(..14).and_then(|h| u64::from_str_radix(h, 16).ok()) {
            oldest = oldest.min(micros / 1_000_000);
        }
    }
    let age = if count == 0 {
        0
    } else {
        now.saturating_sub(oldest)
    };
    (count, age)
}

fn state_name(state: SlotState) -> &'static str {
    match state {
        SlotState::Pending => "pending",
        SlotState::Published => "published",
        SlotState::Active => "active",
        SlotState::Retiring => "retiring",
        SlotState::Retired => "retired",
    }
}

pub fn render(config: &Config, store: &KeyStore, dns: &DnsSeen, spool: &Spool, now: u64) -> String {
    let r = global();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("# TYPE dkim_relay_messages_accepted_total counter".into());
    line(format!(
        "dkim_relay_messages_accepted_total {}",
        r.accepted.load(Ordering::Relaxed)
    ));
    line("# TYPE dkim_relay_smtp_refusals_total counter".into());
    for ((code, status), n) in r.refusals() {
        line(format!(
            "dkim_relay_smtp_refusals_total{{code=\"{code}\",status=\"{status}\"}} {n}"
        ));
    }
    line("# TYPE dkim_relay_deliveries_total counter".into());
    for (result, counter) in [
        ("delivered", &r.delivered),
        ("deferred", &r.deferred),
        ("failed", &r.failed),
    ] {
        line(format!(
            "dkim_relay_deliveries_total{{result=\"{result}\"}} {}",
            counter.load(Ordering::Relaxed)
        ));
    }
    line("# TYPE dkim_relay_signatures_total counter".into());
    for ((domain, selector, algorithm), n) in r.signatures() {
        line(format!(
            "dkim_relay_signatures_total{{domain=\"{domain}\",selector=\"{selector}\",algorithm=\"{algorithm}\"}} {n}"
        ));
    }
    for (name, help, histogram) in [
        (
            "dkim_relay_signing_seconds",
            "DKIM signing time per message",
            &r.signing,
        ),
        (
            "dkim_relay_upstream_seconds",
            "upstream transaction time per message",
            &r.upstream,
        ),
        (
            "dkim_relay_accept_seconds",
            "end of DATA to the 250 (spooled)",
            &r.accept,
        ),
    ] {
        line(format!("# HELP {name} {help}"));
        line(format!("# TYPE {name} histogram"));
        let mut lines = String::new();
        histogram.render(name, "", &mut lines);
        line(lines.trim_end().to_string());
    }
    let (queued, oldest) = queue_stats(spool, now);
    line("# TYPE dkim_relay_queue_messages gauge".into());
    line(format!("dkim_relay_queue_messages {queued}"));
    line("# TYPE dkim_relay_queue_oldest_age_seconds gauge".into());
    line(format!("dkim_relay_queue_oldest_age_seconds {oldest}"));

    line("# TYPE dkim_relay_key_state gauge".into());
    let mut per_key = Vec::new();
    for domain in store.domains().unwrap_or_default() {
        let Ok(Some(state)) = store.load(&domain) else {
            continue;
        };
        for slot in &state.slots {
            let labels = format!(
                "domain=\"{domain}\",selector=\"{}\",algorithm=\"{}\"",
                slot.selector, slot.algorithm
            );
            line(format!(
                "dkim_relay_key_state{{{labels},state=\"{}\"}} 1",
                state_name(slot.state)
            ));
            per_key.push((domain.clone(), labels, slot.clone()));
        }
    }
    let rotation = &config.rotation;
    line("# TYPE dkim_relay_key_age_days gauge".into());
    for (_, labels, slot) in &per_key {
        line(format!(
            "dkim_relay_key_age_days{{{labels}}} {}",
            now.saturating_sub(slot.created) / 86_400
        ));
    }
    line("# TYPE dkim_relay_key_next_transition_seconds gauge".into());
    for (_, labels, slot) in &per_key {
        let at = crate::rotation::next_move(
            slot,
            rotation.interval.0.as_secs(),
            rotation.propagation_wait.0.as_secs(),
            rotation.dns_check,
        )
        .at();
        if let Some(at) = at {
            line(format!(
                "dkim_relay_key_next_transition_seconds{{{labels}}} {}",
                at.saturating_sub(now)
            ));
        }
    }
    // The freshest lookup of each key: the running relay's DNS watch, or the one the
    // state file keeps from activation (and `keys check`) when it is newer or the only one.
    let watched = dns.all();
    let freshest = |domain: &str, slot: &crate::keys::Slot| -> Option<DnsCheck> {
        let seen = watched
            .iter()
            .find(|w| w.domain == domain && w.selector == slot.selector)
            .map(|w| w.last.clone());
        match (seen, slot.last_dns_check.clone()) {
            (Some(a), Some(b)) => Some(if a.at >= b.at { a } else { b }),
            (a, b) => a.or(b),
        }
    };
    line("# TYPE dkim_relay_key_dns_check_ok gauge".into());
    line("# TYPE dkim_relay_key_dns_check_timestamp_seconds gauge".into());
    for (domain, labels, slot) in &per_key {
        if let Some(check) = freshest(domain, slot) {
            line(format!(
                "dkim_relay_key_dns_check_ok{{{labels}}} {}",
                u8::from(check.outcome == DnsOutcome::Match)
            ));
            line(format!(
                "dkim_relay_key_dns_check_timestamp_seconds{{{labels}}} {}",
                check.at
            ));
        }
    }
    // Every active and retiring selector as the DNS watch last saw it: 1 only when the
    // last lookup found exactly this key (a failed lookup is 0: nothing is known).
    line("# HELP dkim_relay_selector_dns_ok whether DNS served this key at the DNS watch's last lookup".into());
    line("# TYPE dkim_relay_selector_dns_ok gauge".into());
    line("# TYPE dkim_relay_selector_dns_checked_timestamp_seconds gauge".into());
    for seen in &watched {
        let labels = format!(
            "domain=\"{}\",selector=\"{}\",algorithm=\"{}\"",
            seen.domain, seen.selector, seen.algorithm
        );
        line(format!(
            "dkim_relay_selector_dns_ok{{{labels}}} {}",
            u8::from(seen.last.outcome == DnsOutcome::Match)
        ));
        line(format!(
            "dkim_relay_selector_dns_checked_timestamp_seconds{{{labels}}} {}",
            seen.last.at
        ));
    }
    rotation_waits(store, now, &mut line);
    dmarc_ratios(config, store, &mut line);
    out
}

/// The stored DMARC reports' pass ratios for the domains this relay signs for; labels are
/// bounded: a selector not in the key store is counted under "other".
fn dmarc_ratios(config: &Config, store: &KeyStore, line: &mut impl FnMut(String)) {
    let mut domains: Vec<String> = config.domains.iter().map(|d| d.name.clone()).collect();
    domains.extend(store.domains().unwrap_or_default());
    domains.sort();
    domains.dedup();
    let reports = crate::dmarc::Store::of(config);
    let ratios = crate::dmarc::ratios::cached(
        &reports,
        || crate::dmarc::summary::Ours::of(config, store),
        &domains,
    );
    line("# HELP dkim_relay_dmarc_pass_ratio share of reported messages that passed, over the latest 14 days of stored DMARC reports (selector=\"all\": DMARC pass of the domain)".into());
    line("# TYPE dkim_relay_dmarc_pass_ratio gauge".into());
    for r in &ratios {
        line(format!(
            "dkim_relay_dmarc_pass_ratio{{domain=\"{}\",selector=\"{}\"}} {:.4}",
            r.domain, r.selector, r.ratio
        ));
    }
    line("# TYPE dkim_relay_dmarc_report_end_timestamp_seconds gauge".into());
    for r in ratios.iter().filter(|r| r.selector == "all") {
        line(format!(
            "dkim_relay_dmarc_report_end_timestamp_seconds{{domain=\"{}\"}} {}",
            r.domain, r.report_end
        ));
    }
}

/// Publish hook failures, and how long each domain's rotation has waited for its new key
/// to be published (0: nothing waits), the planner's `waiting_since`.
fn rotation_waits(store: &KeyStore, now: u64, line: &mut impl FnMut(String)) {
    line("# TYPE dkim_relay_publish_hook_failures_total counter".into());
    for (domain, n) in global().hook_failures() {
        line(format!(
            "dkim_relay_publish_hook_failures_total{{domain=\"{domain}\"}} {n}"
        ));
    }
    line("# TYPE dkim_relay_rotation_stuck_seconds gauge".into());
    for domain in store.domains().unwrap_or_default() {
        let Ok(Some(state)) = store.load(&domain) else {
            continue;
        };
        let waited = crate::rotation::waiting_since(&state)
            .map_or(0, |slot| now.saturating_sub(slot.created));
        line(format!(
            "dkim_relay_rotation_stuck_seconds{{domain=\"{domain}\"}} {waited}"
        ));
    }
}

/// Why the relay is not ready, or Ok.
pub fn readiness(
    config: &Config,
    keys: &SharedKeyRing,
    dns: &DnsSeen,
    spool: &crate::spool::Spool,
    now: u64,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = spool.probe() {
        problems.push(format!(
            "spool queue {} cannot store mail: {e}",
            spool.queue_dir().display()
        ));
    }
    let ring = keys.current();
    for domain in &config.domains {
        match ring.lookup(&domain.name) {
            KeyLookup::Ready(_) => {}
            // "no active key for D" first: the words an operator (or a probe) looks for.
            KeyLookup::Unusable(why) => {
                problems.push(format!("no active key for {}: {why}", domain.name))
            }
            KeyLookup::Unknown => {
                problems.push(format!("no active key for {}: no keys loaded", domain.name))
            }
        }
    }
    // An active key that DNS no longer serves: mail signed with it fails at receivers
    // (or, with on_dns_mismatch = "defer", waits). A failed lookup alone does not count;
    // a retiring key's record is a WARN and a metric, not a reason to take mail away.
    for seen in dns.all().iter().filter(|s| s.role == SlotState::Active) {
        if let Some(check) = seen.unserved() {
            problems.push(format!(
                "DNS does not serve {}: {}",
                seen.describe(),
                check.detail
            ));
        }
    }
    // Upstream: unready only once deliveries have been deferred, without one success,
    // for `metrics.upstream_within`. Counted from the first deferral of the streak, not
    // from the last delivery: a relay just started (or quiet all night) has none.
    let since = global().deferring_since.load(Ordering::Relaxed);
    let within = config.metrics.upstream_within.0.as_secs();
    if since != 0 && now.saturating_sub(since) > within {
        problems.push(format!(
            "deliveries deferred for over {within}s without one success"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
