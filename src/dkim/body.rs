//! Workaround for mail-auth 0.13.3's relaxed body hash (its issue #62, fixed in 0.15).
//!
//! mail-auth 0.13.3 hashes a body that ends in lines holding only spaces or tabs wrongly:
//! relaxed canonicalization (RFC 6376 §3.4.4) first strips trailing whitespace from each
//! line and then ignores all empty lines at the end, so such lines must not count. We sign
//! the message without those trailing lines; since relaxed canonicalization ignores them
//! anyway, the signature still verifies against the full message we send. Nothing is
//! copied: the signable message is a prefix of the spooled bytes.

/// The prefix of `message` to hand to the signer: everything up to and including the last
/// body line that holds something other than spaces and tabs.
pub fn signable_prefix(message: &[u8]) -> &[u8] {
    let Some(body_start) = body_offset(message) else {
        return message;
    };
    let mut end = message.len();
    // Walk back over whole lines ("...\r\n") that are empty or only WSP.
    loop {
        let line_end = end;
        let Some(without_crlf) = line_end.checked_sub(2) else {
            break;
        };
        if without_crlf < body_start || &message[without_crlf..line_end] != b"\r\n" {
            break;
        }
        // Find where this line starts: just after the previous CRLF, or the body start.
        let mut start = without_crlf;
        while start > body_start && message[start - 1] != b'\n' {
            start -= 1;
        }
        if message[start..without_crlf]
            .iter()
            .all(|&b| b == b' ' || b == b'\t')
        {
            end = start;
            if start == body_start {
                break;
            }
        } else {
            break;
        }
    }
    // A message whose last line lacks CRLF keeps it; relaxed adds the CRLF itself.
    &message[..end.max(body_start)]
}

/// Where the body starts: just after the first empty line (CRLF CRLF).
fn body_offset(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_whitespace_only_lines_are_left_out() {
        let msg = b"From: a@b.example\r\n\r\nHello\r\n  \r\n\t\r\n\r\n";
        assert_eq!(signable_prefix(msg), b"From: a@b.example\r\n\r\nHello\r\n");
    }

    #[test]
    fn a_body_of_only_blank_lines_becomes_empty() {
        let msg = b"From: a@b.example\r\n\r\n \r\n\r\n";
        assert_eq!(signable_prefix(msg), b"From: a@b.example\r\n\r\n");
    }

    #[test]
    fn inner_blank_lines_and_trailing_text_whitespace_stay() {
        let msg = b"From: a@b.example\r\n\r\nA\r\n \r\nB  \r\n";
        assert_eq!(signable_prefix(msg), &msg[..]);
    }

    #[test]
    fn a_message_without_body_is_unchanged() {
        let msg = b"From: a@b.example\r\n";
        assert_eq!(signable_prefix(msg), &msg[..]);
    }
}
