//! The form a message takes for one upstream, decided from what the message uses (UTF-8,
//! 8-bit) and what the upstream's EHLO offers (SMTPUTF8, 8BITMIME), and the conversion
//! to that form. The one place these rules live: the delivery signs what [`convert`]
//! returns, so what is signed is what is sent.
//!
//! - UTF-8 (RFC 6531/6532) goes as it is, with SMTPUTF8 on MAIL, where it is offered.
//!   Elsewhere UTF-8 header values become RFC 2047 encoded-words ([`super::encoded_words`]);
//!   a UTF-8 address cannot be encoded, and the delivery fails what holds one.
//! - An 8-bit body goes with BODY=8BITMIME where 8BITMIME is offered; elsewhere each
//!   8-bit part becomes quoted-printable (RFC 6152 §3, RFC 2045 §6.7) and its
//!   Content-Transfer-Encoding says so. A part inside multipart/signed or
//!   multipart/encrypted is never converted: that would break the sender's own signature.

use super::encoded_words::{encode_field, Unencodable};
use std::borrow::Cow;

/// What an upstream's EHLO offers that decides the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offer {
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
}

/// What a message uses, from its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uses {
    /// The client asked for SMTPUTF8, or an address or header value holds UTF-8.
    pub utf8: bool,
    /// A header field value holds UTF-8.
    pub utf8_headers: bool,
    /// Some byte of the message is above 127.
    pub eight_bit: bool,
}

/// The form of a message for one upstream; equal forms are the same bytes, so signatures
/// made for one serve the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Form {
    /// MAIL carries SMTPUTF8; UTF-8 goes as stored.
    pub smtputf8: bool,
    /// UTF-8 header values become encoded-words.
    pub encode_headers: bool,
    /// MAIL carries BODY=8BITMIME; the body goes as stored.
    pub body_8bitmime: bool,
    /// 8-bit parts become quoted-printable.
    pub body_to_qp: bool,
}

impl Form {
    /// As stored, for a destination with no SMTP limits (the outbox).
    pub const AS_STORED: Form = Form {
        smtputf8: false,
        encode_headers: false,
        body_8bitmime: false,
        body_to_qp: false,
    };

    pub fn for_upstream(uses: Uses, offer: Offer) -> Form {
        Form {
            smtputf8: uses.utf8 && offer.smtputf8,
            encode_headers: uses.utf8_headers && !offer.smtputf8,
            body_8bitmime: uses.eight_bit && offer.eight_bit_mime,
            body_to_qp: uses.eight_bit && !offer.eight_bit_mime,
        }
    }

    /// Whether [`convert`] can change the bytes at all.
    pub fn converts(&self) -> bool {
        self.encode_headers || self.body_to_qp
    }

    /// Words for the log.
    pub fn describe(&self) -> &'static str {
        match (self.smtputf8, self.encode_headers, self.body_to_qp) {
            (_, true, true) => "encoded-words and quoted-printable",
            (_, true, false) => "encoded-words",
            (_, false, true) => "quoted-printable",
            (true, false, false) => "UTF-8 with SMTPUTF8",
            (false, false, false) => "as stored",
        }
    }
}

/// Why a message has no form the upstream takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unconvertible {
    #[error(transparent)]
    Header(#[from] Unencodable),
    #[error("an 8-bit part is inside {0}, which cannot be re-encoded without breaking the sender's own signature or encryption")]
    Protected(String),
    #[error("8-bit text outside any MIME part (preamble or epilogue) has no 7-bit form")]
    OutsideParts,
    #[error("a part declared {0} holds 8-bit bytes, which that encoding cannot hold")]
    BadEncoding(String),
    #[error("MIME parts are nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deeper nesting than this is refused rather than followed (hostile input).
const MAX_DEPTH: usize = 32;
/// Quoted-printable lines stay within this (RFC 2045 §6.7 rule 5).
const QP_LINE: usize = 76;

/// `message` (CRLF line endings, header block then body) in `form`; borrowed when
/// nothing changes.
pub fn convert(message: &[u8], form: Form) -> Result<Cow<'_, [u8]>, Unconvertible> {
    if !form.converts() {
        return Ok(Cow::Borrowed(message));
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 8);
    let (header, body) = split_entity(message);
    entity(
        header,
        body,
        form.encode_headers,
        form.body_to_qp,
        0,
        &mut out,
    )?;
    if out == message {
        return Ok(Cow::Borrowed(message));
    }
    Ok(Cow::Owned(out))
}

/// The header block (with its fields' CRLFs, without the empty line) and the body.
fn split_entity(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&[], &entity[2..]);
    }
    match find(entity, b"\r\n\r\n") {
        Some(i) => (&entity[..i + 2], &entity[i + 4..]),
        None => (entity, &[]),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header fields as written, each with its continuation lines and CRLF.
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < header.len() {
        let end = find(&header[pos..], b"\r\n").map_or(header.len(), |i| pos + i + 2);
        let continues = matches!(header.get(end), Some(b' ' | b'\t'));
        if !continues {
            out.push(&header[start..end]);
            start = end;
        }
        pos = end;
    }
    if start < header.len() {
        out.push(&header[start..]);
    }
    out
}

/// A field's name (trimmed) and value (after the colon, final CRLF removed).
fn name_value(field: &[u8]) -> (&str, &[u8]) {
    let field = field.strip_suffix(b"\r\n").unwrap_or(field);
    match field.iter().position(|&b| b == b':') {
        Some(i) => (
            std::str::from_utf8(&field[..i]).unwrap_or("").trim(),
            &field[i + 1..],
        ),
        None => ("", field),
    }
}

/// What the Content-Type and Content-Transfer-Encoding of an entity say.
struct Mime {
    /// `type/subtype`, lower case; text/plain when absent (RFC 2045 §5.2).
    content_type: String,
    boundary: Option<String>,
    /// Lower case; 7bit when absent.
    encoding: String,
    has_version: bool,
    has_type: bool,
}

fn mime(fields: &[&[u8]]) -> Mime {
    let mut m = Mime {
        content_type: "text/plain".into(),
        boundary: None,
        encoding: "7bit".into(),
        has_version: false,
        has_type: false,
    };
    for f in fields {
        let (name, value) = name_value(f);
        let value = String::from_utf8_lossy(value).replace("\r\n", "");
        if name.eq_ignore_ascii_case("content-type") {
            m.has_type = true;
            let mut params = value.split(';');
            m.content_type = params.next().unwrap_or("").trim().to_ascii_lowercase();
            m.boundary = params.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"').to_string())
            });
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            m.encoding = value.trim().to_ascii_lowercase();
        } else if name.eq_ignore_ascii_case("mime-version") {
            m.has_version = true;
        }
    }
    m
}

/// Writes one entity (a message or a MIME part) converted. `encode` writes UTF-8 header
/// values as encoded-words; `to_qp` converts 8-bit content to 7 bits.
fn entity(
    header: &[u8],
    body: &[u8],
    encode: bool,
    to_qp: bool,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unconvertible> {
    if depth > MAX_DEPTH {
        return Err(Unconvertible::TooDeep);
    }
    let fields = fields(header);
    let m = mime(&fields);
    // The converted body, when it is converted.
    let mut new_body: Option<Vec<u8>> = None;
    // The Content-Transfer-Encoding the entity gets, when it changes.
    let mut new_encoding: Option<&str> = None;
    if to_qp && !body.is_ascii() {
        let (top, sub) = m
            .content_type
            .split_once('/')
            .unwrap_or((&m.content_type, ""));
        match (top, m.boundary.as_deref()) {
            ("multipart", _) if sub == "signed" || sub == "encrypted" => {
                return Err(Unconvertible::Protected(m.content_type.clone()));
            }
            ("multipart", Some(boundary)) => {
                let mut converted = Vec::with_capacity(body.len());
                multipart(body, boundary, depth, &mut converted)?;
                new_body = Some(converted);
                new_encoding = (m.encoding != "7bit").then_some("7bit");
            }
            ("message", _) if sub == "rfc822" || sub == "global" => {
                let (h, b) = split_entity(body);
                let mut converted = Vec::with_capacity(body.len());
                entity(h, b, true, true, depth + 1, &mut converted)?;
                new_body = Some(converted);
                new_encoding = (m.encoding != "7bit").then_some("7bit");
            }
            _ => {
                if m.encoding == "quoted-printable" || m.encoding == "base64" {
                    return Err(Unconvertible::BadEncoding(m.encoding.clone()));
                }
                let mut converted = Vec::with_capacity(body.len() + body.len() / 4);
                quoted_printable(body, &mut converted);
                new_body = Some(converted);
                new_encoding = Some("quoted-printable");
            }
        }
    }
    for f in &fields {
        let (name, value) = name_value(f);
        if new_encoding.is_some() && name.eq_ignore_ascii_case("content-transfer-encoding") {
            continue;
        }
        if (encode || to_qp) && !f.is_ascii() {
            out.extend_from_slice(encode_field(name, value)?.as_bytes());
        } else {
            out.extend_from_slice(f);
            if !f.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Some(cte) = new_encoding {
        // A Content-Transfer-Encoding means nothing outside MIME (RFC 2045 §4): a plain
        // message becomes a MIME one; its charset is UTF-8 if the text is UTF-8.
        if depth == 0 && !m.has_version {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        if depth == 0 && !m.has_type {
            let charset = if std::str::from_utf8(body).is_ok() {
                "utf-8"
            } else {
                "unknown-8bit"
            };
            out.extend_from_slice(
                format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
    }
    if !header.is_empty() || !body.is_empty() || new_encoding.is_some() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(new_body.as_deref().unwrap_or(body));
    Ok(())
}

/// A multipart body with each part converted; the boundary lines, preamble and epilogue
/// (which must be ASCII) as written.
fn multipart(
    body: &[u8],
    boundary: &str,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unconvertible> {
    let delimiter = format!("--{boundary}");
    let mut pos = 0;
    // Where the part being read began, after its delimiter line.
    let mut part_start: Option<usize> = None;
    while pos < body.len() {
        let end = find(&body[pos..], b"\r\n").map_or(body.len(), |i| pos + i + 2);
        let line = body[pos..end]
            .strip_suffix(b"\r\n")
            .unwrap_or(&body[pos..end]);
        let kind = line.strip_prefix(delimiter.as_bytes()).and_then(|rest| {
            let (closing, rest) = match rest.strip_prefix(b"--") {
                Some(r) => (true, r),
                None => (false, rest),
            };
            rest.iter()
                .all(|&b| b == b' ' || b == b'\t')
                .then_some(closing)
        });
        if let Some(closing) = kind {
            match part_start {
                // The CRLF before a delimiter belongs to it (RFC 2046 §5.1.1).
                Some(s) => {
                    let part = &body[s..pos];
                    let part = part.strip_suffix(b"\r\n").unwrap_or(part);
                    let (h, b) = split_entity(part);
                    entity(h, b, true, true, depth + 1, out)?;
                    if pos > s {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                None => {
                    let preamble = &body[..pos];
                    if !preamble.is_ascii() {
                        return Err(Unconvertible::OutsideParts);
                    }
                    out.extend_from_slice(preamble);
                }
            }
            out.extend_from_slice(&body[pos..end]);
            if closing {
                let epilogue = &body[end..];
                if !epilogue.is_ascii() {
                    return Err(Unconvertible::OutsideParts);
                }
                out.extend_from_slice(epilogue);
                return Ok(());
            }
            part_start = Some(end);
        }
        pos = end;
    }
    match part_start {
        // Never closed: the rest is the last part.
        Some(s) => {
            let (h, b) = split_entity(&body[s..]);
            entity(h, b, true, true, depth + 1, out)?;
        }
        // No delimiter at all: nothing is a part.
        None if body.is_ascii() => out.extend_from_slice(body),
        None => return Err(Unconvertible::OutsideParts),
    }
    Ok(())
}

/// Quoted-printable (RFC 2045 §6.7) of CRLF text: line breaks stay hard breaks, lines
/// longer than 76 get soft breaks, and space or tab at a line's end is encoded.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let (line, crlf) = match line.strip_suffix(b"\r") {
            Some(l) if !last => (l, true),
            _ => (line, !last),
        };
        let mut len = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                (b'!'..=b'~').contains(&b) && b != b'=' || (b == b' ' || b == b'\t') && !at_end;
            let width = if literal { 1 } else { 3 };
            // Room for the soft break's `=` on this line.
            if len + width > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                len = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            len += width;
        }
        if crlf {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests;
