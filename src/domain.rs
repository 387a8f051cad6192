//! Domain names as the relay compares them: one spelling rule (trimmed, no trailing dot,
//! ASCII lower case) and one validity rule (labels of letters, digits, `-` and `_`, at
//! least two of them), used by the config, the CLI, doctor, the From and envelope checks
//! and bounces alike. Before, each of about ten places spelled the rule itself.

use std::fmt;

/// A domain name that passed [`Domain::parse`]: normalised and valid as a DKIM `d=`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

/// Why a text is not a domain name; the text itself is in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a domain name")]
pub struct NotADomain(pub String);

impl Domain {
    /// Normalises `text` and checks it is a domain of two labels or more.
    pub fn parse(text: &str) -> Result<Domain, NotADomain> {
        let name = normalise(text);
        if is_dns_name(&name) && name.contains('.') {
            Ok(Domain(name))
        } else {
            Err(NotADomain(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The spelling names are compared in: surrounding space and one trailing dot removed,
/// ASCII lower-cased (DNS names compare case-insensitively, RFC 4343). For names that are
/// not checked here (a host name, a mailbox's domain the address parser checked).
///
/// An internationalised name (U-labels, as RFC 6531 lets SMTPUTF8 clients write it) is
/// compared as its A-label (`xn--…`, RFC 5890): that is the name DNS, the key store and
/// `d=` know, so `bücher.example` and `xn--bcher-kva.example` are one domain everywhere.
/// A U-label that has no valid A-label stays as written (lower-cased) and matches nothing.
pub fn normalise(text: &str) -> String {
    let text = text.trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    to_ascii(text).unwrap_or_else(|| text.to_lowercase())
}

/// The A-label form of a name with U-labels (IDNA 2008 via UTS #46, lower case); None
/// when it has none. ASCII names come back lower-cased.
pub fn to_ascii(text: &str) -> Option<String> {
    idna::domain_to_ascii(text).ok().filter(|a| !a.is_empty())
}

/// A DNS name of labels of letters, digits and hyphens (what a DKIM d= may hold).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_labels_compare_as_their_a_labels() {
        assert_eq!(normalise("B\u{fc}cher.Example."), "xn--bcher-kva.example");
        assert_eq!(normalise("xn--bcher-kva.example"), "xn--bcher-kva.example");
        assert_eq!(
            to_ascii("m\u{fc}ller.example").as_deref(),
            Some("xn--mller-kva.example")
        );
    }

    #[test]
    fn one_spelling_and_one_validity_rule() {
        assert_eq!(
            Domain::parse(" Example.COM. ").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(normalise("Relay.Test."), "relay.test");
        for bad in [
            "",
            "com",
            "a..b",
            "-a.b",
            "a b.c",
            "a@b.c",
            "example.com..",
            "é..fr",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} accepted");
        }
        // A U-label name is the same domain as its A-label, in config as on the wire.
        assert_eq!(Domain::parse("é.fr").unwrap().as_str(), "xn--9ca.fr");
        assert!(Domain::parse("s_1.example.org").is_ok());
    }
}
