//! Which header fields go into `h=` (DESIGN §5).

/// Signed once more than they occur, so nobody can add another copy after signing
/// (RFC 6376 §8.15 "over-signing"); an absent one is signed once as empty.
pub const OVERSIGNED: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Signed as often as they occur. RFC 8058 requires List-Unsubscribe and
/// List-Unsubscribe-Post to be signed for one-click unsubscribe.
pub const SIGNED_WHEN_PRESENT: &[&str] = &[
    "Sender",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
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
        assert_eq!(list.iter().filter(|n| **n == "From").count(), 2);
        assert_eq!(list.iter().filter(|n| **n == "Subject").count(), 2);
        assert_eq!(list.iter().filter(|n| **n == "Cc").count(), 1);
        assert_eq!(list.iter().filter(|n| **n == "List-Id").count(), 1);
        assert!(!list.contains(&"Sender"));
    }

    #[test]
    fn left_out_names_are_not_signed() {
        let list = header_list(&[b"Date", b"Message-ID"], &["Date", "Message-ID"]);
        assert!(!list.contains(&"Date"));
        assert!(!list.contains(&"Message-ID"));
    }
}
