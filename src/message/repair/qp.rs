//! Quoted-printable (RFC 2045 §6.7) for one line at a time: how a part with a line over
//! 998 octets is made sign-safe. Output lines are at most 76 octets; a soft line break
//! (`=` CRLF) splits a long input line, and the input's CRLF stays a hard line break, so
//! decoding gives back the exact bytes.

/// Longest encoded line, the soft-break `=` included (RFC 2045 §6.7 rule 5).
const MAX: usize = 76;

/// Appends the encoding of `line` (without its CRLF) to `out`, then CRLF when `crlf`.
///
/// A `-` or `F` that would begin an output line is encoded: a continuation line must
/// never read as a MIME boundary (`--b`) or be mangled by an mbox writer (`From `).
pub fn encode_line(line: &[u8], crlf: bool, out: &mut Vec<u8>) {
    let mut len = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal = match b {
            b'=' => false,
            // Whitespace at the end of an encoded line would be stripped in transit.
            b' ' | b'\t' => !last,
            b'-' | b'F' => len > 0,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Room for the piece and, unless it ends the line, a soft break after it.
        let room = if last { MAX } else { MAX - 1 };
        if len + width > room {
            out.extend_from_slice(b"=\r\n");
            len = 0;
        }
        // At the start of a fresh output line the two guarded bytes are encoded too.
        if literal && !(len == 0 && (b == b'-' || b == b'F')) {
            out.push(b);
            len += 1;
        } else {
            out.extend_from_slice(&[b'=', hex(b >> 4), hex(b & 15)]);
            len += 3;
        }
    }
    if crlf {
        out.extend_from_slice(b"\r\n");
    }
}

fn hex(n: u8) -> u8 {
    b"0123456789ABCDEF"[n as usize]
}

/// Decodes quoted-printable (for tests and the fuzz check: what was encoded comes back).
pub fn decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'=' if text[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' if i + 2 < text.len() => {
                let v = std::str::from_utf8(&text[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_line(line, true, &mut out);
        out
    }

    #[test]
    fn lines_are_short_and_decode_back() {
        let samples: Vec<Vec<u8>> = vec![
            vec![b'x'; 2000],
            b"a=b trailing space ".to_vec(),
            (0u8..=255)
                .cycle()
                .take(3000)
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect(),
            b"--boundary".repeat(300),
            b"From the start From again ".repeat(100),
            vec![b'='; 500],
            Vec::new(),
        ];
        for s in samples {
            let e = enc(&s);
            for l in e.split(|b| *b == b'\n') {
                assert!(l.len() <= MAX + 1, "{}", String::from_utf8_lossy(l));
                assert!(!l.starts_with(b"--") && !l.starts_with(b"From "));
                assert!(!l.ends_with(b" \r") && !l.ends_with(b"\t\r"));
            }
            let mut want = s.clone();
            want.extend_from_slice(b"\r\n");
            assert_eq!(decode(&e), want);
        }
    }
}
