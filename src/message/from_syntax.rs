//! A strict reader for the one mailbox of a From field (RFC 5322 §3.4): `addr-spec` or
//! `[display-name] <addr-spec>`, with comments and folding only around the address, never
//! inside it. It reads less than RFC 5322 allows, on purpose: the From domain decides the
//! DKIM key, so a From is accepted only in a form that every reasonable parser (mail-parser
//! here, Python's email package, a receiver's regular expression) reads as the same single
//! mailbox. Everything else is refused with the reason, never guessed at.

use super::address::{is_atext, Mailbox};
use crate::config::is_dns_name;

/// What is wrong with a From value. The text goes into the 550 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FromSyntax {
    #[error("it holds no address")]
    NoAddress,
    #[error("it holds the null address <>, which is not a mailbox")]
    NullAddress,
    #[error("it holds a group (name: ...;) instead of one mailbox")]
    Group,
    #[error("it holds more than one mailbox")]
    SeveralMailboxes,
    #[error("it holds a second <address> after the first")]
    SecondAddress,
    #[error("it has text after the address")]
    Leftover,
    #[error("an < has no closing >")]
    Unclosed,
    #[error("the display name holds an unquoted @, >, [ or \\; put the name in double quotes")]
    SpecialInName,
    #[error("the display name holds < or >")]
    AngleInName,
    #[error("a comment holds <, > or @, which some readers take for an address")]
    AddressInComment,
    #[error("a comment or quoted string is not closed")]
    UnclosedQuoteOrComment,
    #[error("the address holds a space, fold or comment")]
    SpaceInAddress,
    #[error("the address holds more than one @")]
    SeveralAts,
    #[error("the address has no @domain with a dot; write user@example.com")]
    Unqualified,
    #[error("the local part is neither dot-separated words nor one quoted string")]
    BadLocalPart,
    // mail-parser reads `"joe"@example.com` as a display name and `<"joe"@example.com>`
    // with its quotes: no two readers agree on a quoted local part in a header.
    #[error("the local part is in quotes; write the address without them")]
    QuotedLocalPart,
    #[error("the domain is an address literal in [ ]")]
    DomainLiteral,
    #[error("the domain is not a valid host name")]
    BadDomain,
    #[error("the domain holds non-ASCII characters that are no valid internationalised name")]
    NonAscii,
    #[error("it holds a control character")]
    Control,
}

/// One lexical piece of the value, after unfolding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A run of atext (and, in a display name, UTF-8).
    Atom(String),
    /// A quoted string, unquoted.
    Quoted(String),
    Dot,
    At,
    LAngle,
    RAngle,
    Comma,
    /// `:` or `;`: group syntax.
    GroupMark,
    /// `[...]`
    Literal,
    /// A character that is never valid outside quotes here (`]`, `\`).
    Stray,
    Space,
    Comment,
}

/// Reads the single mailbox of a From field's raw value (folds included).
pub fn read_from(value: &[u8]) -> Result<Mailbox, FromSyntax> {
    let toks = tokenize(&unfold(value)?)?;
    if toks.contains(&Tok::GroupMark) {
        return Err(FromSyntax::Group);
    }
    if toks.contains(&Tok::Comma) {
        return Err(FromSyntax::SeveralMailboxes);
    }
    let blank = |t: &Tok| matches!(t, Tok::Space | Tok::Comment);
    let Some(open) = toks.iter().position(|t| *t == Tok::LAngle) else {
        let start = toks.iter().position(|t| !blank(t)).unwrap_or(toks.len());
        let end = toks
            .iter()
            .rposition(|t| !blank(t))
            .map_or(start, |i| i + 1);
        return addr_spec(&toks[start..end]);
    };
    display_name(&toks[..open])?;
    let close = toks[open..]
        .iter()
        .position(|t| *t == Tok::RAngle)
        .map(|i| open + i)
        .ok_or(FromSyntax::Unclosed)?;
    let mailbox = match &toks[open + 1..close] {
        [] => return Err(FromSyntax::NullAddress),
        inner => addr_spec(inner)?,
    };
    for t in &toks[close + 1..] {
        match t {
            Tok::Space | Tok::Comment => {}
            Tok::LAngle => return Err(FromSyntax::SecondAddress),
            _ => return Err(FromSyntax::Leftover),
        }
    }
    Ok(mailbox)
}

/// Joins folded lines: CRLF is dropped where a space or tab follows; anywhere else a CR
/// or LF is refused, as is every other control character but tab.
fn unfold(value: &[u8]) -> Result<Vec<u8>, FromSyntax> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r'
                if value.get(i + 1) == Some(&b'\n')
                    && matches!(value.get(i + 2), Some(b' ' | b'\t')) =>
            {
                i += 2;
                continue;
            }
            b'\t' => out.push(b' '),
            b if b < 0x20 || b == 0x7f => return Err(FromSyntax::Control),
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

fn tokenize(s: &[u8]) -> Result<Vec<Tok>, FromSyntax> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        i += 1;
        let tok = match b {
            b' ' => {
                while s.get(i) == Some(&b' ') {
                    i += 1;
                }
                Tok::Space
            }
            b'.' => Tok::Dot,
            b'@' => Tok::At,
            b'<' => Tok::LAngle,
            b'>' => Tok::RAngle,
            b',' => Tok::Comma,
            b':' | b';' => Tok::GroupMark,
            b']' | b'\\' => Tok::Stray,
            b'[' => {
                while s.get(i).is_some_and(|&c| c != b']') {
                    i += 1;
                }
                if i == s.len() {
                    return Err(FromSyntax::UnclosedQuoteOrComment);
                }
                i += 1;
                Tok::Literal
            }
            b'"' => {
                let mut text = Vec::new();
                loop {
                    match s.get(i) {
                        None => return Err(FromSyntax::UnclosedQuoteOrComment),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            i += 1;
                            text.push(*s.get(i).ok_or(FromSyntax::UnclosedQuoteOrComment)?);
                        }
                        Some(&c) => text.push(c),
                    }
                    i += 1;
                }
                i += 1;
                Tok::Quoted(String::from_utf8_lossy(&text).into_owned())
            }
            b'(' => {
                // Comments nest (RFC 5322 §3.2.2); counted, not recursed.
                let mut depth = 1;
                while depth > 0 {
                    match s.get(i) {
                        None => return Err(FromSyntax::UnclosedQuoteOrComment),
                        Some(b'(') => depth += 1,
                        Some(b')') => depth -= 1,
                        Some(b'\\') if matches!(s.get(i + 1), Some(b'<' | b'>' | b'@')) => {
                            return Err(FromSyntax::AddressInComment)
                        }
                        Some(b'\\') => i += 1,
                        Some(b'<' | b'>' | b'@') => return Err(FromSyntax::AddressInComment),
                        Some(_) => {}
                    }
                    i += 1;
                }
                if i > s.len() {
                    return Err(FromSyntax::UnclosedQuoteOrComment);
                }
                Tok::Comment
            }
            b')' => Tok::Stray,
            b if is_atext(b) || b >= 0x80 => {
                let start = i - 1;
                while s.get(i).is_some_and(|&c| is_atext(c) || c >= 0x80) {
                    i += 1;
                }
                Tok::Atom(String::from_utf8_lossy(&s[start..i]).into_owned())
            }
            _ => Tok::Stray,
        };
        toks.push(tok);
    }
    Ok(toks)
}

/// A phrase of words (RFC 5322 §3.2.5), with the obsolete period after the first word
/// (`Joe Q. Public`) that is common and read alike by everyone.
fn display_name(toks: &[Tok]) -> Result<(), FromSyntax> {
    let mut words = 0;
    for t in toks {
        match t {
            Tok::Atom(_) => words += 1,
            Tok::Quoted(q) if q.contains(['<', '>']) => return Err(FromSyntax::AngleInName),
            Tok::Quoted(_) => words += 1,
            Tok::Dot if words > 0 => {}
            Tok::Space | Tok::Comment => {}
            Tok::RAngle if words == 0 => return Err(FromSyntax::Leftover),
            _ => return Err(FromSyntax::SpecialInName),
        }
    }
    Ok(())
}

/// `local@domain` with nothing between its pieces.
fn addr_spec(toks: &[Tok]) -> Result<Mailbox, FromSyntax> {
    if toks.is_empty() {
        return Err(FromSyntax::NoAddress);
    }
    if toks.iter().any(|t| matches!(t, Tok::Space | Tok::Comment)) {
        // `Joe Bloggs`: words, but no address among them.
        return Err(if toks.contains(&Tok::At) {
            FromSyntax::SpaceInAddress
        } else {
            FromSyntax::NoAddress
        });
    }
    if toks.iter().any(|t| matches!(t, Tok::LAngle | Tok::RAngle)) {
        return Err(FromSyntax::SecondAddress);
    }
    if !toks.contains(&Tok::At) {
        return Err(FromSyntax::Unqualified);
    }
    let mut parts = toks.split(|t| *t == Tok::At);
    let (Some(local), Some(domain)) = (parts.next(), parts.next()) else {
        return Err(FromSyntax::Unqualified);
    };
    if parts.next().is_some() {
        return Err(FromSyntax::SeveralAts);
    }
    let local = match local {
        [Tok::Quoted(_)] => return Err(FromSyntax::QuotedLocalPart),
        words => dotted(words).ok_or(FromSyntax::BadLocalPart)?,
    };
    if domain == [Tok::Literal] {
        return Err(FromSyntax::DomainLiteral);
    }
    let domain = dotted(domain).ok_or(FromSyntax::BadDomain)?;
    // RFC 6532 allows UTF-8 in the addr-spec; a U-label domain counts as its A-label
    // (src/domain.rs), which must be a valid name. The delivery sends such a From only to
    // an upstream with SMTPUTF8 (message::transport_form).
    let ascii_domain = if domain.is_ascii() {
        Some(domain.clone())
    } else {
        crate::domain::to_ascii(&domain)
    };
    let Some(ascii_domain) = ascii_domain else {
        return Err(FromSyntax::NonAscii);
    };
    if !is_dns_name(&ascii_domain) {
        return Err(FromSyntax::BadDomain);
    }
    if !domain.contains('.') {
        return Err(FromSyntax::Unqualified);
    }
    Ok(Mailbox::from_parts(local, domain))
}

/// Atoms joined by single dots, as one string.
fn dotted(toks: &[Tok]) -> Option<String> {
    let mut out = String::new();
    for (i, t) in toks.iter().enumerate() {
        match (i % 2, t) {
            (0, Tok::Atom(a)) => out.push_str(a),
            (1, Tok::Dot) => out.push('.'),
            _ => return None,
        }
    }
    (toks.len() % 2 == 1).then_some(out)
}

#[cfg(test)]
mod tests;
