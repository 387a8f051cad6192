//! Checking that DNS serves exactly a key: look up `selector._domainkey.domain` TXT
//! (CNAMEs followed by the resolver), join each record's strings, and compare the decoded
//! `p=` with the local public key (decoded bytes, not base64 text).

use crate::keys::{Algorithm, DnsCheck, DnsOutcome};
use crate::resolver::Patience;
use base64::Engine;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::MessageAuthenticator;
use std::net::SocketAddr;
use std::time::Duration;

pub struct DnsChecker {
    resolver: MessageAuthenticator,
}

impl DnsChecker {
    /// Uses `server` (tests point it at a DNS server on 127.0.0.1) or the system resolver.
    pub fn new(server: Option<SocketAddr>) -> Result<DnsChecker, String> {
        let resolver = crate::resolver::resolver(
            server,
            Patience {
                timeout: Duration::from_secs(3),
                attempts: 2,
                // A key that was just published must be seen at once, not after a TTL.
                cache_size: Some(0),
            },
        )?;
        Ok(DnsChecker { resolver })
    }

    /// Looks up `name` and compares its key with `expected` (the bytes of our `p=`).
    pub async fn check(
        &self,
        name: &str,
        algorithm: Algorithm,
        expected: &[u8],
        now: u64,
    ) -> DnsCheck {
        let (outcome, detail) = match self.lookup(name).await {
            Err(LookupError::Missing) => (DnsOutcome::Missing, format!("no TXT record at {name}")),
            Err(LookupError::Failed(e)) => {
                (DnsOutcome::Error, format!("lookup of {name} failed: {e}"))
            }
            Ok(records) => compare(&records, algorithm, expected),
        };
        DnsCheck {
            at: now,
            outcome,
            detail,
        }
    }

    /// Every TXT record at `name`, each record joined from its strings.
    async fn lookup(&self, name: &str) -> Result<Vec<String>, LookupError> {
        Ok(self
            .txt_records(name)
            .await?
            .into_iter()
            .map(|strings| strings.concat())
            .collect())
    }

    /// Every TXT record at `name` (CNAMEs followed), each as its character-strings, so a
    /// caller can see how a record was split. `Missing` when there is no TXT record.
    pub async fn txt_records(&self, name: &str) -> Result<Vec<Vec<String>>, LookupError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = self
            .resolver
            .resolver()
            .txt_lookup(fqdn.as_str())
            .await
            .map_err(|e| {
                if e.is_no_records_found() || e.is_nx_domain() {
                    LookupError::Missing
                } else {
                    LookupError::Failed(e.to_string())
                }
            })?;
        let records: Vec<Vec<String>> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(LookupError::Missing);
        }
        Ok(records)
    }
}

/// Why a TXT lookup returned nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN or no TXT record at the name.
    Missing,
    /// The lookup itself failed (timeout, SERVFAIL, refused).
    Failed(String),
}

/// Compares DNS records (each already joined from its strings) with our public key.
pub fn compare(records: &[String], algorithm: Algorithm, expected: &[u8]) -> (DnsOutcome, String) {
    let dkim: Vec<&String> = records
        .iter()
        .filter(|r| tag(r, "v").is_none_or(|v| v == "DKIM1"))
        .collect();
    if dkim.len() > 1 {
        return (
            DnsOutcome::Mismatch,
            format!(
                "{} DKIM records at one name; verifiers may pick any",
                dkim.len()
            ),
        );
    }
    let Some(record) = dkim.first() else {
        return (
            DnsOutcome::Missing,
            "no DKIM record among the TXT records".into(),
        );
    };
    let k = tag(record, "k").unwrap_or_else(|| "rsa".into());
    if k != algorithm.dns_k() {
        return (
            DnsOutcome::Mismatch,
            format!("record has k={k}, key is {algorithm}"),
        );
    }
    let Some(p) = tag(record, "p") else {
        return (DnsOutcome::Mismatch, "record has no p= tag".into());
    };
    if p.is_empty() {
        return (DnsOutcome::Mismatch, "record is revoked (empty p=)".into());
    }
    let Ok(published) = base64::engine::general_purpose::STANDARD.decode(&p) else {
        return (DnsOutcome::Mismatch, "p= is not valid base64".into());
    };
    if key_matches(&published, algorithm, expected) {
        (DnsOutcome::Match, "DNS serves this key".into())
    } else {
        (DnsOutcome::Mismatch, "DNS serves a different key".into())
    }
}

/// Whether the decoded `p=` of a record is our public key. RSA records in PKCS#1 form
/// are the tail of our SubjectPublicKeyInfo, so they match too.
fn key_matches(published: &[u8], algorithm: Algorithm, expected: &[u8]) -> bool {
    published == expected
        || (algorithm == Algorithm::Rsa && published.len() > 64 && expected.ends_with(published))
}

/// The value of a tag in a `tag=value; tag=value` record, whitespace removed.
pub fn tag(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim() == name).then(|| v.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_compared_by_decoded_key() {
        let key = [0x30u8, 0x82, 1, 2, 3, 4];
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let rec = |s: &str| vec![s.to_string()];
        assert_eq!(
            compare(
                &rec(&format!("v=DKIM1; k=ed25519; p={b64}")),
                Algorithm::Ed25519,
                &key
            )
            .0,
            DnsOutcome::Match
        );
        // Whitespace inside p= (from split strings or folding) does not matter.
        let split = format!("v=DKIM1; k=ed25519; p={} {}", &b64[..4], &b64[4..]);
        assert_eq!(
            compare(&rec(&split), Algorithm::Ed25519, &key).0,
            DnsOutcome::Match
        );
        assert_eq!(
            compare(&rec("v=DKIM1; k=ed25519; p="), Algorithm::Ed25519, &key).0,
            DnsOutcome::Mismatch
        );
        assert_eq!(
            compare(
                &rec(&format!("v=DKIM1; k=rsa; p={b64}")),
                Algorithm::Ed25519,
                &key
            )
            .0,
            DnsOutcome::Mismatch
        );
        assert_eq!(
            compare(&rec("v=spf1 -all"), Algorithm::Ed25519, &key).0,
            DnsOutcome::Missing
        );
    }
}
