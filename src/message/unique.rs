//! Header fields RFC 5322 §3.6 allows at most once. rspamd deliberately fails every DKIM
//! signature of a message that repeats one of them (a second copy is how a signed message
//! is made to show something else), so such mail would be signed and then lost at every
//! receiver that runs it: the relay refuses it at DATA, naming the field (DESIGN §4).
//!
//! To and Cc are address lists (RFC 5322 §3.4: comma-separated), so `To: a` plus `To: b`
//! means `To: a, b`: legacy ERP and ticket systems write them so, Postfix + OpenDKIM
//! relays them, and joining the copies into the first is lossless. The rest are refused:
//! two Subject, Date, Message-ID, Sender, In-Reply-To or References fields have no
//! single form that keeps what both say, and two Reply-To fields are two different
//! answers to "where do replies go" that the relay should not pick between.

use super::HeaderBlock;

/// Address-list fields whose copies are joined into the first one (see above).
pub const MERGED: &[&str] = &["To", "Cc"];

/// The fields a message may carry at most once (RFC 5322 §3.6, Table "Max number").
pub const AT_MOST_ONCE: &[&str] = &[
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "Sender",
    "In-Reply-To",
    "References",
];

/// The first field of [`AT_MOST_ONCE`] that occurs more than once, in that spelling.
/// Run it after [`merge_address_lists`]: a merged To or Cc occurs once.
pub fn repeated_field(headers: &HeaderBlock<'_>) -> Option<&'static str> {
    AT_MOST_ONCE
        .iter()
        .copied()
        .find(|name| headers.all(name).nth(1).is_some())
}

/// A header section rewritten with the copies of a [`MERGED`] field joined into the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The new header section, up to and including the empty line that ends it.
    pub section: Vec<u8>,
    /// Which fields were joined, for the log.
    pub fields: Vec<&'static str>,
}

/// Joins every repeated To and Cc of `message` (whose fields `headers` holds) into its
/// first copy, folding before each joined value so no line grows; `None` when no such
/// field repeats. The body, from `headers.body_offset`, is unchanged.
pub fn merge_address_lists(message: &[u8], headers: &HeaderBlock<'_>) -> Option<Merged> {
    let fields: Vec<&'static str> = MERGED
        .iter()
        .copied()
        .filter(|name| headers.all(name).nth(1).is_some())
        .collect();
    if fields.is_empty() {
        return None;
    }
    let base = message.as_ptr() as usize;
    // A field's raw text, name to the end of its last line (the CRLF not included): the
    // fields are slices of `message`, so their offsets are their distance from its start.
    let raw = |f: &super::HeaderField<'_>| {
        let start = f.name.as_ptr() as usize - base;
        let end = f.value.as_ptr() as usize - base + f.value.len();
        (start, end)
    };
    let mut section = Vec::with_capacity(headers.body_offset + 16);
    let mut last_end = 0;
    for (i, field) in headers.fields.iter().enumerate() {
        let (start, end) = raw(field);
        last_end = end;
        let merged = fields
            .iter()
            .copied()
            .find(|n| field.name.eq_ignore_ascii_case(n.as_bytes()));
        let Some(name) = merged else {
            section.extend_from_slice(&message[start..end]);
            section.extend_from_slice(b"\r\n");
            continue;
        };
        let mut copies = headers.fields[..i]
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()));
        if copies.next().is_some() {
            continue; // joined into the first copy already
        }
        section.extend_from_slice(&message[start..end]);
        let mut empty = field.value.trim_ascii().is_empty();
        for later in headers.fields[i + 1..]
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        {
            let value = later.value;
            if value.trim_ascii().is_empty() {
                continue;
            }
            if empty {
                // `To:` with nothing after it: the value takes its place, no comma.
                section.extend_from_slice(b"\r\n");
                empty = false;
            } else {
                section.extend_from_slice(b",\r\n");
            }
            if !value.starts_with(b" ") && !value.starts_with(b"\t") {
                section.push(b' ');
            }
            section.extend_from_slice(value);
        }
        section.extend_from_slice(b"\r\n");
    }
    // The empty line that ended the section, if there was one.
    let rest = (last_end + 2).min(headers.body_offset);
    section.extend_from_slice(&message[rest..headers.body_offset]);
    Some(Merged { section, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeated(headers: &str) -> Option<&'static str> {
        let msg = format!("{headers}\r\n\r\nbody\r\n");
        repeated_field(&HeaderBlock::parse(msg.as_bytes()).unwrap())
    }

    #[test]
    fn a_second_copy_of_a_unique_field_is_found_in_any_spelling() {
        assert_eq!(repeated("From: a@example.com\r\nTo: b@x.example"), None);
        assert_eq!(
            repeated("To: b@x.example\r\nFrom: a@example.com\r\nTO: c@y.example"),
            Some("To")
        );
        assert_eq!(
            repeated("Message-Id: <1@x>\r\nmessage-id: <2@x>"),
            Some("Message-ID")
        );
        assert_eq!(repeated("Subject: a\r\nSubject:\r\n b"), Some("Subject"));
    }

    fn merged(message: &str) -> Option<(String, Vec<&'static str>)> {
        let headers = HeaderBlock::parse(message.as_bytes()).unwrap();
        let m = merge_address_lists(message.as_bytes(), &headers)?;
        let mut out = String::from_utf8(m.section).unwrap();
        out.push_str(&message[headers.body_offset..]);
        Some((out, m.fields))
    }

    #[test]
    fn repeated_to_and_cc_are_joined_into_the_first_copy() {
        let msg = "From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\nTO:c@example.net\r\nCc: d@x.example\r\ncc: e@x.example,\r\n f@x.example\r\n\r\nbody\r\nTo: not@a.header\r\n";
        let (out, fields) = merged(msg).unwrap();
        assert_eq!(fields, ["To", "Cc"]);
        assert_eq!(
            out,
            "From: a@example.com\r\nTo: b@example.net,\r\n c@example.net\r\nSubject: s\r\nCc: d@x.example,\r\n e@x.example,\r\n f@x.example\r\n\r\nbody\r\nTo: not@a.header\r\n"
        );
        let block = HeaderBlock::parse(out.as_bytes()).unwrap();
        assert_eq!(block.all("To").count(), 1);
        assert_eq!(repeated_field(&block), None);
    }

    #[test]
    fn empty_copies_add_nothing_and_single_fields_are_untouched() {
        let (out, _) =
            merged("From: a@example.com\r\nTo:\r\nTo: b@example.net\r\nTo: \r\n\r\nbody\r\n")
                .unwrap();
        assert_eq!(
            out,
            "From: a@example.com\r\nTo:\r\n b@example.net\r\n\r\nbody\r\n"
        );
        assert_eq!(
            merged("From: a@example.com\r\nTo: b@example.net\r\n\r\nbody\r\n"),
            None
        );
        // A header section without a body or an empty line.
        let (out, _) =
            merged("From: a@example.com\r\nTo: b@x.example\r\nTo: c@x.example\r\n").unwrap();
        assert_eq!(
            out,
            "From: a@example.com\r\nTo: b@x.example,\r\n c@x.example\r\n"
        );
    }

    #[test]
    fn fields_that_may_repeat_are_left_alone() {
        assert_eq!(
            repeated("Received: a\r\nReceived: b\r\nComments: x\r\nComments: y\r\nKeywords: k\r\nKeywords: l"),
            None
        );
    }
}
