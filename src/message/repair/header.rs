//! Header-section repairs: where a header section really ends when the empty line is
//! missing, and folding a header line over 998 octets at its whitespace.

/// RFC 5322 §2.1.1: the longest line, CRLF excluded.
pub const MAX_LINE: usize = 998;

/// What one header-section line (without CRLF) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Empty,
    /// `name:` with a name of printable ASCII (RFC 5322 §3.6.8; a space before the colon
    /// is the obsolete form, read as a field).
    Field,
    /// Starts with a space or tab: the continuation of a folded field.
    Continuation,
    /// Anything else: the body has begun (the sender left out the empty line).
    Other,
}

pub fn line_kind(line: &[u8]) -> LineKind {
    match line.first() {
        None => LineKind::Empty,
        Some(b' ' | b'\t') => LineKind::Continuation,
        Some(_) => {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return LineKind::Other;
            };
            let name = line[..colon].trim_ascii_end();
            if !name.is_empty() && name.iter().all(|b| (33..=126).contains(b)) {
                LineKind::Field
            } else {
                LineKind::Other
            }
        }
    }
}

/// A header line over 998 octets with no space or tab to fold at (after its first
/// character): folding would have to add whitespace, which changes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFoldPoint;

/// Folds one physical line (without CRLF) into lines of at most 998 octets by putting a
/// CRLF before existing whitespace: unfolding (RFC 5322 §2.2.3) gives the same value.
pub fn fold_line(line: &[u8]) -> Result<Vec<u8>, NoFoldPoint> {
    let mut out = Vec::with_capacity(line.len() + line.len() / 900 * 2 + 2);
    let mut rest = line;
    while rest.len() > MAX_LINE {
        // The last whitespace that keeps this piece within the limit; never at 0, where
        // the fold would leave an empty (or whitespace-only) line.
        let at = rest[1..=MAX_LINE]
            .iter()
            .rposition(|&b| b == b' ' || b == b'\t')
            .map(|i| i + 1)
            .ok_or(NoFoldPoint)?;
        // A piece of only whitespace would be an empty continuation line.
        if rest[..at].iter().all(|&b| b == b' ' || b == b'\t') {
            return Err(NoFoldPoint);
        }
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[at..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// [`fold_line`] on every long line of a block of CRLF-ended lines.
pub fn fold_block(block: &[u8]) -> Result<Vec<u8>, NoFoldPoint> {
    let mut out = Vec::with_capacity(block.len() + 16);
    for line in block.split_inclusive(|&b| b == b'\n') {
        let (text, end) = match line.strip_suffix(b"\r\n") {
            Some(t) => (t, &b"\r\n"[..]),
            None => (line, &b""[..]),
        };
        if text.len() > MAX_LINE {
            out.extend_from_slice(&fold_line(text)?);
        } else {
            out.extend_from_slice(text);
        }
        out.extend_from_slice(end);
    }
    Ok(out)
}

/// Whether any CRLF-ended line of `block` is over 998 octets.
pub fn has_long_line(block: &[u8]) -> bool {
    block
        .split(|&b| b == b'\n')
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > MAX_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        assert_eq!(line_kind(b""), LineKind::Empty);
        assert_eq!(line_kind(b"Subject: x"), LineKind::Field);
        assert_eq!(line_kind(b"Subject : x"), LineKind::Field);
        assert_eq!(line_kind(b"\tmore"), LineKind::Continuation);
        assert_eq!(line_kind(b"hello world"), LineKind::Other);
        assert_eq!(line_kind(b"time 10:00 now"), LineKind::Other);
        assert_eq!(line_kind(b":empty name"), LineKind::Other);
        assert_eq!(
            line_kind(b"From root Tue Dec  1 10:00:00 2026"),
            LineKind::Other
        );
    }

    #[test]
    fn a_long_line_folds_at_whitespace_and_unfolds_to_the_same_value() {
        let mut line = b"X-Long:".to_vec();
        for i in 0..300 {
            line.extend_from_slice(format!(" word{i}").as_bytes());
        }
        assert!(line.len() > 1500);
        let folded = fold_line(&line).unwrap();
        for l in folded.split(|&b| b == b'\n') {
            assert!(l.len() <= MAX_LINE + 1);
        }
        let unfolded: Vec<u8> = String::from_utf8(folded.clone())
            .unwrap()
            .replace("\r\n", "")
            .into_bytes();
        assert_eq!(unfolded, line);
        // Continuations begin with the whitespace that was there.
        assert!(folded
            .split(|&b| b == b'\n')
            .skip(1)
            .all(|l| l.starts_with(b" ")));
    }

    #[test]
    fn a_long_line_without_whitespace_cannot_be_folded() {
        let mut line = b"X-Token: ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 1500));
        assert_eq!(fold_line(&line), Err(NoFoldPoint));
        // Only leading whitespace: folding there would leave a blank continuation.
        let mut line = vec![b' '; 3];
        line.extend(std::iter::repeat_n(b'a', 1500));
        assert_eq!(fold_line(&line), Err(NoFoldPoint));
    }
}
