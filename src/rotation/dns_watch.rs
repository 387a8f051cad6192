//! The DNS watch inside `serve` (DESIGN §6, issue 15): every `rotation.dns_watch`
//! (jittered), each active and retiring selector of every domain in the key store is looked
//! up through the configured resolver with the check activation uses
//! ([`DnsChecker::check`]), so a record deleted or edited after activation is noticed.
//! Results go to [`DnsSeen`] (read by /metrics, /readyz and delivery); each change is
//! logged: WARN when a selector in use stops being served or serves another key, INFO when
//! it is served again. It never takes the key-store lock: it only reads the state files.

use super::dns::DnsChecker;
use crate::config::{LiveConfig, OnDnsMismatch};
use crate::keys::{DnsSeen, KeyStore, SelectorSeen, Served, SlotState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one lookup changed for one selector, compared with the pass before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing new: still served, still unserved in the same way, or still failing.
    Steady,
    /// DNS no longer serves our key (or never did since the relay started watching), or
    /// now serves something else than what it served wrongly before.
    Lost,
    /// The lookup failed where it used to get an answer; the last answer still counts.
    Unknown,
    /// DNS serves our key again after a loss.
    Recovered,
}

/// The one `match` of the watch's states: `answer` is what the last answered lookup found
/// (None before the first), `last` what the last lookup found, `now` this lookup.
pub fn change(answer: Option<Served>, last: Option<Served>, now: Served) -> Change {
    match (answer, now) {
        (_, Served::Unknown) if last == Some(Served::Unknown) => Change::Steady,
        (_, Served::Unknown) => Change::Unknown,
        (None | Some(Served::Ours) | Some(Served::Unknown), Served::Ours) => Change::Steady,
        (Some(Served::Missing) | Some(Served::Other), Served::Ours) => Change::Recovered,
        (Some(before), Served::Missing | Served::Other) if before == now => Change::Steady,
        (_, Served::Missing | Served::Other) => Change::Lost,
    }
}

/// One selector's result in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    pub seen: SelectorSeen,
    pub change: Change,
}

/// Looks up every active and retiring selector once at `now` (Unix seconds), records the
/// results in `board` and logs what changed. Returns every selector's result.
pub async fn pass(
    store: &KeyStore,
    checker: &DnsChecker,
    board: &DnsSeen,
    mode: OnDnsMismatch,
    now: u64,
) -> Vec<Looked> {
    let mut out = Vec::new();
    let domains = match store.domains() {
        Ok(domains) => domains,
        Err(e) => {
            tracing::error!(error = %e, "DNS watch cannot list the key store; keeping the last results");
            return out;
        }
    };
    for domain in domains {
        let state = match store.load(&domain) {
            Ok(Some(state)) => state,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(domain = %domain, error = %e, "DNS watch cannot read the domain's keys");
                continue;
            }
        };
        for slot in state
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Active | SlotState::Retiring))
        {
            let record = match store.record(&domain, slot) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(domain = %domain, selector = %slot.selector, error = %e, "DNS watch cannot read the key");
                    continue;
                }
            };
            let expected = crate::keys::public_key_bytes(&record).unwrap_or_default();
            let check = checker
                .check(&record.name, slot.algorithm, &expected, now)
                .await;
            let before = board.get(&domain, &slot.selector);
            let served = Served::of(check.outcome);
            let change = change(
                before
                    .as_ref()
                    .and_then(|b| b.answer.as_ref())
                    .map(|c| Served::of(c.outcome)),
                before.as_ref().map(|b| Served::of(b.last.outcome)),
                served,
            );
            let answer = match served {
                Served::Unknown => before.and_then(|b| b.answer),
                Served::Ours | Served::Missing | Served::Other => Some(check.clone()),
            };
            let seen = SelectorSeen {
                domain: domain.clone(),
                selector: slot.selector.clone(),
                algorithm: slot.algorithm,
                role: slot.state,
                last: check,
                answer,
            };
            out.push(Looked { seen, change });
        }
    }
    // The board first, then the log: whoever reads a WARN finds /readyz, the metric and
    // the hold already saying the same.
    board.replace(
        out.iter().map(|l| l.seen.clone()).collect(),
        mode == OnDnsMismatch::Defer,
    );
    for looked in &out {
        log_change(&looked.seen, looked.change, mode);
    }
    out
}

fn log_change(seen: &SelectorSeen, change: Change, mode: OnDnsMismatch) {
    // Display (`%`), not Debug: log fields are words, unquoted, as elsewhere.
    let (domain, selector, algorithm, role) = (
        tracing::field::display(&seen.domain),
        tracing::field::display(&seen.selector),
        tracing::field::display(seen.algorithm.dns_k()),
        tracing::field::display(seen.role.as_str()),
    );
    let dns = tracing::field::display(Served::of(seen.last.outcome).as_str());
    let detail = tracing::field::display(&seen.last.detail);
    match change {
        Change::Steady => {
            tracing::debug!(
                domain,
                selector,
                algorithm,
                role,
                dns,
                "DNS watch: unchanged"
            )
        }
        Change::Lost => {
            let effect = match (mode, seen.role) {
                (OnDnsMismatch::Defer, SlotState::Active) => {
                    "the domain's mail is held in the queue until DNS serves the key again"
                }
                (OnDnsMismatch::Alert, SlotState::Active) => {
                    "mail is still sent, and receivers cannot verify its signature with this key"
                }
                _ => "mail the upstream still retries carries a signature receivers cannot verify",
            };
            let effect = tracing::field::display(effect);
            tracing::warn!(domain, selector, algorithm, role, dns, detail, effect, "DNS no longer serves a DKIM key in use: publish its record again (`dkim-relay keys dns`)")
        }
        Change::Unknown => {
            tracing::warn!(
                domain,
                selector,
                algorithm,
                role,
                dns,
                detail,
                "DNS watch cannot look the key up; keeping the last answer"
            )
        }
        Change::Recovered => {
            tracing::info!(
                domain,
                selector,
                algorithm,
                role,
                dns,
                "DNS serves the DKIM key again"
            )
        }
    }
}

/// `base` stretched or shrunk by up to 10% by `random` (any u32), so relays started
/// together do not query in step.
pub fn jittered(base: Duration, random: u32) -> Duration {
    let unit = f64::from(random) / f64::from(u32::MAX);
    base.mul_f64(0.9 + 0.2 * unit)
}

/// The watch task: a pass at once, then one every `rotation.dns_watch` (read afresh from
/// the live config each time), until `shutdown`. `release` is called when held mail may
/// go: after a pass in `defer` mode in which a selector was served again, and within a
/// second of a reload that turned `defer` into `alert` (or the watch off).
pub async fn run(
    live: Arc<LiveConfig>,
    store: KeyStore,
    board: Arc<DnsSeen>,
    release: impl Fn() + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut announced: Option<(bool, crate::config::HumanDuration, OnDnsMismatch)> = None;
    loop {
        let config = live.current();
        let r = &config.rotation;
        let settings = (r.dns_check, r.dns_watch, r.on_dns_mismatch);
        let was_holding =
            announced.is_some_and(|(check, _, mode)| check && mode == OnDnsMismatch::Defer);
        let holds = r.dns_check && r.on_dns_mismatch == OnDnsMismatch::Defer;
        if was_holding && !holds {
            board.replace(board.all(), false);
            release();
        }
        if announced != Some(settings) {
            announced = Some(settings);
            if r.dns_check {
                tracing::info!(every = %r.dns_watch, on_dns_mismatch = r.on_dns_mismatch.as_str(), "DNS watch: every active and retiring selector is looked up again on this schedule");
            } else {
                tracing::info!("DNS watch off: rotation.dns_check is false");
            }
        }
        if r.dns_check {
            match DnsChecker::new(r.resolver) {
                Ok(checker) => {
                    let now = crate::clock::now_unix();
                    let looked = tokio::select! {
                        looked = pass(&store, &checker, &board, r.on_dns_mismatch, now) => looked,
                        _ = shutdown.changed() => return,
                    };
                    if holds && looked.iter().any(|l| l.change == Change::Recovered) {
                        release();
                    }
                }
                Err(e) => tracing::error!(error = %e, "DNS watch cannot build its resolver"),
            }
        } else {
            board.replace(Vec::new(), false);
        }
        let wait = jittered(r.dns_watch.0, getrandom::u32().unwrap_or(u32::MAX / 2));
        let deadline = tokio::time::Instant::now() + wait;
        // LiveConfig has no change signal: look at it every second, so a reload of the
        // watch's settings (defer -> alert releases held mail) applies within a second,
        // not after a whole wait.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let r = &live.current().rotation;
                    if (r.dns_check, r.dns_watch, r.on_dns_mismatch) != settings {
                        break;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Served::{Missing, Other, Ours, Unknown};

    #[test]
    fn each_way_a_selector_can_go_is_one_change() {
        // First look.
        assert_eq!(change(None, None, Ours), Change::Steady);
        assert_eq!(change(None, None, Missing), Change::Lost);
        assert_eq!(change(None, None, Unknown), Change::Unknown);
        // Served -> deleted -> back.
        assert_eq!(change(Some(Ours), Some(Ours), Ours), Change::Steady);
        assert_eq!(change(Some(Ours), Some(Ours), Missing), Change::Lost);
        assert_eq!(
            change(Some(Missing), Some(Missing), Missing),
            Change::Steady
        );
        assert_eq!(
            change(Some(Missing), Some(Missing), Ours),
            Change::Recovered
        );
        // Edited to another key, then deleted: both are news.
        assert_eq!(change(Some(Ours), Some(Ours), Other), Change::Lost);
        assert_eq!(change(Some(Other), Some(Other), Missing), Change::Lost);
        // A failing resolver is said once, and the answer before it still counts.
        assert_eq!(change(Some(Ours), Some(Ours), Unknown), Change::Unknown);
        assert_eq!(change(Some(Ours), Some(Unknown), Unknown), Change::Steady);
        assert_eq!(change(Some(Ours), Some(Unknown), Ours), Change::Steady);
        assert_eq!(
            change(Some(Missing), Some(Unknown), Ours),
            Change::Recovered
        );
        assert_eq!(
            change(Some(Missing), Some(Unknown), Missing),
            Change::Steady
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(600);
        assert_eq!(jittered(base, 0), Duration::from_secs(540));
        assert_eq!(jittered(base, u32::MAX), Duration::from_secs(660));
        let mid = jittered(base, u32::MAX / 2);
        assert!(mid > Duration::from_secs(599) && mid < Duration::from_secs(601));
    }
}
