//! The hosted providers the relay knows, in one table: how to recognise each by the
//! upstream's host name, the SPF include it needs, how many DKIM-Signature fields it
//! takes, and the signing profile that follows. Config validation (the SES signature
//! limit), delivery (the profile an upstream gets), `doctor`'s SPF check and
//! docs/upstreams.md all read this table; nothing else lists providers.

use super::upstreams::SigningProfileName;
use super::{Config, ConfigError, DomainConfig, SigningMode, UpstreamConfig};
use serde::Deserialize;

/// A provider by its config spelling (`provider = "ses"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderId {
    Ses,
    Sendgrid,
    Microsoft365,
    Google,
    Mailgun,
}

/// How a host name is matched, case-insensitively and without a trailing dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name, or any name under it (`smtp.eu.mailgun.org` under `mailgun.org`).
    Under(&'static str),
    /// `prefix` + one DNS label + `suffix`: `email-smtp.` + region + `.amazonaws.com`.
    OneLabel(&'static str, &'static str),
}

impl HostPattern {
    fn matches(self, host: &str) -> bool {
        match self {
            HostPattern::Under(name) => {
                host == name || host.strip_suffix(name).is_some_and(|h| h.ends_with('.'))
            }
            HostPattern::OneLabel(prefix, suffix) => host
                .strip_prefix(prefix)
                .and_then(|h| h.strip_suffix(suffix))
                .is_some_and(super::is_dns_label),
        }
    }

    /// The pattern as docs write it.
    pub fn text(self) -> String {
        match self {
            HostPattern::Under(name) => format!("{name} (and names under it)"),
            HostPattern::OneLabel(prefix, suffix) => format!("{prefix}REGION{suffix}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Provider {
    pub id: ProviderId,
    pub name: &'static str,
    pub hosts: &'static [HostPattern],
    /// What the From domain's SPF record must include (`include:…`).
    pub spf_include: &'static str,
    /// Most DKIM-Signature fields a message may carry; None: no limit known.
    pub max_signatures: Option<usize>,
    /// The profile an upstream of this provider gets unless `profile` is set.
    pub profile: SigningProfileName,
    pub notes: &'static str,
}

pub const PROVIDERS: &[Provider] = &[
    Provider {
        id: ProviderId::Ses,
        name: "Amazon SES",
        hosts: &[
            HostPattern::OneLabel("email-smtp.", ".amazonaws.com"),
            HostPattern::OneLabel("email-smtp-fips.", ".amazonaws.com"),
        ],
        spf_include: "amazonses.com",
        max_signatures: Some(1),
        profile: SigningProfileName::Ses,
        notes: "refuses a second DKIM-Signature (\"554 Transaction failed: Duplicate header 'DKIM-Signature'\") and rewrites Date and Message-ID: one RSA signature, those two left out of h=",
    },
    Provider {
        id: ProviderId::Sendgrid,
        name: "SendGrid",
        hosts: &[HostPattern::Under("sendgrid.net")],
        spf_include: "sendgrid.net",
        max_signatures: None,
        profile: SigningProfileName::Standard,
        notes: "its domain authentication uses the selectors s1/s2, the relay's defaults: give the relay others; turn off click and open tracking",
    },
    Provider {
        id: ProviderId::Microsoft365,
        name: "Microsoft 365",
        hosts: &[
            HostPattern::Under("office365.com"),
            HostPattern::Under("outlook.com"),
        ],
        spf_include: "spf.protection.outlook.com",
        max_signatures: None,
        profile: SigningProfileName::Standard,
        notes: "Basic authentication for SMTP AUTH is being retired; the connector (TENANT.mail.protection.outlook.com, port 25, no AUTH) needs no password",
    },
    Provider {
        id: ProviderId::Google,
        name: "Google Workspace",
        hosts: &[
            HostPattern::Under("gmail.com"),
            HostPattern::Under("googlemail.com"),
        ],
        spf_include: "_spf.google.com",
        max_signatures: None,
        profile: SigningProfileName::Standard,
        notes: "smtp-relay.gmail.com takes mail from the organisation's IP addresses or with AUTH; Gmail does not verify Ed25519, RSA always goes along",
    },
    Provider {
        id: ProviderId::Mailgun,
        name: "Mailgun",
        hosts: &[HostPattern::Under("mailgun.org")],
        spf_include: "mailgun.org",
        max_signatures: None,
        profile: SigningProfileName::Standard,
        notes: "SMTP credentials send only for their own domain; turn off open/click tracking",
    },
];

/// The provider behind an upstream host name, if it is one we know.
pub fn by_host(host: &str) -> Option<&'static Provider> {
    let host = crate::domain::normalise(host);
    PROVIDERS
        .iter()
        .find(|p| p.hosts.iter().any(|pattern| pattern.matches(&host)))
}

pub fn by_id(id: ProviderId) -> &'static Provider {
    // Every id has its row; the fallback is never taken.
    PROVIDERS
        .iter()
        .find(|p| p.id == id)
        .unwrap_or(&PROVIDERS[0])
}

/// The profile an upstream signs with, and why: `config check` and the start log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileChoice {
    pub profile: SigningProfileName,
    pub provider: Option<&'static Provider>,
    /// `profile` was set in the config (else it follows from the provider, or is standard).
    pub explicit: bool,
    /// The provider was named by `provider` (else recognised from the host, or none).
    pub provider_explicit: bool,
}

impl ProfileChoice {
    /// One sentence for `config check` and the start log.
    pub fn explain(&self, upstream: &UpstreamConfig) -> String {
        let who = format!(
            "upstream {} ({}:{})",
            upstream.name, upstream.host, upstream.port
        );
        let profile = self.profile.name();
        match (self.provider, self.explicit) {
            (Some(p), false) => {
                let known = if self.provider_explicit {
                    format!("provider = \"{}\"", p.id.name())
                } else {
                    "its host name".to_string()
                };
                format!(
                    "{who} is {} (from {known}): signing profile \"{profile}\" ({})",
                    p.name,
                    self.profile.describe()
                )
            }
            (Some(p), true) => format!(
                "{who} is {}: signing profile \"{profile}\" as set ({})",
                p.name,
                self.profile.describe()
            ),
            (None, true) => format!(
                "{who}: signing profile \"{profile}\" as set ({})",
                self.profile.describe()
            ),
            (None, false) => format!(
                "{who}: signing profile \"{profile}\" ({})",
                self.profile.describe()
            ),
        }
    }
}

impl ProviderId {
    pub fn name(self) -> &'static str {
        match self {
            ProviderId::Ses => "ses",
            ProviderId::Sendgrid => "sendgrid",
            ProviderId::Microsoft365 => "microsoft365",
            ProviderId::Google => "google",
            ProviderId::Mailgun => "mailgun",
        }
    }
}

impl UpstreamConfig {
    /// The known provider: `provider` when set, else recognised from `host`.
    pub fn known_provider(&self) -> Option<&'static Provider> {
        match self.provider {
            Some(id) => Some(by_id(id)),
            None => by_host(&self.host),
        }
    }

    /// The signing profile: `profile` when set, else the provider's, else standard. The
    /// one place this is decided; delivery and `upstream check` read it.
    pub fn profile_choice(&self) -> ProfileChoice {
        let provider = self.known_provider();
        ProfileChoice {
            profile: self
                .profile
                .or(provider.map(|p| p.profile))
                .unwrap_or_default(),
            provider,
            explicit: self.profile.is_some(),
            provider_explicit: self.provider.is_some(),
        }
    }
}

/// DKIM-Signature fields a message from `domain` carries under `profile`: one per
/// algorithm, two per algorithm when every published key signs.
pub fn signature_count(
    domain: &DomainConfig,
    profile: SigningProfileName,
    mode: SigningMode,
) -> usize {
    let (_, rsa_only) = profile.rules();
    let algorithms = if domain.ed25519 && !rsa_only { 2 } else { 1 };
    let per_algorithm = match mode {
        SigningMode::Active => 1,
        SigningMode::AllPublished => 2,
    };
    algorithms * per_algorithm
}

impl Config {
    /// The upstreams mail from `domain` is sent to when no client-network route catches
    /// it: its `from_domains` route's, else every upstream.
    pub fn upstreams_for_domain(&self, domain: &str) -> Vec<UpstreamConfig> {
        let list = self.upstream_list();
        let routed: Vec<UpstreamConfig> = self
            .routes
            .iter()
            .filter(|r| r.from_domains.iter().any(|d| d == domain))
            .flat_map(|r| r.upstreams.iter())
            .filter_map(|name| list.iter().find(|u| &u.name == name).cloned())
            .collect();
        if routed.is_empty() {
            list
        } else {
            routed
        }
    }

    /// Refuses a config that would send a provider more DKIM-Signature fields than it
    /// takes (Amazon SES: one), for any configured domain whose mail can reach it.
    pub(super) fn validate_signature_limits(&self) -> Result<(), ConfigError> {
        let all_published = self.rotation.signing == SigningMode::AllPublished;
        // A client-network route sends mail of every domain to its upstreams.
        let by_network: Vec<&String> = self
            .routes
            .iter()
            .filter(|r| !r.client_networks.is_empty())
            .flat_map(|r| r.upstreams.iter())
            .collect();
        for domain in &self.domains {
            let reach = self.upstreams_for_domain(&domain.name);
            let more = self
                .upstream_list()
                .into_iter()
                .filter(|u| by_network.contains(&&u.name));
            for upstream in reach.into_iter().chain(more) {
                let choice = upstream.profile_choice();
                let Some(provider) = choice.provider else {
                    continue;
                };
                let Some(limit) = provider.max_signatures else {
                    continue;
                };
                let (_, rsa_only) = choice.profile.rules();
                let ed25519 = domain.ed25519 && !rsa_only;
                let count = signature_count(domain, choice.profile, self.rotation.signing);
                if count <= limit {
                    continue;
                }
                let why = match (ed25519, all_published) {
                    (true, _) => format!(
                        "profile \"{}\" adds an Ed25519 signature next to the RSA one for {} (ed25519 = true)",
                        choice.profile.name(),
                        domain.name
                    ),
                    (false, _) => "rotation.signing = \"all-published\" signs with both published RSA keys".to_string(),
                };
                let fix = match (ed25519, all_published) {
                    (true, false) => "remove profile (the provider's own profile signs once) or set profile = \"ses\"",
                    (false, _) => "set rotation.signing = \"active\" or route this domain to another upstream",
                    (true, true) => "set profile = \"ses\" (or remove it) and rotation.signing = \"active\"",
                };
                return Err(ConfigError::new(
                    format!("upstream {}: profile", upstream.name),
                    format!(
                        "{} takes at most {limit} DKIM-Signature per message ({}), but {why}, so every message from {} would be refused; {fix}",
                        provider.name, provider.notes, domain.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_recognised_by_the_table() {
        let name = |h: &str| by_host(h).map(|p| p.name);
        assert_eq!(
            name("email-smtp.eu-west-1.amazonaws.com"),
            Some("Amazon SES")
        );
        assert_eq!(
            name("EMAIL-SMTP.us-east-1.amazonaws.com."),
            Some("Amazon SES")
        );
        assert_eq!(
            name("email-smtp-fips.us-east-1.amazonaws.com"),
            Some("Amazon SES")
        );
        // Other AWS hosts are not SES's SMTP endpoint.
        assert_eq!(name("ec2-1-2-3-4.eu-west-1.compute.amazonaws.com"), None);
        assert_eq!(name("email-smtp.a.b.amazonaws.com"), None);
        assert_eq!(name("smtp.sendgrid.net"), Some("SendGrid"));
        assert_eq!(name("smtp.office365.com"), Some("Microsoft 365"));
        assert_eq!(
            name("contoso-com.mail.protection.outlook.com"),
            Some("Microsoft 365")
        );
        assert_eq!(name("smtp-relay.gmail.com"), Some("Google Workspace"));
        assert_eq!(name("smtp.eu.mailgun.org"), Some("Mailgun"));
        assert_eq!(name("notmailgun.org"), None);
        assert_eq!(name("127.0.0.1"), None);
    }

    const SES_AND_SENDGRID: &str = r#"
[[domains]]
name = "example.com"
ed25519 = true
[[upstreams]]
name = "ses"
host = "email-smtp.eu-west-1.amazonaws.com"
profile = "standard"
[[upstreams]]
name = "sg"
host = "smtp.sendgrid.net"
"#;

    #[test]
    fn two_signatures_are_refused_only_where_mail_reaches_ses() {
        let err = Config::from_toml(SES_AND_SENDGRID).unwrap_err();
        assert_eq!(err.field, "upstream ses: profile");
        assert!(err.problem.contains("at most 1 DKIM-Signature"), "{err}");
        // Routed to SendGrid only, example.com never reaches SES.
        let routed = format!(
            "{SES_AND_SENDGRID}[[routes]]\nfrom_domains = [\"example.com\"]\nupstreams = [\"sg\"]\n"
        );
        Config::from_toml(&routed).unwrap();
        // A client-network route may send any domain's mail to SES.
        let by_network = format!(
            "{routed}[[routes]]\nclient_networks = [\"10.0.0.0/8\"]\nupstreams = [\"ses\"]\n"
        );
        assert!(Config::from_toml(&by_network).is_err());
    }

    #[test]
    fn signing_with_every_published_key_is_refused_for_ses() {
        let text = SES_AND_SENDGRID.replace("profile = \"standard\"\n", "")
            + "[rotation]\nsigning = \"all-published\"\n";
        let err = Config::from_toml(&text).unwrap_err();
        assert!(err.problem.contains("all-published"), "{err}");
        let ok = SES_AND_SENDGRID.replace("profile = \"standard\"\n", "");
        let config = Config::from_toml(&ok).unwrap();
        let choice = config.upstream_list()[0].profile_choice();
        assert_eq!(choice.profile, SigningProfileName::Ses);
        assert!(!choice.explicit);
    }

    #[test]
    fn plain_text_off_loopback_needs_allow_plaintext() {
        let text = "[upstream]\nhost = \"10.1.2.3\"\ntls = \"none\"\n";
        let err = Config::from_toml(text).unwrap_err();
        assert!(err.problem.contains("allow_plaintext = true"), "{err}");
        Config::from_toml(&format!("{text}allow_plaintext = true\n")).unwrap();
        Config::from_toml("[upstream]\nhost = \"::1\"\ntls = \"none\"\n").unwrap();
    }

    /// docs/upstreams.md lists the table; a provider added here must be added there.
    #[test]
    fn the_docs_list_every_provider() {
        let docs = include_str!("../../docs/upstreams.md");
        for p in PROVIDERS {
            let row = format!("| `{}` | {} |", p.id.name(), p.name);
            assert!(docs.contains(&row), "docs/upstreams.md lacks {row}");
            assert!(docs.contains(&format!("`include:{}`", p.spf_include)));
        }
    }

    #[test]
    fn every_id_has_its_row() {
        for id in [
            ProviderId::Ses,
            ProviderId::Sendgrid,
            ProviderId::Microsoft365,
            ProviderId::Google,
            ProviderId::Mailgun,
        ] {
            assert_eq!(by_id(id).id, id);
        }
    }
}
