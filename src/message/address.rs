//! An envelope address as RFC 5321 §4.1.2 writes it: one type, read strictly from the
//! MAIL or RCPT command text on the way in, stored in the spool in its written form, and
//! read again and written with the quoting RFC 5321 requires on the way out. So the
//! upstream reads the very path the relay checked, and a quoted local part can never turn
//! into parameters (`"x> AUTH=<y"@example.com`) on the way through.

use crate::config::is_dns_name;
use std::fmt;

/// RFC 5321 §4.5.3.1.3 limits a path to 256 octets; smtp-proto refuses a longer address
/// at MAIL and RCPT, so the reader of stored addresses does too. A protocol limit, not a
/// tunable: no upstream is obliged to take more.
const MAX_ADDRESS: usize = 256;

/// A mailbox `local@domain`. The local part is held unquoted; [`fmt::Display`] quotes it
/// again when it is not a dot-atom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    local: String,
    domain: String,
}

/// The sender of a transaction: a mailbox, or `<>` for bounces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

/// Why an address is not a path the relay forwards. The text goes into the SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the address must be written in angle brackets")]
    NoBrackets,
    #[error("the address has no closing >")]
    Unclosed,
    #[error("there is text after the closing > that is not a parameter")]
    Trailing,
    #[error("the address has no @domain")]
    NoDomain,
    #[error("the local part before @ is empty")]
    EmptyLocalPart,
    #[error("the local part is neither dot-separated words nor one quoted string")]
    BadLocalPart,
    #[error("the quoted local part is not closed")]
    UnclosedQuote,
    #[error("the local part holds a control character")]
    ControlCharacter,
    // Inside a quoted local part these are valid RFC 5321, but only `>` ends a path for
    // every parser upstream if no other `>` comes before it.
    #[error("the local part holds < or >")]
    AngleBracket,
    #[error("the domain is not a valid host name")]
    BadDomain,
    #[error("the source route before : is malformed")]
    BadSourceRoute,
    #[error("the address is not valid UTF-8")]
    NonAscii,
    #[error("the address is longer than 256 octets")]
    TooLong,
    #[error("the null address <> is not a valid recipient")]
    NullRecipient,
    #[error("the address reads differently to the command parser; write it plainly")]
    Ambiguous,
}

/// RFC 5322 atext: the characters of an unquoted word.
pub(crate) fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// RFC 6531 §3.3 / RFC 6532 §3.2: atext extended by UTF-8 (every byte of a non-ASCII
/// character is above 127, and the reader works on text that is valid UTF-8).
fn is_utf8_atext(b: u8) -> bool {
    is_atext(b) || b >= 0x80
}

/// Words of atext joined by single dots: what may stand unquoted.
pub(crate) fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|w| !w.is_empty() && w.bytes().all(is_utf8_atext))
}

impl Mailbox {
    /// From parts a reader has already checked.
    pub(super) fn from_parts(local: String, domain: String) -> Mailbox {
        Mailbox { local, domain }
    }

    /// The local part as the mailbox owner spelled it, without quotes or escapes.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain as written (case kept).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the address holds UTF-8 (RFC 6531): it then needs SMTPUTF8 upstream, or,
    /// when only the domain does, its A-label spelling ([`Mailbox::ascii_form`]).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The address as an upstream without SMTPUTF8 can take it: a U-label domain written
    /// as its A-label (the same name, RFC 5890); None when the local part is UTF-8, which
    /// has no ASCII form.
    pub fn ascii_form(&self) -> Option<Mailbox> {
        if !self.local.is_ascii() {
            return None;
        }
        let domain = crate::domain::to_ascii(&self.domain)?;
        Some(Mailbox {
            local: self.local.clone(),
            domain,
        })
    }

    /// `local@domain` with the local part unquoted, as smtp-proto reports it.
    pub fn unquoted(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// Reads a mailbox written as [`fmt::Display`] writes it (the spool's form), the
    /// whole text and nothing else.
    pub fn parse(text: &str) -> Result<Mailbox, PathError> {
        let mut r = Reader::new(text.as_bytes())?;
        let mailbox = r.mailbox()?;
        if r.peek().is_some() {
            return Err(PathError::Trailing);
        }
        Ok(mailbox)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_atom(&self.local) {
            f.write_str(&self.local)?;
        } else {
            // RFC 5321 quoted-string: only `"` and `\` need a backslash.
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl ReversePath {
    /// The mailbox, or None for `<>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// Reads the stored form: empty for `<>`, else a mailbox.
    pub fn parse(text: &str) -> Result<ReversePath, PathError> {
        if text.is_empty() {
            return Ok(ReversePath::Null);
        }
        Mailbox::parse(text).map(ReversePath::Mailbox)
    }
}

impl fmt::Display for ReversePath {
    /// Empty for `<>`: the spool's form, inside the brackets on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// A path read from a command, and the rest of the line after its `>`.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandPath<'a> {
    pub path: ReversePath,
    /// Empty, or the parameters, starting with a space.
    pub parameters: &'a str,
}

/// Reads the path of a MAIL or RCPT command line (`MAIL FROM:<path> params CRLF`),
/// strictly: `<`, an optional source route (ignored, RFC 5321 §4.1.2), a mailbox or
/// nothing, `>`, then the end of the line or a space before the parameters. The verb
/// itself is smtp-proto's to check.
pub fn command_path(line: &[u8]) -> Result<CommandPath<'_>, PathError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    // UTF-8 is taken as RFC 6531 writes it (with or without the SMTPUTF8 parameter, which
    // the delivery decides on); bytes that are not UTF-8 are no address at all.
    let text = std::str::from_utf8(line).map_err(|_| PathError::NonAscii)?;
    // "MAIL FROM" and "RCPT TO" hold no colon; smtp-proto allows spaces after it.
    let Some((_, after)) = text.split_once(':') else {
        return Err(PathError::NoBrackets);
    };
    let mut r = Reader::new(after.trim_start_matches(' ').as_bytes())?;
    if r.next() != Some(b'<') {
        return Err(PathError::NoBrackets);
    }
    if r.peek() == Some(b'@') {
        r.source_route()?;
    }
    let path = if r.peek() == Some(b'>') {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(r.mailbox()?)
    };
    match r.next() {
        Some(b'>') => {}
        None => return Err(PathError::Unclosed),
        Some(_) => return Err(PathError::Trailing),
    }
    let parameters = &after.trim_start_matches(' ')[r.pos..];
    if !parameters.is_empty() && !parameters.starts_with(' ') {
        return Err(PathError::Trailing);
    }
    Ok(CommandPath { path, parameters })
}

/// A cursor over the bytes of valid UTF-8 text; every byte of a non-ASCII character is
/// above 127, so a byte-wise cut at an ASCII delimiter is a character boundary.
struct Reader<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(s: &'a [u8]) -> Result<Reader<'a>, PathError> {
        if std::str::from_utf8(s).is_err() {
            return Err(PathError::NonAscii);
        }
        Ok(Reader { s, pos: 0 })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Consumes bytes while `keep` holds; returns them.
    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        // UTF-8 was checked in `new`, and `keep` stops only at ASCII bytes.
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default()
    }

    /// `@host,@host:`, skipped.
    fn source_route(&mut self) -> Result<(), PathError> {
        loop {
            if self.next() != Some(b'@') {
                return Err(PathError::BadSourceRoute);
            }
            if !is_dns_name(self.domain_text()) {
                return Err(PathError::BadSourceRoute);
            }
            match self.next() {
                Some(b',') => {}
                Some(b':') => return Ok(()),
                _ => return Err(PathError::BadSourceRoute),
            }
        }
    }

    fn domain_text(&mut self) -> &'a str {
        self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    }

    /// A domain of the mailbox: ASCII labels, or U-labels (RFC 6531 §3.3) whose A-label
    /// form is a valid name.
    fn mailbox_domain(&mut self) -> Result<&'a str, PathError> {
        let domain = self.take_while(|b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b >= 0x80
        });
        let valid = if domain.is_ascii() {
            is_dns_name(domain)
        } else {
            crate::domain::to_ascii(domain).is_some_and(|a| is_dns_name(&a))
        };
        if valid {
            Ok(domain)
        } else {
            Err(PathError::BadDomain)
        }
    }

    /// `Local-part "@" Domain`; address literals are not relayed.
    fn mailbox(&mut self) -> Result<Mailbox, PathError> {
        let local = if self.peek() == Some(b'"') {
            self.quoted()?
        } else {
            let local = self.take_while(|b| is_utf8_atext(b) || b == b'.');
            if local.is_empty() {
                return Err(match self.peek() {
                    Some(b'@') => PathError::EmptyLocalPart,
                    Some(b) if b.is_ascii_control() => PathError::ControlCharacter,
                    Some(b'>') | None => PathError::NoDomain,
                    Some(_) => PathError::BadLocalPart,
                });
            }
            if !is_dot_atom(local) {
                return Err(PathError::BadLocalPart);
            }
            local.to_string()
        };
        match self.next() {
            Some(b'@') => {}
            Some(b'>') | None => return Err(PathError::NoDomain),
            Some(b) if b.is_ascii_control() => return Err(PathError::ControlCharacter),
            Some(_) => return Err(PathError::BadLocalPart),
        }
        let domain = self.mailbox_domain()?;
        if self.peek().is_some_and(|b| b != b'>') {
            return Err(match self.peek() {
                Some(b) if b.is_ascii_control() => PathError::ControlCharacter,
                _ => PathError::BadDomain,
            });
        }
        if local.len() + 1 + domain.len() > MAX_ADDRESS {
            return Err(PathError::TooLong);
        }
        Ok(Mailbox {
            local,
            domain: domain.to_string(),
        })
    }

    /// An RFC 5321 quoted string, unquoted. Refuses what RFC 5321 cannot carry (controls,
    /// DEL) and what other parsers would read as the end of the path (`<`, `>`).
    fn quoted(&mut self) -> Result<String, PathError> {
        self.next();
        let mut local = Vec::new();
        loop {
            let b = match self.next() {
                None => return Err(PathError::UnclosedQuote),
                Some(b'"') => break,
                Some(b'\\') => self.next().ok_or(PathError::UnclosedQuote)?,
                Some(b) => b,
            };
            if b.is_ascii_control() {
                return Err(PathError::ControlCharacter);
            }
            if b == b'<' || b == b'>' {
                return Err(PathError::AngleBracket);
            }
            local.push(b);
        }
        if local.is_empty() {
            return Err(PathError::EmptyLocalPart);
        }
        // Only an escape could split a character, and RFC 5321 escapes ASCII only.
        String::from_utf8(local).map_err(|_| PathError::NonAscii)
    }
}

#[cfg(test)]
mod tests;
