//! The TXT record that publishes a key, in the forms operators paste into DNS.

use super::Algorithm;
use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsRecord {
    /// `selector._domainkey.domain`, without the trailing dot.
    pub name: String,
    /// The whole record text, `v=DKIM1; k=…; p=…`.
    pub value: String,
}

impl DnsRecord {
    pub fn new(domain: &str, selector: &str, algorithm: Algorithm, public_key: &[u8]) -> Self {
        let p = base64::engine::general_purpose::STANDARD.encode(public_key);
        DnsRecord {
            name: format!("{selector}._domainkey.{domain}"),
            value: format!("v=DKIM1; k={}; p={p}", algorithm.dns_k()),
        }
    }

    /// A revocation record: an empty `p=` tells verifiers the key is withdrawn (RFC 6376 §3.6.1).
    pub fn revoked(domain: &str, selector: &str, algorithm: Algorithm) -> Self {
        DnsRecord {
            name: format!("{selector}._domainkey.{domain}"),
            value: format!("v=DKIM1; k={}; p=", algorithm.dns_k()),
        }
    }

    /// Zone-file form. A TXT character-string holds at most 255 octets, and a 2048-bit
    /// RSA record is longer, so the value is split into several quoted strings which
    /// resolvers join without separators (RFC 7208 §3.3 describes the same for SPF).
    pub fn zone_line(&self) -> String {
        let chunks: Vec<String> = self
            .value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{}. 3600 IN TXT ( {} )", self.name, chunks.join(" "))
    }
}

/// The key bytes of a record's `p=` (what a DNS lookup is compared with).
pub fn public_key_bytes(record: &DnsRecord) -> Option<Vec<u8>> {
    let p = record
        .value
        .split(';')
        .find_map(|t| t.trim().strip_prefix("p="))?;
    base64::engine::general_purpose::STANDARD
        .decode(p.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_split_into_255_octet_strings() {
        let record = DnsRecord::new("example.com", "s1", Algorithm::Rsa, &[0u8; 294]);
        let line = record.zone_line();
        assert!(
            line.starts_with("s1._domainkey.example.com. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=AAAA")
        );
        let strings: Vec<&str> = line
            .split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), 255);
        assert_eq!(strings.concat(), record.value);
    }

    #[test]
    fn revocation_has_an_empty_p() {
        let record = DnsRecord::revoked("example.com", "e2", Algorithm::Ed25519);
        assert_eq!(record.value, "v=DKIM1; k=ed25519; p=");
    }
}
