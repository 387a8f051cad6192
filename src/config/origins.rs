//! `[[smtp.origins]]`: what the relay adds to mail from hosts that do not name themselves
//! well, per client network, as Postfix's `myorigin` and `smtp_generic_maps` do on the
//! host itself: a domain for bare user names (`qualify_domain`), and a From rewrite for
//! hosts named in a private namespace (`private_domains` → `rewrite_from`).

use super::ConfigError;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Client networks (CIDR) this entry covers. The longest matching prefix decides; it
    /// grants nothing (who may relay stays with `allowed_networks` and `[[smtp.senders]]`).
    pub networks: Vec<IpNet>,
    /// Domain for a From or MAIL FROM that is a bare user name (`root`, cron's
    /// `root (Cron Daemon)`) or `user@host` without a dot (`root@localhost`): it becomes
    /// `user@qualify_domain`. Absent: such a From, and MAIL FROM:<root>, are refused with
    /// a reply naming this key (MAIL FROM:<root@localhost> is relayed unchanged).
    #[serde(default)]
    pub qualify_domain: Option<String>,
    /// Domains (and their subdomains) only the sending network knows, such as
    /// `corp.internal`: a header From in one of them is replaced by `rewrite_from`.
    #[serde(default)]
    pub private_domains: Vec<String>,
    /// The address a private-namespace From becomes (the display name is kept; the old
    /// address goes into Reply-To when there is none, and into the log).
    #[serde(default)]
    pub rewrite_from: Option<String>,
}

impl OriginConfig {
    /// Whether `domain` (lower case) is in one of the private domains.
    pub fn is_private(&self, domain: &str) -> bool {
        self.private_domains.iter().any(|d| {
            domain == d
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|sub| sub.ends_with('.'))
        })
    }

    pub(super) fn validate(&mut self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("smtp.origins[{i}].{k}");
        if self.networks.is_empty() {
            return Err(ConfigError::new(
                key("networks"),
                "must list at least one network",
            ));
        }
        if let Some(d) = &mut self.qualify_domain {
            *d = crate::domain::normalise(d);
            if !(super::is_dns_name(d) && d.contains('.')) {
                return Err(ConfigError::new(
                    key("qualify_domain"),
                    format!("\"{d}\" is not a domain name with a dot, such as example.com"),
                ));
            }
        }
        for (j, d) in self.private_domains.iter_mut().enumerate() {
            *d = crate::domain::normalise(d);
            if !super::is_dns_name(d) {
                return Err(ConfigError::new(
                    format!("{}[{j}]", key("private_domains")),
                    format!("\"{d}\" is not a domain name"),
                ));
            }
        }
        match (&self.rewrite_from, self.private_domains.is_empty()) {
            (None, false) => Err(ConfigError::new(
                key("rewrite_from"),
                "is needed with private_domains: the address their From becomes",
            )),
            (Some(_), true) => Err(ConfigError::new(
                key("private_domains"),
                "is needed with rewrite_from: the domains whose From is rewritten",
            )),
            (Some(a), false) => {
                let ok = crate::message::Mailbox::parse(a).is_ok_and(|m| m.domain().contains('.'));
                if ok {
                    Ok(())
                } else {
                    Err(ConfigError::new(
                        key("rewrite_from"),
                        format!("\"{a}\" is not an address such as relay@example.com"),
                    ))
                }
            }
            (None, true) => Ok(()),
        }
    }
}

impl super::SmtpConfig {
    /// The `[[smtp.origins]]` entry for a client: the longest matching network.
    pub fn origin_for(&self, ip: IpAddr) -> Option<&OriginConfig> {
        self.origins
            .iter()
            .flat_map(|o| o.networks.iter().map(move |n| (n, o)))
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(extra: &str) -> Result<Config, String> {
        let text = format!("[[domains]]\nname = \"example.com\"\n{extra}");
        Config::from_toml(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn errors_name_the_key() {
        for (toml, key) in [
            ("[[smtp.origins]]\nnetworks = []\n", "smtp.origins[0].networks"),
            ("[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nqualify_domain = \"localhost\"\n", "smtp.origins[0].qualify_domain"),
            ("[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nprivate_domains = [\"corp.internal\"]\n", "smtp.origins[0].rewrite_from"),
            ("[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nrewrite_from = \"a@example.com\"\n", "smtp.origins[0].private_domains"),
            ("[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nprivate_domains = [\"corp.internal\"]\nrewrite_from = \"nobody\"\n", "smtp.origins[0].rewrite_from"),
            ("[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nprivate_domains = [\"bad name\"]\nrewrite_from = \"a@example.com\"\n", "smtp.origins[0].private_domains[0]"),
        ] {
            let e = load(toml).unwrap_err();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn the_longest_network_decides() {
        let c = load(
            "[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nqualify_domain = \"Example.COM\"\n\
             [[smtp.origins]]\nnetworks = [\"10.1.0.0/16\"]\nqualify_domain = \"b.example.com\"\n",
        )
        .unwrap();
        let q = |ip: &str| {
            c.smtp
                .origin_for(ip.parse().unwrap())
                .and_then(|o| o.qualify_domain.clone())
        };
        assert_eq!(q("10.9.0.1").as_deref(), Some("example.com"));
        assert_eq!(q("10.1.0.1").as_deref(), Some("b.example.com"));
        assert_eq!(q("192.0.2.1"), None);
    }
}
