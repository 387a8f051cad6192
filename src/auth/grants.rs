//! Authorisation as data: the From domains a client network or an AUTH user may send as.
//!
//! A network listed in `smtp.allowed_networks` may use every domain the relay signs for
//! (the behaviour before per-tenant lists existed, so old configs keep working); an entry
//! in `[[smtp.senders]]` limits its networks to its own list. When several entries match
//! a client, the longest prefix wins, as in routing: a tenant's /24 inside a /16 office
//! network gets the tenant's list. An authenticated user gets the user's list instead of
//! the network's.

use crate::config::SmtpConfig;
use ipnet::IpNet;
use std::net::IpAddr;

/// The domains one sender may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainGrant {
    /// Every domain the relay signs for.
    Any,
    /// Exactly these (lower case); a subdomain only when listed itself or under a
    /// `*.parent` entry.
    Only(Vec<String>),
}

impl DomainGrant {
    /// `"*"` anywhere in the list means [`DomainGrant::Any`].
    pub fn from_list(domains: Vec<String>) -> Self {
        if domains.iter().any(|d| d == "*") {
            DomainGrant::Any
        } else {
            DomainGrant::Only(domains)
        }
    }

    /// Whether `domain` (lower case) may be used. With `Any`, whether the relay has a key
    /// for it is checked separately (550 5.7.1 either way, with its own log line).
    pub fn permits(&self, domain: &str) -> bool {
        match self {
            DomainGrant::Any => true,
            DomainGrant::Only(list) => list.iter().any(|d| match d.strip_prefix("*.") {
                Some(parent) => domain
                    .strip_suffix(parent)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => d == domain,
            }),
        }
    }

    /// For log lines: "*" or the list.
    pub fn describe(&self) -> String {
        match self {
            DomainGrant::Any => "*".into(),
            DomainGrant::Only(list) => list.join(","),
        }
    }
}

/// The network table, built once from the config.
#[derive(Debug, Clone)]
pub struct Grants {
    entries: Vec<(IpNet, DomainGrant)>,
}

impl Grants {
    pub fn from_config(smtp: &SmtpConfig) -> Self {
        let mut entries: Vec<(IpNet, DomainGrant)> = smtp
            .allowed_networks
            .iter()
            .map(|n| (*n, DomainGrant::Any))
            .collect();
        for policy in &smtp.senders {
            let grant = DomainGrant::from_list(policy.from_domains.clone());
            for net in &policy.networks {
                entries.push((*net, grant.clone()));
            }
        }
        Grants { entries }
    }

    /// The grant of the longest matching network, or None: the client may not relay
    /// without AUTH.
    pub fn for_client(&self, ip: IpAddr) -> Option<&DomainGrant> {
        let mut best: Option<&(IpNet, DomainGrant)> = None;
        for entry in self.entries.iter().filter(|(net, _)| net.contains(&ip)) {
            // On equal prefixes the more restrictive (a senders entry, listed later) wins.
            if best.is_none_or(|b| entry.0.prefix_len() >= b.0.prefix_len()) {
                best = Some(entry);
            }
        }
        best.map(|(_, grant)| grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SenderPolicyConfig;

    fn grants() -> Grants {
        let mut smtp = SmtpConfig {
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..SmtpConfig::default()
        };
        smtp.senders = vec![
            SenderPolicyConfig {
                networks: vec!["10.1.0.0/16".parse().unwrap()],
                from_domains: vec!["a.example".into()],
            },
            SenderPolicyConfig {
                networks: vec!["192.0.2.0/24".parse().unwrap()],
                from_domains: vec!["b.example".into(), "mail.b.example".into()],
            },
        ];
        Grants::from_config(&smtp)
    }

    /// Issue 14: `*.example.com` grants every subdomain, never the domain itself, and
    /// never a name that merely ends in the same letters.
    #[test]
    fn a_wildcard_entry_grants_subdomains_only() {
        let grant = DomainGrant::from_list(vec!["*.example.com".into()]);
        for (domain, allowed) in [
            ("web01.example.com", true),
            ("a.b.example.com", true),
            ("example.com", false),
            ("badexample.com", false),
            ("web01.example.com.evil.test", false),
            (".example.com", false),
        ] {
            assert_eq!(grant.permits(domain), allowed, "{domain}");
        }
    }

    #[test]
    fn the_longest_matching_network_decides_which_domains_a_client_may_use() {
        let g = grants();
        // (client, domain, allowed)
        let table: &[(&str, &str, bool)] = &[
            ("10.9.9.9", "a.example", true),
            ("10.9.9.9", "b.example", true),
            ("10.1.2.3", "a.example", true),
            ("10.1.2.3", "b.example", false),
            ("10.1.2.3", "sub.a.example", false),
            ("192.0.2.7", "b.example", true),
            ("192.0.2.7", "mail.b.example", true),
            ("192.0.2.7", "x.b.example", false),
            ("192.0.2.7", "a.example", false),
        ];
        for (ip, domain, allowed) in table {
            let grant = g.for_client(ip.parse().unwrap()).unwrap();
            assert_eq!(grant.permits(domain), *allowed, "{ip} as {domain}");
        }
        assert!(g.for_client("198.51.100.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_star_in_the_list_means_any_domain() {
        assert_eq!(DomainGrant::from_list(vec!["*".into()]), DomainGrant::Any);
    }
}
