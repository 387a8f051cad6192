//! Inbound hardening settings (issue 4): TLS offered to clients, AUTH, which From domains
//! each network and user may send as, and the limits that keep hostile clients from
//! holding the relay's slots. They live apart from the basic `[smtp]` fields so the
//! security rules can be read in one place.

use super::{ConfigError, HumanDuration};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[smtp.tls]`: the certificate the relay presents to its clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundTlsConfig {
    /// PEM certificate chain, leaf first. Re-read when its modification time changes.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Re-read with the certificate.
    pub key_file: PathBuf,
    /// Refuse MAIL (530 5.7.0) until the client has started TLS. Default false.
    #[serde(default)]
    pub require_tls: bool,
    /// A second listener speaking TLS from the first byte (port 465, RFC 8314). Default none.
    #[serde(default)]
    pub implicit_listen: Option<SocketAddr>,
    /// How often the two files are checked for changes. Default 30s.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: HumanDuration,
    /// Longest a TLS handshake may take. Default 30s.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
}

/// `[smtp.auth]`: SMTP AUTH (PLAIN, LOGIN) for clients, offered only over TLS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAuthConfig {
    /// TOML file of `[[users]]` with `name`, `password_hash` (argon2 PHC string, made with
    /// `dkim-relay auth hash-password`) and `from_domains`.
    pub users_file: PathBuf,
    /// Wait before answering a failed AUTH with 535 (slows guessing). Default 2s.
    #[serde(default = "default_failure_delay")]
    pub failure_delay: HumanDuration,
    /// Failed AUTHs from one client address within `failure_window` before AUTH from that
    /// address is refused with 454 4.7.0 until the window passes. Default 5.
    #[serde(default = "default_max_failures")]
    pub max_failures: usize,
    /// Default 15m.
    #[serde(default = "default_failure_window")]
    pub failure_window: HumanDuration,
    /// Password checks (argon2id, about 19 MiB each) running at once. Default: the number
    /// of CPU cores.
    #[serde(default = "default_check_workers")]
    pub check_workers: usize,
    /// Password checks waiting for a worker; an AUTH beyond them gets 454 4.7.0 at once.
    /// Default 16.
    #[serde(default = "default_check_queue")]
    pub check_queue: usize,
    /// Client addresses (IPv4, IPv6 /64) whose failures are remembered; past it the ones
    /// idle longest are forgotten first. Default 100000.
    #[serde(default = "default_max_tracked_clients")]
    pub max_tracked_clients: usize,
}

/// `[[smtp.senders]]`: the From domains clients in some networks may send as, for
/// networks that must not use every domain the relay signs for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderPolicyConfig {
    /// Client networks (CIDR) this entry covers; they may relay (no need to repeat them in
    /// `allowed_networks`). The longest matching prefix over both lists decides.
    pub networks: Vec<IpNet>,
    /// Exact domains (a subdomain only when listed itself), or `"*"` for any domain the
    /// relay signs for. Checked against the header From and a non-empty MAIL FROM.
    pub from_domains: Vec<String>,
}

fn default_reload_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_failure_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_max_failures() -> usize {
    5
}
fn default_failure_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_check_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_check_queue() -> usize {
    16
}
fn default_max_tracked_clients() -> usize {
    100_000
}

impl InboundTlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (field, path) in [
            ("smtp.tls.cert_file", &self.cert_file),
            ("smtp.tls.key_file", &self.key_file),
        ] {
            std::fs::metadata(path)
                .map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
        }
        if self.reload_interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "smtp.tls.reload_interval",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

impl InboundAuthConfig {
    pub(super) fn validate(&self, tls: bool) -> Result<(), ConfigError> {
        if !tls {
            return Err(ConfigError::new(
                "smtp.auth",
                "needs [smtp.tls]: AUTH is offered only over TLS",
            ));
        }
        std::fs::metadata(&self.users_file).map_err(|e| {
            ConfigError::new(
                "smtp.auth.users_file",
                format!("{}: {e}", self.users_file.display()),
            )
        })?;
        for (field, value) in [
            ("smtp.auth.max_failures", self.max_failures),
            ("smtp.auth.check_workers", self.check_workers),
            ("smtp.auth.max_tracked_clients", self.max_tracked_clients),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Lower-cases domain entries and checks them; `field` names the list for errors.
pub fn normalise_domains(field: &str, domains: &mut [String]) -> Result<(), ConfigError> {
    for (j, d) in domains.iter_mut().enumerate() {
        *d = crate::domain::normalise(d);
        // "*.example.com": every subdomain of example.com (not example.com itself).
        let name = d.strip_prefix("*.").unwrap_or(d);
        if d != "*" && !(super::is_dns_name(name) && name.contains('.')) {
            return Err(ConfigError::new(
                format!("{field}[{j}]"),
                format!("\"{d}\" is not a domain name (or \"*\", or \"*.\" and a domain)"),
            ));
        }
    }
    Ok(())
}

impl SenderPolicyConfig {
    pub(super) fn validate(&mut self, i: usize) -> Result<(), ConfigError> {
        if self.networks.is_empty() {
            return Err(ConfigError::new(
                format!("smtp.senders[{i}].networks"),
                "must list at least one network",
            ));
        }
        normalise_domains(
            &format!("smtp.senders[{i}].from_domains"),
            &mut self.from_domains,
        )
    }
}

/// Checks the limit fields added for inbound hardening.
pub(super) fn validate_limits(smtp: &mut super::SmtpConfig) -> Result<(), ConfigError> {
    if smtp.max_messages_per_session == 0 {
        return Err(ConfigError::new(
            "smtp.max_messages_per_session",
            "must be at least 1",
        ));
    }
    if !(smtp.max_command_length..=65_536).contains(&smtp.max_auth_line_length) {
        return Err(ConfigError::new(
            "smtp.max_auth_line_length",
            "must be between smtp.max_command_length and 65536",
        ));
    }
    if smtp.max_header_size.0 < 1024 {
        return Err(ConfigError::new(
            "smtp.max_header_size",
            "must be at least 1KB",
        ));
    }
    let largest = crate::spool::largest_transfer(smtp.max_header_size.0);
    if smtp.max_data_memory.0 < largest {
        return Err(ConfigError::new(
            "smtp.max_data_memory",
            format!(
                "must hold at least one message with the largest header block: {largest} bytes"
            ),
        ));
    }
    if smtp.max_session_age.0 < smtp.command_timeout.0 {
        return Err(ConfigError::new(
            "smtp.max_session_age",
            "must be at least smtp.command_timeout",
        ));
    }
    if smtp.write_timeout.0 < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "smtp.write_timeout",
            "must be at least 1s",
        ));
    }
    if let Some(n) = smtp.max_outsider_connections {
        if n == 0 || n > smtp.max_connections {
            return Err(ConfigError::new(
                "smtp.max_outsider_connections",
                "must be between 1 and smtp.max_connections",
            ));
        }
    }
    if let Some(tls) = &smtp.tls {
        tls.validate()?;
    }
    if let Some(auth) = &smtp.auth {
        auth.validate(smtp.tls.is_some())?;
    }
    for (i, policy) in smtp.senders.iter_mut().enumerate() {
        policy.validate(i)?;
    }
    super::relay_space::check(smtp)
}

impl super::SmtpConfig {
    /// Connections open at once to clients outside every allowed network that have not
    /// authenticated: `max_outsider_connections`, or a tenth of `max_connections`.
    pub fn outsider_budget(&self) -> usize {
        self.max_outsider_connections
            .unwrap_or((self.max_connections / 10).max(1))
    }
}
