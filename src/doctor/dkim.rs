//! DKIM: what DNS serves at `selector._domainkey.domain` for each key in the store, compared
//! with the key by [`crate::rotation::dns`] (decoded bytes), plus the ways a record goes
//! wrong when it is pasted into a DNS provider: split into several records, quotes or
//! spaces inside `p=`, a cut-off key, `t=y` left on.

use super::report::{Check, Finding, Severity};
use super::TxtLookup;
use crate::keys::{Algorithm, DnsOutcome, DnsRecord, SlotState};
use crate::rotation::dns::{compare, tag};
use base64::Engine;

/// One selector of the key store, as doctor needs it.
#[derive(Debug, Clone)]
pub struct KeySlot {
    pub domain: String,
    pub selector: String,
    pub algorithm: Algorithm,
    pub state: SlotState,
    /// The record to publish (None for a retired key, whose file is gone).
    pub record: Option<DnsRecord>,
}

impl KeySlot {
    pub fn name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    fn subject(&self) -> String {
        format!(
            "{} ({}, {})",
            self.selector,
            self.algorithm,
            format!("{:?}", self.state).to_lowercase()
        )
    }

    fn in_use(&self) -> bool {
        matches!(
            self.state,
            SlotState::Active | SlotState::Published | SlotState::Retiring
        )
    }

    fn expected(&self) -> Option<Vec<u8>> {
        self.record.as_ref().and_then(crate::keys::public_key_bytes)
    }

    fn finding(&self, severity: Severity, message: String) -> Finding {
        let f = Finding::new(Check::Dkim, severity, message).about(self.subject());
        match (&self.record, severity) {
            (Some(r), Severity::Warn | Severity::Error) => f.publish(r.zone_line()),
            _ => f,
        }
    }
}

fn is_dkim(record: &str) -> bool {
    record.trim_start().starts_with("v=DKIM1") || tag(record, "p").is_some()
}

/// A record that looks like a piece of base64 and nothing else (the tail of a split key).
fn is_fragment(record: &str) -> bool {
    let r = record.trim().trim_end_matches('=');
    !r.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/') || c.is_whitespace())
}

/// Checks what DNS serves at a selector's name against the key the store holds there.
pub fn check(slot: &KeySlot, lookup: &TxtLookup) -> Finding {
    let name = slot.name();
    let records: Vec<String> = match lookup {
        TxtLookup::Failed(e) => {
            return Finding::new(
                Check::Dkim,
                Severity::Error,
                format!("could not look up {name}: {e}"),
            )
            .about(slot.subject())
        }
        TxtLookup::Missing => Vec::new(),
        TxtLookup::Found(records) => records.iter().map(|s| s.concat()).collect(),
    };
    if slot.state == SlotState::Retired {
        return retired(slot, &records);
    }
    let dkim: Vec<&String> = records.iter().filter(|r| is_dkim(r)).collect();
    if dkim.is_empty() {
        return missing(slot);
    }
    let fragments: Vec<&String> = records
        .iter()
        .filter(|r| !is_dkim(r) && is_fragment(r))
        .collect();
    if dkim.len() == 1 && !fragments.is_empty() {
        // DNS returns records in any order: try the pieces both ways round.
        let expected = slot.expected().unwrap_or_default();
        let joins = [
            format!(
                "{}{}",
                dkim[0],
                fragments.iter().map(|s| s.as_str()).collect::<String>()
            ),
            format!(
                "{}{}",
                dkim[0],
                fragments
                    .iter()
                    .rev()
                    .map(|s| s.as_str())
                    .collect::<String>()
            ),
        ];
        let whole = joins.iter().any(|j| {
            compare(std::slice::from_ref(j), slot.algorithm, &expected).0 == DnsOutcome::Match
        });
        return slot.finding(
            Severity::Error,
            format!(
                "the record at {name} is split into {} separate TXT records{}, so verifiers see a cut-off key and DKIM fails; publish it as one TXT record made of several quoted strings:",
                fragments.len() + 1,
                if whole { " (joined, they hold the right key)" } else { "" }
            ),
        );
    }
    if dkim.len() > 1 {
        return slot.finding(
            Severity::Error,
            format!("{} DKIM records at {name}: verifiers may pick any of them, so DKIM fails at random; keep only this one:", dkim.len()),
        );
    }
    one_record(slot, dkim[0])
}

fn missing(slot: &KeySlot) -> Finding {
    let name = slot.name();
    match slot.state {
        SlotState::Pending => slot.finding(
            Severity::Warn,
            format!("no record at {name} yet: this new key cannot take over signing until DNS serves it. Publish:"),
        ),
        _ => slot.finding(
            Severity::Error,
            format!("no DKIM record at {name}: receivers cannot check mail signed with this key, so it fails DKIM (and DMARC, unless SPF aligns). Publish:"),
        ),
    }
}

fn retired(slot: &KeySlot, records: &[String]) -> Finding {
    let name = slot.name();
    let revoked = DnsRecord::revoked(&slot.domain, &slot.selector, slot.algorithm);
    match records.iter().find(|r| is_dkim(r)) {
        None => slot.finding(Severity::Ok, format!("retired key, no record at {name}, as expected")),
        Some(r) if tag(r, "p").is_some_and(|p| p.is_empty()) => {
            slot.finding(Severity::Ok, format!("retired key, revoked at {name} (empty p=), as expected"))
        }
        Some(_) => slot
            .finding(
                Severity::Info,
                format!("retired key still published at {name}; nothing signs with it, so you may revoke it:"),
            )
            .publish(revoked.zone_line()),
    }
}

fn one_record(slot: &KeySlot, record: &str) -> Finding {
    let name = slot.name();
    let raw_p = record
        .split(';')
        .find_map(|part| {
            let (k, v) = part.split_once('=')?;
            (k.trim() == "p").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if tag(record, "p").is_some_and(|p| p.is_empty()) {
        return match slot.state {
            SlotState::Pending => slot.finding(
                Severity::Warn,
                format!("{name} is revoked (empty p=); this new key cannot take over signing until its record replaces it:"),
            ),
            _ => slot.finding(
                Severity::Error,
                format!("{name} is revoked (empty p=) but the key is in use: mail signed with it fails DKIM. Publish:"),
            ),
        };
    }
    if raw_p.contains(['"', '\\']) {
        return slot.finding(
            Severity::Error,
            format!("the p= value at {name} contains quote characters: the zone-file quoting was pasted into the record, which corrupts the key. Publish the strings as separate quoted strings of one record:"),
        );
    }
    let expected = slot.expected().unwrap_or_default();
    let (outcome, detail) = compare(&[record.to_string()], slot.algorithm, &expected);
    match outcome {
        DnsOutcome::Match => matched(slot, record, &raw_p),
        DnsOutcome::Missing => missing(slot),
        DnsOutcome::Error | DnsOutcome::Mismatch => mismatch(slot, record, &expected, detail),
    }
}

fn matched(slot: &KeySlot, record: &str, raw_p: &str) -> Finding {
    let name = slot.name();
    if raw_p.contains(char::is_whitespace) {
        return slot.finding(
            Severity::Warn,
            format!("the key at {name} matches, but its p= value has spaces in it (a string split with a space); RFC 6376 verifiers skip them, some others do not. Publish it without:"),
        );
    }
    if tag(record, "t").is_some_and(|t| t.split(':').any(|f| f == "y")) {
        return slot.finding(
            Severity::Warn,
            format!("the key at {name} matches but carries t=y (testing): receivers may ignore DKIM results for it. Remove t=y:"),
        );
    }
    slot.finding(Severity::Ok, format!("{name} serves this key"))
}

fn mismatch(slot: &KeySlot, record: &str, expected: &[u8], detail: String) -> Finding {
    let name = slot.name();
    let p = tag(record, "p").unwrap_or_default();
    let ours = base64::engine::general_purpose::STANDARD.encode(expected);
    let severity = if slot.in_use() {
        Severity::Error
    } else {
        Severity::Warn
    };
    if !p.is_empty() && p.len() < ours.len() && ours.starts_with(&p) {
        return slot.finding(
            Severity::Error,
            format!("the key at {name} is cut off: DNS serves the first {} of its {} characters (the rest was split into another record or lost); publish the whole record:", p.len(), ours.len()),
        );
    }
    if base64::engine::general_purpose::STANDARD
        .decode(&p)
        .is_err()
    {
        return slot.finding(
            severity,
            format!("the p= value at {name} is not valid base64: the record was split wrongly or mistyped. Publish:"),
        );
    }
    let what = if slot.in_use() {
        "mail signed with this key fails DKIM"
    } else {
        "this new key cannot take over signing until the record is replaced"
    };
    slot.finding(
        severity,
        format!("wrong key at {name} ({detail}): {what}. Publish:"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 40] = [7u8; 40];

    fn slot(state: SlotState) -> KeySlot {
        KeySlot {
            domain: "example.net".into(),
            selector: "e1".into(),
            algorithm: Algorithm::Ed25519,
            state,
            record: Some(DnsRecord::new(
                "example.net",
                "e1",
                Algorithm::Ed25519,
                &KEY,
            )),
        }
    }

    fn value() -> String {
        DnsRecord::new("example.net", "e1", Algorithm::Ed25519, &KEY).value
    }

    fn one(strings: &[&str]) -> TxtLookup {
        TxtLookup::Found(vec![strings.iter().map(|s| s.to_string()).collect()])
    }

    #[test]
    fn the_published_key_is_ok_even_in_several_strings() {
        let v = value();
        let f = check(&slot(SlotState::Active), &one(&[&v[..30], &v[30..]]));
        assert_eq!(f.severity, Severity::Ok, "{f:?}");
        assert!(f.message.contains("serves this key"));
    }

    #[test]
    fn missing_is_an_error_in_use_a_warning_pending_and_expected_retired() {
        let f = check(&slot(SlotState::Active), &TxtLookup::Missing);
        assert_eq!(f.severity, Severity::Error);
        assert!(f
            .message
            .contains("no DKIM record at e1._domainkey.example.net"));
        assert_eq!(
            f.publish,
            Some(slot(SlotState::Active).record.unwrap().zone_line())
        );
        assert_eq!(
            check(&slot(SlotState::Pending), &TxtLookup::Missing).severity,
            Severity::Warn
        );
        let retired = KeySlot {
            record: None,
            ..slot(SlotState::Retired)
        };
        let f = check(&retired, &TxtLookup::Missing);
        assert_eq!(f.severity, Severity::Ok);
        assert!(f.message.contains("as expected"));
    }

    #[test]
    fn another_key_is_a_wrong_key() {
        let other = DnsRecord::new("example.net", "e1", Algorithm::Ed25519, &[9u8; 40]).value;
        let f = check(&slot(SlotState::Active), &one(&[&other]));
        assert_eq!(f.severity, Severity::Error);
        assert!(f.message.contains("wrong key"), "{f:?}");
        assert_eq!(
            check(&slot(SlotState::Pending), &one(&[&other])).severity,
            Severity::Warn
        );
    }

    #[test]
    fn a_record_split_into_two_txt_records_is_reported_as_split() {
        let v = value();
        let lookup = TxtLookup::Found(vec![vec![v[..40].to_string()], vec![v[40..].to_string()]]);
        let f = check(&slot(SlotState::Active), &lookup);
        assert_eq!(f.severity, Severity::Error);
        assert!(
            f.message.contains("split into 2 separate TXT records"),
            "{f:?}"
        );
    }

    #[test]
    fn a_cut_off_key_quotes_in_p_and_spaces_in_p_are_reported() {
        let v = value();
        let f = check(&slot(SlotState::Active), &one(&[&v[..40]]));
        assert!(f.message.contains("cut off"), "{f:?}");
        let quoted = format!("{}\" \"{}", &v[..40], &v[40..]);
        let f = check(&slot(SlotState::Active), &one(&[&quoted]));
        assert_eq!(f.severity, Severity::Error);
        assert!(f.message.contains("quote characters"), "{f:?}");
        let spaced = format!("{} {}", &v[..40], &v[40..]);
        let f = check(&slot(SlotState::Active), &one(&[&spaced]));
        assert_eq!(f.severity, Severity::Warn);
        assert!(f.message.contains("spaces"), "{f:?}");
    }

    #[test]
    fn revoked_in_use_is_an_error_and_testing_flag_a_warning() {
        let f = check(&slot(SlotState::Active), &one(&["v=DKIM1; k=ed25519; p="]));
        assert_eq!(f.severity, Severity::Error);
        assert!(f.message.contains("revoked"));
        let testing = value().replace("k=ed25519;", "k=ed25519; t=y;");
        let f = check(&slot(SlotState::Active), &one(&[&testing]));
        assert_eq!(f.severity, Severity::Warn);
        assert!(f.message.contains("t=y"));
    }

    #[test]
    fn several_dkim_records_at_one_name_are_an_error() {
        let v = value();
        let lookup = TxtLookup::Found(vec![vec![v.clone()], vec![v]]);
        let f = check(&slot(SlotState::Active), &lookup);
        assert_eq!(f.severity, Severity::Error);
        assert!(f.message.contains("2 DKIM records"));
    }
}
