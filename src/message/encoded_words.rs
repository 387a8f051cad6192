//! UTF-8 header field values written as RFC 2047 encoded-words, for an upstream that does
//! not offer SMTPUTF8. Only where RFC 2047 §5 allows one: the words of an unstructured
//! field (Subject, Comments, X-…), the display-name phrase of an address field and its
//! comments. Never inside an addr-spec (a UTF-8 address has no 7-bit form: the caller
//! fails the message instead), and never in fields whose syntax has no place for one
//! (Message-ID, Content-Type parameters, Received, …).
//!
//! Encoded-words are `=?UTF-8?B?…?=`, at most 75 characters each, cut only between
//! characters, and the field is refolded so no line passes 76 characters where it can be
//! broken (RFC 2047 §2). Encoded-words already in the value are kept as they are; text
//! next to one keeps its space inside the new word, since decoders drop the white space
//! between two adjacent encoded-words (RFC 2047 §6.2).

use base64::Engine;

/// How a field's value may be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `unstructured` (RFC 5322 §3.2.5): any word may be an encoded-word.
    Unstructured,
    /// mailbox-list / address-list: phrases and comments may be, addresses not.
    Addresses,
    /// Everything else: no encoded-word is allowed.
    Structured,
}

const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "disposition-notification-to",
];

/// Structured fields of RFC 5322, RFC 2045 and the trace fields: no encoded-word fits.
const STRUCTURED_FIELDS: &[&str] = &[
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "resent-date",
    "resent-message-id",
    "received",
    "return-path",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-disposition",
    "dkim-signature",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
];

impl Kind {
    fn of(name: &str) -> Kind {
        let lower = name.trim().to_ascii_lowercase();
        if ADDRESS_FIELDS.contains(&lower.as_str()) {
            Kind::Addresses
        } else if STRUCTURED_FIELDS.contains(&lower.as_str()) {
            Kind::Structured
        } else {
            // Subject, Comments, Keywords, Content-Description and unknown (X-) fields.
            Kind::Unstructured
        }
    }
}

/// Why a field's UTF-8 cannot be written in 7 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unencodable {
    #[error("the {0} field holds a UTF-8 address, which has no 7-bit form")]
    Address(String),
    #[error("the {0} field holds UTF-8 where RFC 2047 allows no encoded-word")]
    Structured(String),
    #[error("the {0} field is not valid UTF-8")]
    NotUtf8(String),
}

/// The longest encoded-word (RFC 2047 §2).
const MAX_WORD: usize = 75;
/// Lines holding encoded-words stay within this many characters (RFC 2047 §2).
const MAX_LINE: usize = 76;
const PREFIX: &str = "=?UTF-8?B?";
/// UTF-8 bytes per encoded-word: 4·⌈n/3⌉ + 12 ≤ 75 gives 45.
const BYTES_PER_WORD: usize = (MAX_WORD - PREFIX.len() - 2) / 4 * 3;

/// The field `name: value` (value as written after the colon, folds included) with its
/// UTF-8 written as encoded-words and refolded; returns the whole field with its CRLF.
/// A value that is ASCII is never passed here (it is kept byte for byte).
pub fn encode_field(name: &str, value: &[u8]) -> Result<String, Unencodable> {
    let text = std::str::from_utf8(value).map_err(|_| Unencodable::NotUtf8(name.into()))?;
    let unfolded: String = text.replace("\r\n", "");
    let pieces = match Kind::of(name) {
        Kind::Unstructured => unstructured(&unfolded),
        Kind::Addresses => addresses(name, &unfolded)?,
        Kind::Structured => return Err(Unencodable::Structured(name.into())),
    };
    Ok(fold(name, &pieces))
}

/// A piece of the new value that is never broken, and whether white space came before it
/// (where a fold may go).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    text: String,
    space_before: bool,
}

fn piece(text: impl Into<String>, space_before: bool) -> Piece {
    Piece {
        text: text.into(),
        space_before,
    }
}

/// Writes `name:` and the pieces, folding before a piece that would pass [`MAX_LINE`].
fn fold(name: &str, pieces: &[Piece]) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (n, p) in pieces.iter().enumerate() {
        if p.space_before || n == 0 {
            if line + 1 + p.text.len() > MAX_LINE && line > 1 {
                out.push_str("\r\n ");
                line = 1;
            } else {
                out.push(' ');
                line += 1;
            }
        }
        out.push_str(&p.text);
        line += p.text.len();
    }
    out.push_str("\r\n");
    out
}

/// `text` as encoded-words, each cut between characters.
fn encoded_words(text: &str, space_before: bool) -> Vec<Piece> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + BYTES_PER_WORD).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let chunk = &text[start..end];
        words.push(piece(
            format!("{PREFIX}{}?=", engine.encode(chunk.as_bytes())),
            // Words after the first are adjacent encoded-words: the space between them
            // is dropped by decoders, so it is only a place to fold.
            space_before || start > 0,
        ));
        start = end;
    }
    words
}

/// Whether a word is an encoded-word already (`=?charset?B|Q?text?=`).
fn is_encoded_word(word: &str) -> bool {
    let Some(inner) = word.strip_prefix("=?").and_then(|w| w.strip_suffix("?=")) else {
        return false;
    };
    let parts: Vec<&str> = inner.split('?').collect();
    word.is_ascii()
        && parts.len() == 3
        && !parts[0].is_empty()
        && matches!(parts[1], "B" | "b" | "Q" | "q")
        && !parts[2].contains(' ')
}

/// The words of an unstructured value: runs of words holding UTF-8 become encoded-words
/// (ASCII words between them join the run, so their spaces survive decoding), the rest
/// stays as written.
fn unstructured(value: &str) -> Vec<Piece> {
    let words: Vec<&str> = value.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i].is_ascii() {
            pieces.push(piece(words[i], true));
            i += 1;
            continue;
        }
        // The run: up to the last UTF-8 word before the next existing encoded-word.
        let mut end = i;
        let mut j = i;
        while j < words.len() && !is_encoded_word(words[j]) {
            if !words[j].is_ascii() {
                end = j;
            }
            j += 1;
        }
        let mut run = words[i..=end].join(" ");
        if i > 0 && is_encoded_word(words[i - 1]) {
            run.insert(0, ' ');
        }
        if words.get(end + 1).is_some_and(|w| is_encoded_word(w)) {
            run.push(' ');
        }
        pieces.extend(encoded_words(&run, true));
        i = end + 1;
    }
    pieces
}

/// One lexical token of an address field value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Space,
    /// `(…)` as written, nesting included.
    Comment(String),
    /// `"…"` as written.
    Quoted(String),
    /// `<…>` as written.
    Angle(String),
    /// `,`, `:`, `;`, `@`, `.`, `[`, `]` (a domain literal is read as text).
    Special(char),
    Atom(String),
}

fn tokens(value: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = value.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let tok = match c {
            ' ' | '\t' => {
                while chars.next_if(|(_, c)| *c == ' ' || *c == '\t').is_some() {}
                Tok::Space
            }
            '(' => {
                let mut depth = 1;
                let mut end = value.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                Tok::Comment(value[start..end].to_string())
            }
            '"' => {
                let mut end = value.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                Tok::Quoted(value[start..end].to_string())
            }
            '<' => {
                let mut end = value.len();
                for (i, c) in chars.by_ref() {
                    if c == '>' {
                        end = i + 1;
                        break;
                    }
                }
                Tok::Angle(value[start..end].to_string())
            }
            ',' | ':' | ';' | '@' | '.' | '[' | ']' => Tok::Special(c),
            _ => {
                let mut end = start + c.len_utf8();
                while let Some((i, c)) = chars.next_if(|(_, c)| !is_delimiter(*c)) {
                    end = i + c.len_utf8();
                }
                Tok::Atom(value[start..end].to_string())
            }
        };
        toks.push(tok);
    }
    toks
}

fn is_delimiter(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '(' | ')' | '"' | '<' | '>' | ',' | ':' | ';' | '@' | '.' | '[' | ']'
    )
}

/// The text of a quoted string or comment without its delimiters (`open`, `close`; an
/// unclosed one has none at its end) and escapes.
fn inside(token: &str, open: char, close: char) -> String {
    let inner = token.strip_prefix(open).unwrap_or(token);
    unescape(inner.strip_suffix(close).unwrap_or(inner))
}

fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// An address list: each mailbox's phrase (the words before `<`, or before `:` of a
/// group) and every comment may be encoded; a UTF-8 word anywhere else is part of an
/// addr-spec and refused.
fn addresses(name: &str, value: &str) -> Result<Vec<Piece>, Unencodable> {
    let toks = tokens(value);
    let mut pieces = Vec::new();
    let mut spaced = false;
    // Split into mailboxes at top-level `,` `;` and after a group's `:`.
    let mut start = 0;
    let mut i = 0;
    while i <= toks.len() {
        let end_here = i == toks.len() || matches!(toks[i], Tok::Special(',' | ';' | ':'));
        if !end_here {
            i += 1;
            continue;
        }
        let segment = &toks[start..i];
        let is_group_name = matches!(toks.get(i), Some(Tok::Special(':')));
        let has_angle = segment.iter().any(|t| matches!(t, Tok::Angle(_)));
        // Words before the angle-addr (or the whole group name) are a phrase.
        let phrase_end = if is_group_name {
            segment.len()
        } else if has_angle {
            segment
                .iter()
                .position(|t| matches!(t, Tok::Angle(_)))
                .unwrap_or(0)
        } else {
            0
        };
        let phrase = &segment[..phrase_end];
        let phrase_utf8 = phrase.iter().any(|t| match t {
            Tok::Atom(a) | Tok::Quoted(a) => !a.is_ascii(),
            _ => false,
        });
        let mut k = 0;
        if phrase_utf8 {
            // The whole phrase becomes encoded-words (a comment inside it ends it).
            while k < phrase.len() && !matches!(phrase[k], Tok::Comment(_) | Tok::Angle(_)) {
                k += 1;
            }
            // Atoms and dots of an obs-phrase were written without spaces between
            // them; words were separated by them. Rebuild with single spaces.
            let text = phrase[..k]
                .iter()
                .filter_map(|t| match t {
                    Tok::Space => Some(" ".to_string()),
                    Tok::Atom(a) => Some(a.clone()),
                    Tok::Special(c) => Some(c.to_string()),
                    Tok::Quoted(q) => Some(inside(q, '"', '"')),
                    _ => None,
                })
                .collect::<String>();
            let text = text.trim();
            let before = spaced || phrase.first() == Some(&Tok::Space);
            pieces.extend(encoded_words(text, before && !pieces.is_empty()));
            // An encoded-word is set apart from what follows by white space (§5).
            spaced = true;
        }
        for (n, t) in segment.iter().enumerate().skip(k) {
            let in_phrase = n < phrase_end;
            match t {
                Tok::Space => {
                    spaced = true;
                    continue;
                }
                Tok::Comment(c) if !c.is_ascii() => {
                    let inner = inside(c, '(', ')');
                    let mut words = encoded_words(&inner, spaced);
                    if let Some(first) = words.first_mut() {
                        first.text.insert(0, '(');
                    }
                    if let Some(last) = words.last_mut() {
                        last.text.push(')');
                    }
                    pieces.extend(words);
                }
                Tok::Atom(a) | Tok::Quoted(a) if !a.is_ascii() && in_phrase => {
                    // A UTF-8 word after a comment inside a phrase.
                    let text = match t {
                        Tok::Quoted(q) => inside(q, '"', '"'),
                        _ => a.clone(),
                    };
                    pieces.extend(encoded_words(&text, spaced));
                }
                Tok::Atom(a) | Tok::Quoted(a) | Tok::Angle(a) if !a.is_ascii() => {
                    return Err(Unencodable::Address(name.into()));
                }
                Tok::Comment(a) | Tok::Atom(a) | Tok::Quoted(a) | Tok::Angle(a) => {
                    pieces.push(piece(a.clone(), spaced));
                }
                Tok::Special(c) => pieces.push(piece(c.to_string(), spaced)),
            }
            spaced = false;
        }
        if let Some(sep) = toks.get(i) {
            let Tok::Special(c) = sep else { break };
            pieces.push(piece(c.to_string(), spaced));
            spaced = false;
        }
        i += 1;
        start = i;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests;
