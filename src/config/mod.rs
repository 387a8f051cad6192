//! Configuration: one TOML file, read with serde, unknown keys rejected, validated at start.
//!
//! Every bound the relay keeps is a field here with its default, so an operator can find
//! and change it; `config.example.toml` documents each one. Running without `--config`
//! uses [`Config::default`], which works on a laptop: loopback only, keys in `./keys`,
//! spool in `./spool`, signed mail written to `./outbox` because no upstream is set.

mod inbound;
mod keys;
mod live;
mod metrics;
mod oauth;
mod origins;
mod paths;
pub mod providers;
mod relay_space;
mod rotation;
mod units;
mod upstreams;

pub use inbound::{normalise_domains, InboundAuthConfig, InboundTlsConfig, SenderPolicyConfig};

pub use keys::Pkcs11Settings;
pub use live::LiveConfig;
pub use metrics::MetricsConfig;
pub use oauth::{AuthMethod, OAuthGrant, OAuthPreset, OAuthSettings};
pub use origins::OriginConfig;
pub use providers::{ProfileChoice, Provider, ProviderId};
pub use rotation::{OnDnsMismatch, RotationConfig, SigningMode};
pub use units::{parse_duration, parse_size, ByteSize, HumanDuration};
pub use upstreams::{RouteConfig, SigningProfileName};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the field so the operator knows where to look.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name used in the SMTP greeting, in EHLO to the upstream and in Received/Message-ID.
    pub hostname: String,
    pub smtp: SmtpConfig,
    pub spool: SpoolConfig,
    pub keys: KeysConfig,
    /// Domains to sign for; the key store may hold more (made with `keys generate`).
    /// A config file without `[[domains]]` has none; only the embedded defaults (no file)
    /// sign for example.com.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    pub delivery: DeliveryConfig,
    /// Where signed mail goes. Absent: signed messages are written to `delivery.outbox_dir`.
    pub upstream: Option<UpstreamConfig>,
    /// Several upstreams in priority order (`[[upstreams]]`); the next is tried when one
    /// is down. Use either this or `[upstream]`, which is a one-element list.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// From domains or client networks sent to named upstreams; first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Scheduled key rotation. A config file gets [`RotationConfig::default`] (DNS checks
    /// on); only the embedded defaults turn DNS checks off, for trying the relay out.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// Metrics and health endpoints (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Address and port of the inbound SMTP listener.
    pub listen: SocketAddr,
    /// Client networks allowed to relay. Everything else is refused at MAIL with 5.7.1.
    pub allowed_networks: Vec<IpNet>,
    /// Largest message accepted (advertised as SIZE; bigger ones get 552 5.3.4).
    pub max_message_size: ByteSize,
    /// Recipients per message; extra RCPTs get 452 4.5.3.
    pub max_recipients: usize,
    /// Concurrent inbound connections in total.
    pub max_connections: usize,
    /// Concurrent inbound connections from one client address.
    pub max_connections_per_client: usize,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_command_length: usize,
    /// Longest line inside a message the relay accepts at all, CRLF excluded; a longer
    /// one gets 554 5.6.0. Lines over 998 octets (RFC 5322 §2.1.1) up to it are repaired
    /// before signing (a body re-encoded as quoted-printable, a header line folded), so
    /// this is a hard cap on what one line may hold in memory, not the RFC limit.
    /// Default 65536; 998 to 1048576 (998: every long line refused, as before).
    pub max_line_length: usize,
    /// Protocol errors in one session before it is closed with 421.
    pub max_errors: usize,
    /// How long the relay waits for the next command.
    pub command_timeout: HumanDuration,
    /// How long the whole DATA transfer of one message may take.
    pub data_timeout: HumanDuration,

    // Inbound hardening (issue 4); see `inbound.rs` and config.example.toml.
    /// TLS for clients (STARTTLS, optional implicit-TLS listener). Absent: no TLS, no AUTH.
    pub tls: Option<InboundTlsConfig>,
    /// SMTP AUTH for clients, over TLS only. Absent: no AUTH.
    pub auth: Option<InboundAuthConfig>,
    /// Networks limited to some From domains; `allowed_networks` may use every domain.
    pub senders: Vec<SenderPolicyConfig>,
    /// Messages accepted in one session before MAIL gets 421 4.7.0 (the client reconnects).
    pub max_messages_per_session: usize,
    /// Longest AUTH command or SASL response line, CRLF included (RFC 4954: 12288).
    pub max_auth_line_length: usize,
    /// Largest header block of a message (Postfix header_size_limit: 100KiB); 552 5.3.4.
    pub max_header_size: ByteSize,
    /// Minimum DATA rate in bytes per second: each received chunk extends the DATA deadline
    /// (which starts at `command_timeout`) by its size over this rate, up to
    /// `data_timeout` (Postfix smtpd_min_data_rate: 500). 0 turns the rule off.
    pub min_data_rate: u64,
    /// Longest a session may last, however active; then 421 4.4.2.
    pub max_session_age: HumanDuration,
    /// At shutdown, how long a transaction in progress may take to finish before 421.
    pub shutdown_grace: HumanDuration,
    /// 8-bit bodies may go to an upstream that offers 8BITMIME as they are. When false,
    /// every 8-bit body is converted to quoted-printable before signing, whatever the
    /// upstream offers (for a later hop that cannot carry 8 bits). 8BITMIME and SMTPUTF8
    /// are advertised to clients either way (message::transport_form converts).
    pub upstream_8bitmime: bool,
    /// Longest one write to a client may take; a client that stops reading is dropped.
    pub write_timeout: HumanDuration,
    /// Connections shared by clients outside every allowed network that have not
    /// authenticated (None: a tenth of `max_connections`, at least 1); beyond it 421 4.7.0.
    pub max_outsider_connections: Option<usize>,
    /// Open-relay guard: the most public IPv4 space that `allowed_networks` and every
    /// `[[smtp.senders]]` entry may grant together, as a prefix length (8: as many
    /// addresses as one /8). Overlaps count once; loopback, RFC 1918, CGNAT and
    /// link-local do not count; IPv6 ranges that embed IPv4 (::ffff:0:0/96, 64:ff9b::/96,
    /// 2002::/16, 2001::/32) count here. 1 to 32; the whole space is refused whatever
    /// the value.
    pub public_relay_limit_ipv4: u8,
    /// The same for native IPv6 (ULA, link-local and ::1 do not count). 1 to 128.
    pub public_relay_limit_ipv6: u8,
    /// Memory for the buffers of all messages being received at once (header blocks and
    /// data on its way to the spool file; the body itself streams to disk): about 384KiB
    /// per DATA, more for a header block over 64KiB. A DATA that cannot get its share
    /// within `data_memory_wait` gets 452 4.3.1. Default 128MiB (max_connections DATA
    /// transfers at once with room to spare). Restart-only.
    pub max_data_memory: ByteSize,
    /// How long a DATA command waits for its share of `max_data_memory` before 452 4.3.1.
    /// Default 10s.
    pub data_memory_wait: HumanDuration,
    /// `[[smtp.origins]]`: per network, a domain for bare sender names and a From rewrite
    /// for private-namespace hosts (see `origins.rs`).
    pub origins: Vec<OriginConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the durable queue (created if missing).
    pub dir: PathBuf,
    /// fsync every message and the directory before answering 250. Turn off only for tests.
    pub fsync: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Key store directory: one folder per domain, a PEM file per selector, a state file.
    pub dir: PathBuf,
    /// At start, generate keys for configured domains that have none, and print the DNS
    /// records to publish. Off in production if keys are provisioned by other means.
    pub generate_missing: bool,
    /// Where private keys live: `file` (PEM files in `dir`) or `pkcs11` (a token; the
    /// state files stay in `dir` and name the token's objects). See docs/hsm.md.
    pub backend: KeyBackend,
    /// pkcs11: the PKCS#11 module (`.so`); a bare name is found by the dynamic loader.
    pub module: Option<PathBuf>,
    /// pkcs11: the label of the token holding the keys.
    pub token_label: Option<String>,
    /// pkcs11: a file holding the user PIN (mode 0600; a trailing newline is ignored).
    pub pin_file: Option<PathBuf>,
}

/// Where the relay's private keys are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyBackend {
    /// PEM files in the key store directory.
    #[default]
    File,
    /// A PKCS#11 token: keys are made and used inside it and never leave it.
    Pkcs11,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// The domain of the From header this entry signs for (d= of the signature).
    pub name: String,
    /// Add an Ed25519 signature (RFC 8463) next to the RSA one.
    #[serde(default)]
    pub ed25519: bool,
    /// The two RSA selector slots used alternately by key rotation.
    #[serde(default = "default_rsa_selectors")]
    pub rsa_selectors: [String; 2],
    /// The two Ed25519 selector slots.
    #[serde(default = "default_ed25519_selectors")]
    pub ed25519_selectors: [String; 2],
    /// Sign mail whose From is in a subdomain (`root@web01.example.com`) with this
    /// domain's keys (`d=example.com`), which DMARC's relaxed alignment (`adkim=r`, the
    /// default) accepts. On by default: a Postfix host's default sender and cron's are
    /// `user@<host name>`, and the relay exists to sign that mail. The closest configured
    /// domain decides; `doctor` warns when the DMARC record asks for strict alignment.
    #[serde(default = "default_true")]
    pub subdomains: bool,
}

fn default_true() -> bool {
    true
}

fn default_rsa_selectors() -> [String; 2] {
    ["s1".into(), "s2".into()]
}

fn default_ed25519_selectors() -> [String; 2] {
    ["e1".into(), "e2".into()]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Concurrent delivery workers; each keeps its own upstream connection open.
    pub workers: usize,
    /// First retry delay after a temporary failure; doubles per attempt.
    pub retry_initial: HumanDuration,
    /// Longest delay between two attempts.
    pub retry_max: HumanDuration,
    /// A message not delivered within this time after it was received fails.
    pub max_lifetime: HumanDuration,
    /// Where signed messages are written when no upstream is configured.
    pub outbox_dir: PathBuf,
    /// Tell the sender once that a message is still queued after this long (a DSN with
    /// `Action: delayed`). Absent: no warning.
    pub delay_warning: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: only for an upstream on loopback or a trusted network.
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name used by `[[routes]]` and in logs.
    #[serde(default = "upstreams::default_name")]
    pub name: String,
    /// Host name (also checked against the certificate) or IP address.
    pub host: String,
    #[serde(default = "default_upstream_port")]
    pub port: u16,
    #[serde(default = "default_tls_mode")]
    pub tls: TlsMode,
    /// AUTH user name; needs `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the AUTH password (first line). Never put the password in the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of extra trusted CA certificates (private CA); system roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Wait for the reply to one command (RFC 5321 §4.5.3.2 suggests 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// Close a connection that has been idle this long instead of reusing it.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Most connections open to this upstream at once, busy and idle together.
    #[serde(default = "upstreams::default_pool_size")]
    pub pool_size: usize,
    /// How mail for this upstream is signed: "standard", or "ses" (Amazon SES: one RSA
    /// signature, Date and Message-ID left out of h=). Absent: the profile of its
    /// provider (`ses` for Amazon SES), else "standard".
    #[serde(default)]
    pub profile: Option<SigningProfileName>,
    /// Which known provider this is (src/config/providers.rs). Absent: recognised from
    /// `host`; set it when the host name does not show it (a proxy, a tunnel).
    #[serde(default)]
    pub provider: Option<ProviderId>,
    /// Allow `tls = "none"` to a host that is not on loopback (a trusted network only).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// More header fields to leave out of h= (ones this upstream rewrites).
    #[serde(default)]
    pub unsigned_headers: Vec<String>,
    /// "password" (the default: AUTH with username and password_file when set) or
    /// "oauth2" (AUTH XOAUTH2 as username with a token the relay fetches; see
    /// src/config/oauth.rs and docs/upstreams.md).
    #[serde(default)]
    pub auth: Option<AuthMethod>,
    /// OAuth: "microsoft365" (with `tenant`) or "google" fills token_url and scope.
    #[serde(default)]
    pub oauth2_preset: Option<OAuthPreset>,
    /// OAuth, Microsoft 365: the directory (tenant) id or the tenant's domain.
    #[serde(default)]
    pub tenant: Option<String>,
    /// OAuth: the token endpoint (https://); overrides the preset's.
    #[serde(default)]
    pub token_url: Option<String>,
    /// OAuth client-credentials grant: the application (client) id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OAuth client-credentials grant: file holding the client secret (first line).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// OAuth JWT bearer grant: a Google service-account JSON key file.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// OAuth: the scope to ask for; overrides the preset's.
    #[serde(default)]
    pub scope: Option<String>,
}

fn default_upstream_port() -> u16 {
    587
}
fn default_tls_mode() -> TlsMode {
    TlsMode::Starttls
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// The domain the embedded defaults sign for (RFC 2606 reserves it, so nothing real breaks).
pub const DEFAULT_DOMAIN: &str = "example.com";

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: system_hostname(),
            smtp: SmtpConfig::default(),
            spool: SpoolConfig::default(),
            keys: KeysConfig::default(),
            domains: vec![DomainConfig {
                name: DEFAULT_DOMAIN.into(),
                ed25519: true,
                rsa_selectors: default_rsa_selectors(),
                ed25519_selectors: default_ed25519_selectors(),
                subdomains: true,
            }],
            delivery: DeliveryConfig::default(),
            upstream: None,
            upstreams: Vec::new(),
            routes: Vec::new(),
            // Trying it out on a laptop: example.com is not ours to publish in, so keys
            // activate without a DNS check. A config file gets the safe default.
            rotation: RotationConfig {
                dns_check: false,
                propagation_wait: HumanDuration(Duration::ZERO),
                ..RotationConfig::default()
            },
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            allowed_networks: vec![
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
            ],
            max_message_size: ByteSize(25_000_000),
            max_recipients: 1000,
            max_connections: 200,
            max_connections_per_client: 50,
            max_command_length: 512,
            max_line_length: 65_536,
            max_errors: 20,
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(600)),
            tls: None,
            auth: None,
            senders: Vec::new(),
            max_messages_per_session: 100,
            max_auth_line_length: 12_288,
            max_header_size: ByteSize(102_400),
            min_data_rate: 500,
            max_session_age: HumanDuration(Duration::from_secs(3600)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            upstream_8bitmime: true,
            write_timeout: HumanDuration(Duration::from_secs(60)),
            max_outsider_connections: None,
            public_relay_limit_ipv4: 8,
            public_relay_limit_ipv6: 32,
            max_data_memory: ByteSize(128 << 20),
            data_memory_wait: HumanDuration(Duration::from_secs(10)),
            origins: Vec::new(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            fsync: true,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: PathBuf::from("keys"),
            generate_missing: true,
            backend: KeyBackend::File,
            module: None,
            token_label: None,
            pin_file: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            workers: 4,
            retry_initial: HumanDuration(Duration::from_secs(60)),
            retry_max: HumanDuration(Duration::from_secs(3600)),
            max_lifetime: HumanDuration(Duration::from_secs(5 * 86_400)),
            outbox_dir: PathBuf::from("outbox"),
            delay_warning: None,
        }
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        Self::from_file_text(path, &text)
    }

    /// Parses and validates config text; relative paths stay relative to the current
    /// directory (a file's are resolved by [`Config::from_file_text`]).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config = Self::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| format!("line {}", line_of(text, s.start)))
                .unwrap_or_else(|| "config".into());
            ConfigError::new(field, e.message().to_string())
        })
    }

    /// Checks every field for values that would make the relay unsafe or unusable, and
    /// normalises domain names to lower case.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        // It is written into the greeting, EHLO and every Received and Message-ID field:
        // a CR or LF here would inject header fields into every message.
        if !is_dns_name(self.hostname.trim_end_matches('.')) {
            return Err(ConfigError::new(
                "hostname",
                format!(
                    "\"{}\" is not a host name (letters, digits, hyphens and dots only)",
                    self.hostname.escape_default()
                ),
            ));
        }
        self.smtp.validate()?;
        self.smtp.validate_inbound()?;
        let mut seen = std::collections::HashSet::new();
        for (i, domain) in self.domains.iter_mut().enumerate() {
            domain.validate(i)?;
            if !seen.insert(domain.name.clone()) {
                return Err(ConfigError::new(
                    format!("domains[{i}].name"),
                    format!("{} is listed twice", domain.name),
                ));
            }
        }
        self.delivery.validate()?;
        if let Some(upstream) = &self.upstream {
            upstream.validate()?;
        }
        self.validate_upstreams()?;
        self.rotation.validate()?;
        self.keys.validate()?;
        self.validate_signature_limits()?;
        Ok(())
    }

    /// The settings of one domain, if it is configured.
    pub fn domain(&self, name: &str) -> Option<&DomainConfig> {
        self.domains.iter().find(|d| d.name == name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(0)
}

impl SmtpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("smtp.max_message_size", self.max_message_size.0 as usize),
            ("smtp.max_recipients", self.max_recipients),
            ("smtp.max_connections", self.max_connections),
            (
                "smtp.max_connections_per_client",
                self.max_connections_per_client,
            ),
            ("smtp.max_errors", self.max_errors),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        // Lines over 998 are repaired, not relayed: the cap bounds what one line holds
        // in memory while the body is walked.
        if !(998..=1_048_576).contains(&self.max_line_length) {
            return Err(ConfigError::new(
                "smtp.max_line_length",
                "must be between 998 (RFC 5322 §2.1.1: every longer line refused) and 1048576; lines over 998 up to it are re-encoded or folded before signing",
            ));
        }
        if !(512..=65_536).contains(&self.max_command_length) {
            return Err(ConfigError::new(
                "smtp.max_command_length",
                "must be between 512 (RFC 5321 §4.5.3.1.4) and 65536",
            ));
        }
        for (field, d) in [
            ("smtp.command_timeout", self.command_timeout),
            ("smtp.data_timeout", self.data_timeout),
        ] {
            if d.0 < Duration::from_secs(1) {
                return Err(ConfigError::new(field, "must be at least 1s"));
            }
        }
        Ok(())
    }

    /// Validation of the inbound hardening fields (and normalisation of their domains).
    fn validate_inbound(&mut self) -> Result<(), ConfigError> {
        for (i, origin) in self.origins.iter_mut().enumerate() {
            origin.validate(i)?;
        }
        inbound::validate_limits(self)
    }
}

impl DomainConfig {
    fn validate(&mut self, i: usize) -> Result<(), ConfigError> {
        self.name = crate::domain::Domain::parse(&self.name)
            .map_err(|e| ConfigError::new(format!("domains[{i}].name"), e.to_string()))?
            .into_string();
        for (field, pair) in [
            ("rsa_selectors", &self.rsa_selectors),
            ("ed25519_selectors", &self.ed25519_selectors),
        ] {
            for s in pair.iter() {
                if !is_dns_label(s) {
                    return Err(ConfigError::new(
                        format!("domains[{i}].{field}"),
                        format!("\"{s}\" is not a valid selector (letters, digits, hyphens)"),
                    ));
                }
            }
            if pair[0] == pair[1] {
                return Err(ConfigError::new(
                    format!("domains[{i}].{field}"),
                    "the two slots must differ, or rotation has nowhere to go",
                ));
            }
        }
        let rsa = &self.rsa_selectors;
        if self.ed25519_selectors.iter().any(|s| rsa.contains(s)) {
            return Err(ConfigError::new(
                format!("domains[{i}].ed25519_selectors"),
                "must not reuse an RSA selector: each selector publishes one key",
            ));
        }
        Ok(())
    }
}

impl DeliveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::new("delivery.workers", "must be at least 1"));
        }
        if self.retry_initial > self.retry_max {
            return Err(ConfigError::new(
                "delivery.retry_initial",
                format!("is longer than delivery.retry_max ({})", self.retry_max),
            ));
        }
        if self.max_lifetime <= self.retry_initial {
            return Err(ConfigError::new(
                "delivery.max_lifetime",
                "must be longer than delivery.retry_initial, or nothing is ever retried",
            ));
        }
        Ok(())
    }
}

impl UpstreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::new("upstream.host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(ConfigError::new("upstream.port", "must not be 0"));
        }
        self.validate_auth()?;
        match (&self.username, &self.password_file) {
            (Some(_), None) if self.auth_method() == AuthMethod::Password => {
                return Err(ConfigError::new(
                    "upstream.password_file",
                    "is required when upstream.username is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "upstream.username",
                    "is required when upstream.password_file is set",
                ))
            }
            _ => {}
        }
        if self.username.is_some() && self.tls == TlsMode::None && !self.host_is_loopback() {
            return Err(ConfigError::new(
                "upstream.tls",
                "\"none\" would send the password in clear text to a remote host",
            ));
        }
        if self.tls == TlsMode::None && !self.host_is_loopback() && !self.allow_plaintext {
            return Err(ConfigError::new(
                "upstream.tls",
                format!("\"none\" sends mail in clear text to {}, which is not on loopback: use \"starttls\" or \"implicit\", or set allow_plaintext = true for a trusted network", self.host),
            ));
        }
        if let Some(path) = &self.password_file {
            std::fs::metadata(path).map_err(|e| {
                ConfigError::new("upstream.password_file", format!("{}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &self.ca_file {
            std::fs::metadata(path).map_err(|e| {
                ConfigError::new("upstream.ca_file", format!("{}: {e}", path.display()))
            })?;
        }
        Ok(())
    }

    pub fn host_is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

pub use crate::domain::{is_dns_label, is_dns_name};

#[cfg(test)]
mod tests;
