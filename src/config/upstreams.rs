//! Several upstreams, routes to them, and their signing profiles.
//!
//! `[upstream]` (one table) and `[[upstreams]]` (a priority list) are two spellings of the
//! same thing: [`Config::upstream_list`] turns either into the list delivery uses, so a
//! config written for one upstream keeps working unchanged.

use super::{is_dns_name, Config, ConfigError, UpstreamConfig};
use ipnet::IpNet;
use serde::Deserialize;

/// How mail sent through an upstream is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningProfileName {
    /// Every header of DESIGN §5 in h=, and the Ed25519 signature where the domain has one.
    #[default]
    Standard,
    /// Amazon SES refuses a second DKIM-Signature ("554 Duplicate header") and rewrites
    /// Date and Message-ID: one RSA signature, those two left out of h=.
    Ses,
}

impl SigningProfileName {
    /// (header fields left out of h=, RSA signature only).
    pub fn rules(self) -> (&'static [&'static str], bool) {
        match self {
            SigningProfileName::Standard => (&[], false),
            SigningProfileName::Ses => (&["Date", "Message-ID"], true),
        }
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            SigningProfileName::Standard => "standard",
            SigningProfileName::Ses => "ses",
        }
    }

    /// What the profile does, in words.
    pub fn describe(self) -> &'static str {
        match self {
            SigningProfileName::Standard => {
                "an RSA signature, plus Ed25519 for domains with ed25519 = true"
            }
            SigningProfileName::Ses => "one RSA signature only; Date and Message-ID left out of h=",
        }
    }
}

/// Sends matching mail to named upstreams instead of the whole priority list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// From header domains (exact, lower case) this route takes.
    #[serde(default)]
    pub from_domains: Vec<String>,
    /// Client networks this route takes, whatever the From domain.
    #[serde(default)]
    pub client_networks: Vec<IpNet>,
    /// Upstream names in the order to try them; failover stays within this list.
    pub upstreams: Vec<String>,
}

pub(super) fn default_name() -> String {
    "upstream".into()
}

pub(super) fn default_pool_size() -> usize {
    4
}

impl Config {
    /// The upstreams in priority order: `[[upstreams]]`, or `[upstream]` alone. Empty means
    /// the outbox.
    pub fn upstream_list(&self) -> Vec<UpstreamConfig> {
        match &self.upstream {
            Some(one) => vec![one.clone()],
            None => self.upstreams.clone(),
        }
    }

    pub(super) fn validate_upstreams(&mut self) -> Result<(), ConfigError> {
        if self.upstream.is_some() && !self.upstreams.is_empty() {
            return Err(ConfigError::new(
                "upstreams",
                "use either [upstream] or [[upstreams]], not both",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            upstream.validate().map_err(|e| ConfigError {
                field: e
                    .field
                    .replacen("upstream.", &format!("upstreams[{i}]."), 1),
                problem: e.problem,
            })?;
            if !names.insert(upstream.name.clone()) {
                return Err(ConfigError::new(
                    format!("upstreams[{i}].name"),
                    format!("\"{}\" is used twice; names must be unique", upstream.name),
                ));
            }
        }
        for upstream in self.upstream.iter().chain(&self.upstreams) {
            if upstream.pool_size == 0 {
                return Err(ConfigError::new(
                    format!("upstream {}: pool_size", upstream.name),
                    "must be at least 1",
                ));
            }
        }
        let known: Vec<String> = self.upstream_list().into_iter().map(|u| u.name).collect();
        for (i, route) in self.routes.iter_mut().enumerate() {
            if route.upstreams.is_empty() {
                return Err(ConfigError::new(
                    format!("routes[{i}].upstreams"),
                    "must name at least one upstream",
                ));
            }
            if let Some(unknown) = route.upstreams.iter().find(|n| !known.contains(n)) {
                return Err(ConfigError::new(
                    format!("routes[{i}].upstreams"),
                    format!("no upstream is named \"{unknown}\""),
                ));
            }
            if route.from_domains.is_empty() && route.client_networks.is_empty() {
                return Err(ConfigError::new(
                    format!("routes[{i}]"),
                    "needs from_domains or client_networks, or it matches nothing",
                ));
            }
            for domain in route.from_domains.iter_mut() {
                *domain = crate::domain::normalise(domain);
                if !is_dns_name(domain) {
                    return Err(ConfigError::new(
                        format!("routes[{i}].from_domains"),
                        format!("\"{domain}\" is not a domain name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[upstreams]]
name = "ses"
host = "127.0.0.1"
tls = "none"
profile = "ses"
[[upstreams]]
name = "backup"
host = "127.0.0.2"
tls = "none"
pool_size = 2
[[routes]]
from_domains = ["Example.ORG"]
upstreams = ["backup"]
"#;

    #[test]
    fn a_priority_list_with_routes_parses() {
        let config = Config::from_toml(TWO).unwrap();
        let list = config.upstream_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].profile, Some(SigningProfileName::Ses));
        assert_eq!(list[1].pool_size, 2);
        assert_eq!(config.routes[0].from_domains, ["example.org"]);
    }

    #[test]
    fn a_route_to_an_unknown_upstream_is_refused() {
        let text = TWO.replace("upstreams = [\"backup\"]", "upstreams = [\"nope\"]");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.field, "routes[0].upstreams");
    }

    #[test]
    fn one_table_and_a_list_together_are_refused() {
        let text = format!("[upstream]\nhost = \"127.0.0.1\"\ntls = \"none\"\n{TWO}");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.field, "upstreams");
    }

    #[test]
    fn the_single_table_is_a_one_element_list() {
        let config =
            Config::from_toml("[upstream]\nhost = \"127.0.0.1\"\ntls = \"none\"\n").unwrap();
        let list = config.upstream_list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "upstream");
        assert_eq!(
            list[0].profile_choice().profile,
            SigningProfileName::Standard
        );
    }
}
