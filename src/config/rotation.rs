//! `[rotation]`: scheduled dual-selector key rotation (DESIGN §6).

use super::{ConfigError, HumanDuration};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the running relay does when its DNS watch finds that an active (or, with
/// `signing = "all-published"`, any signing) selector is not served (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDnsMismatch {
    /// Log a WARN, set the metric, fail /readyz; keep sending.
    Alert,
    /// All of that, and hold the domain's mail in the queue (deferred, reason in
    /// `queue list`) until DNS serves the key again: no signatures that cannot verify.
    Defer,
}

impl OnDnsMismatch {
    /// The value as written in the config file, for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDnsMismatch::Alert => "alert",
            OnDnsMismatch::Defer => "defer",
        }
    }
}

/// Which keys sign (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigningMode {
    /// Only the active key of each algorithm.
    Active,
    /// Every active and published key: "sign with both, replace one at a time".
    AllPublished,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Run rotation inside `serve`. Off where one central job runs `keys rotate --due`.
    pub enabled: bool,
    /// Age of the active keys after which they are replaced.
    pub interval: HumanDuration,
    /// With DNS checks off: time after publishing before a key counts as published.
    pub propagation_wait: HumanDuration,
    /// How long a replaced key stays published and kept after the switch.
    pub grace: HumanDuration,
    /// The longest time the upstream may keep retrying a message we handed it; the grace
    /// period must cover it, or its last retries would carry a signature DNS no longer
    /// serves. Amazon SES and most providers retry well under a day; Postfix 5 days.
    pub upstream_retry_window: HumanDuration,
    /// Activate a key only once DNS is seen to serve exactly it.
    pub dns_check: bool,
    /// How often a pending key's record is looked up again.
    pub dns_recheck: HumanDuration,
    /// How often `serve` looks up every active and retiring selector again, to notice a
    /// record deleted or edited after activation. Each wait is jittered by up to ±10% so
    /// relays sharing a key store do not query in step. Needs `dns_check`.
    pub dns_watch: HumanDuration,
    /// What a selector found unserved by that watch does to the domain's mail.
    pub on_dns_mismatch: OnDnsMismatch,
    /// DNS server (ip:port) for those lookups; default: the system resolver.
    pub resolver: Option<SocketAddr>,
    /// Executable run with DKIM_RELAY_ACTION=publish|revoke and the record in its
    /// environment (like certbot's manual hooks). Failures are retried; rotation waits.
    pub publish_hook: Option<PathBuf>,
    /// How long the publish hook may run before it is killed and counted as failed.
    pub hook_timeout: HumanDuration,
    /// A rotation that has waited this long for its new key to be published is stuck:
    /// `keys check` exits non-zero and `doctor` reports an error.
    pub stuck_after: HumanDuration,
    /// How often `serve` runs the planner.
    pub check_every: HumanDuration,
    pub signing: SigningMode,
}

/// The shortest grace period accepted. A message signed with the old key in the last
/// moment before the switch must still find that key in DNS when it is verified: the
/// delivery attempt already under way (connect, TLS and command timeouts, minutes), other
/// relays sharing the key store reloading it (up to a minute), and the receiving MTA's own
/// queue and content scanning before its DKIM check (minutes, up to an hour under load).
/// One hour covers these; `upstream_retry_window` adds the upstream's retries on top.
pub const MIN_GRACE: Duration = Duration::from_secs(3600);

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(90 * 86_400)),
            propagation_wait: HumanDuration(Duration::from_secs(3600)),
            grace: HumanDuration(Duration::from_secs(7 * 86_400)),
            upstream_retry_window: HumanDuration(Duration::from_secs(5 * 86_400)),
            dns_check: true,
            dns_recheck: HumanDuration(Duration::from_secs(300)),
            dns_watch: HumanDuration(Duration::from_secs(600)),
            on_dns_mismatch: OnDnsMismatch::Alert,
            resolver: None,
            publish_hook: None,
            hook_timeout: HumanDuration(Duration::from_secs(60)),
            stuck_after: HumanDuration(Duration::from_secs(86_400)),
            check_every: HumanDuration(Duration::from_secs(300)),
            signing: SigningMode::Active,
        }
    }
}

impl RotationConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.grace.0 < MIN_GRACE {
            return Err(ConfigError::new(
                "rotation.grace",
                format!(
                    "is shorter than {}: a message signed with the old key just before the switch may still be on its way (the delivery attempt under way, other relays reloading the key store, the receiver's queue before its DKIM check) and would fail verification once the key is revoked; set rotation.grace to at least 1h",
                    HumanDuration(MIN_GRACE)
                ),
            ));
        }
        if self.hook_timeout.0 < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "rotation.hook_timeout",
                "must be at least 1s",
            ));
        }
        if self.grace < self.upstream_retry_window {
            return Err(ConfigError::new(
                "rotation.grace",
                format!(
                    "is shorter than rotation.upstream_retry_window ({}): mail the upstream retries would carry a signature DNS no longer serves",
                    self.upstream_retry_window
                ),
            ));
        }
        if self.interval <= self.grace {
            return Err(ConfigError::new(
                "rotation.interval",
                "must be longer than rotation.grace, or a rotation finds the other slot still retiring",
            ));
        }
        if self.check_every.0 < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "rotation.check_every",
                "must be at least 1s",
            ));
        }
        if self.dns_watch.0 < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "rotation.dns_watch",
                "must be at least 1s (it is how often every active selector is looked up)",
            ));
        }
        if self.on_dns_mismatch == OnDnsMismatch::Defer && !self.dns_check {
            return Err(ConfigError::new(
                "rotation.on_dns_mismatch",
                "is \"defer\" but rotation.dns_check is false, so DNS is never looked up and nothing would be deferred: set dns_check = true or on_dns_mismatch = \"alert\"",
            ));
        }
        if let Some(hook) = &self.publish_hook {
            let meta = std::fs::metadata(hook).map_err(|e| {
                ConfigError::new("rotation.publish_hook", format!("{}: {e}", hook.display()))
            })?;
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o111 == 0 {
                return Err(ConfigError::new(
                    "rotation.publish_hook",
                    format!("{} is not executable", hook.display()),
                ));
            }
        }
        Ok(())
    }
}
