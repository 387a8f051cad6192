//! Which header fields go into `h=` (DESIGN §5).

// Every name is written in lower case, the one spelling `h=` uses (DESIGN §5): go-msgauth
// counts `Message-Id` and `Message-ID` as two different fields, so an over-signing entry
// spelled differently from the field it guards fails the signature there.

/// Signed once more than they occur, so nobody can add another copy after signing
/// (RFC 6376 §8.15 "over-signing"); an absent one is signed once as empty.
pub const OVERSIGNED: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Signed as often as they occur. RFC 8058 requires List-Unsubscribe and
/// List-Unsubscribe-Post to be signed for one-click unsubscribe.
pub const SIGNED_WHEN_PRESENT: &[&str] = &[
    "sender",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// The list to hand to mail-auth's signer for this message.
///
/// mail-auth signs every occurrence of each listed name, and adds one empty (over-signed)
/// entry for each additional time a name is listed. So an over-signed name that occurs is
/// listed twice, an absent one once; a "when present" name is listed once if it occurs.
/// `leave_out` removes names an upstream rewrites (Amazon SES: Date, Message-ID).
pub fn header_list(message_headers: &[&[u8]], leave_out: &[&str]) -> Vec<&'static str> {
    let occurs = |name: &str| {
        message_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut list = Vec::with_capacity(OVERSIGNED.len() * 2 + SIGNED_WHEN_PRESENT.len());
    for &name in OVERSIGNED {
        if leave_out.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            continue;
        }
        list.push(name);
        if occurs(name) {
            list.push(name);
        }
    }
    for &name in SIGNED_WHEN_PRESENT {
        if occurs(name) && !leave_out.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            list.push(name);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_oversigned_names_are_listed_twice_absent_once() {
        let list = header_list(&[b"from", b"Subject", b"List-Id"], &[]);
        assert_eq!(list.iter().filter(|n| **n == "from").count(), 2);
        assert_eq!(list.iter().filter(|n| **n == "subject").count(), 2);
        assert_eq!(list.iter().filter(|n| **n == "cc").count(), 1);
        assert_eq!(list.iter().filter(|n| **n == "list-id").count(), 1);
        assert!(!list.contains(&"sender"));
    }

    #[test]
    fn left_out_names_are_not_signed() {
        let list = header_list(&[b"Date", b"Message-ID"], &["Date", "Message-ID"]);
        assert!(!list.contains(&"date"));
        assert!(!list.contains(&"message-id"));
    }
}
