//! The MIME facts the repairs need from a header block: the media type, the boundary of
//! a multipart and the Content-Transfer-Encoding (RFC 2045, 2046). Read with comments
//! (nested, with escapes) and quoted strings (with escapes) understood, so a boundary
//! in quotes or a `boundary=` inside a comment is read as a MIME reader reads it.

/// What a part's (or the message's) header says about its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartType {
    /// Lower case, e.g. "text"; empty when there is no (readable) Content-Type.
    pub media: String,
    pub subtype: String,
    /// The boundary of a multipart, as written (case matters).
    pub boundary: Option<Vec<u8>>,
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// 7bit, 8bit, binary or none: the body is as it reads, so it may be re-encoded.
    #[default]
    Identity,
    QuotedPrintable,
    Base64,
    /// A token this relay does not know; such a body is never touched.
    Other,
}

impl PartType {
    pub fn is_multipart(&self) -> bool {
        self.media == "multipart" && self.boundary.is_some()
    }

    /// A body another party signed or encrypted: changing a byte of it breaks that.
    pub fn is_sealed(&self) -> bool {
        self.media == "multipart" && matches!(self.subtype.as_str(), "signed" | "encrypted")
    }

    /// message/rfc822 and friends may not be quoted-printable (RFC 2046 §5.2.1).
    pub fn is_message(&self) -> bool {
        self.media == "message"
    }

    /// Reads the Content-Type and Content-Transfer-Encoding of a header block made of
    /// `(name, raw value)` fields. A repeated field: the first counts, as in most readers.
    pub fn of<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> PartType {
        let mut t = PartType::default();
        let (mut seen_type, mut seen_cte) = (false, false);
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"Content-Type") && !seen_type {
                seen_type = true;
                read_content_type(value, &mut t);
            } else if name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") && !seen_cte {
                seen_cte = true;
                let tokens = tokens(value);
                t.encoding = match tokens.first() {
                    Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_slice() {
                        b"7bit" | b"8bit" | b"binary" => Encoding::Identity,
                        b"quoted-printable" => Encoding::QuotedPrintable,
                        b"base64" => Encoding::Base64,
                        _ => Encoding::Other,
                    },
                    _ => Encoding::Other,
                };
            }
        }
        t
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Special(u8),
}

/// RFC 2045 tokens: comments dropped, quoted strings unquoted, tspecials alone.
fn tokens(value: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                let mut depth = 0usize;
                while i < value.len() {
                    match value[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < value.len() && value[i] != b'"' {
                    if value[i] == b'\\' && i + 1 < value.len() {
                        i += 1;
                    }
                    if value[i] != b'\r' && value[i] != b'\n' {
                        s.push(value[i]);
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Quoted(s));
            }
            b')' | b'<' | b'>' | b'@' | b',' | b';' | b':' | b'\\' | b'/' | b'[' | b']' | b'?'
            | b'=' => {
                out.push(Tok::Special(b));
                i += 1;
            }
            _ => {
                let start = i;
                while i < value.len()
                    && !b" \t\r\n()<>@,;:\\\"/[]?=".contains(&value[i])
                    && value[i] > 32
                {
                    i += 1;
                }
                if i == start {
                    // A control byte: skipped, it is no token.
                    i += 1;
                } else {
                    out.push(Tok::Word(value[start..i].to_vec()));
                }
            }
        }
    }
    out
}

fn read_content_type(value: &[u8], t: &mut PartType) {
    let toks = tokens(value);
    let (Some(Tok::Word(media)), Some(Tok::Special(b'/')), Some(Tok::Word(sub))) =
        (toks.first(), toks.get(1), toks.get(2))
    else {
        return;
    };
    t.media = String::from_utf8_lossy(media).to_ascii_lowercase();
    t.subtype = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let mut rest = toks[3..].iter();
    while let Some(tok) = rest.next() {
        if *tok != Tok::Special(b';') {
            continue;
        }
        let (Some(Tok::Word(name)), Some(Tok::Special(b'=')), Some(val)) =
            (rest.next(), rest.next(), rest.next())
        else {
            continue;
        };
        let val = match val {
            Tok::Word(v) | Tok::Quoted(v) => v,
            Tok::Special(_) => continue,
        };
        if name.eq_ignore_ascii_case(b"boundary") && t.boundary.is_none() && !val.is_empty() {
            t.boundary = Some(val.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(value: &str) -> PartType {
        PartType::of([(&b"Content-Type"[..], value.as_bytes())].into_iter())
    }

    #[test]
    fn boundaries_are_read_as_a_mime_reader_reads_them() {
        for (value, want) in [
            (" multipart/mixed; boundary=abc", Some("abc")),
            (" Multipart/Mixed; BOUNDARY=\"a b;c=d\"", Some("a b;c=d")),
            (" multipart/mixed; boundary=\"a\\\"b\"", Some("a\"b")),
            (
                " multipart/mixed (boundary=fake); boundary=real",
                Some("real"),
            ),
            (
                " multipart/mixed; (nested (boundary=x) \\) ) boundary=y",
                Some("y"),
            ),
            (" multipart/mixed;\r\n\tboundary=\"folded\"", Some("folded")),
            (" multipart/mixed; charset=\"boundary=no\"", None),
            (
                " multipart/mixed; boundary=first; boundary=second",
                Some("first"),
            ),
            (" multipart/mixed; boundary=\"\"", None),
            (" multipart/mixed; boundary=\"unclosed", Some("unclosed")),
            (" (((", None),
        ] {
            let t = ct(value);
            assert_eq!(t.boundary.as_deref(), want.map(str::as_bytes), "{value}");
        }
        assert!(
            ct(" multipart/signed; boundary=x; protocol=\"application/pgp-signature\"").is_sealed()
        );
        assert!(!ct(" text/plain; boundary=x").is_multipart());
    }

    #[test]
    fn the_transfer_encoding_is_read_with_comments() {
        let of = |v: &str| {
            PartType::of([(&b"Content-Transfer-Encoding"[..], v.as_bytes())].into_iter()).encoding
        };
        assert_eq!(of(" 8bit"), Encoding::Identity);
        assert_eq!(of(" (x) Quoted-Printable (y)"), Encoding::QuotedPrintable);
        assert_eq!(of(" base64"), Encoding::Base64);
        assert_eq!(of(" x-uuencode"), Encoding::Other);
        assert_eq!(of(""), Encoding::Other);
    }
}
