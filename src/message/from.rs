//! The domain of the RFC 5322 From mailbox: the one DMARC aligns on, so the one to sign
//! for (DESIGN §4). The envelope sender is never used: bounces have `MAIL FROM:<>`.

use super::from_syntax::{read_from, FromSyntax};
use super::HeaderBlock;
use mail_parser::{Address, MessageParser};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    #[error("the message has no From header field")]
    Missing,
    #[error("the message has {0} From header fields")]
    Several(usize),
    #[error("the From header field is not one plain mailbox: {0}")]
    Syntax(FromSyntax),
    /// Our reader and mail-parser read different mailboxes: some reader downstream may too.
    #[error("the From header field reads as a different address to another parser")]
    ParsersDisagree,
}

/// Returns the lower-case domain of the single mailbox in the single From field, read by
/// our strict reader and confirmed by mail-parser: a From that two parsers read apart
/// is refused rather than signed for either reading.
pub fn from_domain(headers: &HeaderBlock<'_>) -> Result<String, FromError> {
    let mut froms = headers.all("From");
    let field = froms.next().ok_or(FromError::Missing)?;
    let extra = froms.count();
    if extra > 0 {
        return Err(FromError::Several(extra + 1));
    }
    let mailbox = read_from(field.value).map_err(FromError::Syntax)?;
    if mail_parser_reading(field.value).as_deref() != Some(mailbox.unquoted().as_str()) {
        return Err(FromError::ParsersDisagree);
    }
    Ok(crate::domain::normalise(mailbox.domain()))
}

/// The one address mail-parser finds in a From value, if it finds exactly one.
fn mail_parser_reading(value: &[u8]) -> Option<String> {
    // A one-field message holding just this value.
    let mut one_field = Vec::with_capacity(value.len() + 9);
    one_field.extend_from_slice(b"From:");
    one_field.extend_from_slice(value);
    one_field.extend_from_slice(b"\r\n\r\n");
    let parsed = MessageParser::new().parse_headers(&one_field)?;
    match parsed.from()? {
        Address::List(list) => match list.as_slice() {
            [one] => one.address.as_deref().map(str::to_string),
            _ => None,
        },
        Address::Group(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(headers: &str) -> Result<String, FromError> {
        let msg = format!("{headers}\r\n\r\nbody\r\n");
        from_domain(&HeaderBlock::parse(msg.as_bytes()).unwrap())
    }

    #[test]
    fn the_usual_forms_give_the_domain() {
        for (from, want) in [
            ("From: joe@Example.COM", "example.com"),
            ("From: Joe <joe@example.com>", "example.com"),
            (
                "From: \"Doe, Joe\" <joe@mail.example.com> (cron)",
                "mail.example.com",
            ),
            (
                "From: =?UTF-8?Q?J=C3=B6e?= <joe@example.com>",
                "example.com",
            ),
            ("From:\r\n <joe@example.com>", "example.com"),
            ("From: Joe Q. Public <joe@example.com>", "example.com"),
            ("From: joe@example.com (Joe Bloggs)", "example.com"),
            ("From: \"joe@example.com\" <joe@example.com>", "example.com"),
            ("From: Joe\r\n\t<joe@example.com>", "example.com"),
        ] {
            assert_eq!(domain(from).as_deref(), Ok(want), "{from}");
        }
    }

    #[test]
    fn missing_or_repeated_from_is_refused() {
        assert_eq!(domain("To: a@example.com"), Err(FromError::Missing));
        assert_eq!(
            domain("From: a@example.com\r\nFrom: b@example.org"),
            Err(FromError::Several(2))
        );
    }

    #[test]
    fn ambiguous_forms_are_refused_with_the_reason() {
        use FromSyntax::*;
        for (from, want) in [
            ("From: a@example.com, b@example.org", SeveralMailboxes),
            ("From: team: a@example.com, b@example.org;", Group),
            ("From: team:;", Group),
            ("From: <y@other.org> <x@example.com>", SecondAddress),
            ("From: y@other.org <x@example.com>", SpecialInName),
            ("From: x@example.com <y@other.org>", SpecialInName),
            ("From: <x@example.com> y@other.org", Leftover),
            ("From: <x@example.com>>", Leftover),
            ("From: <<x@example.com>>", SecondAddress),
            ("From: a@b@example.com", SeveralAts),
            ("From: <a@b@example.com>", SeveralAts),
            ("From: <> <x@example.com>", NullAddress),
            ("From: <>", NullAddress),
            ("From: <x@example.com> <>", SecondAddress),
            ("From: joe@exa\r\n mple.com", SpaceInAddress),
            ("From: joe@example\r\n .com", SpaceInAddress),
            ("From: joe @ example.com", SpaceInAddress),
            ("From: <joe(c)@example.com>", SpaceInAddress),
            ("From: joe(y@other.org)@example.com", AddressInComment),
            ("From: (<y@other.org>) x@example.com", AddressInComment),
            ("From: \"<y@other.org>\" <x@example.com>", AngleInName),
            ("From: \"x@other.org\"@example.com", QuotedLocalPart),
            ("From: \"a b\"@example.com", QuotedLocalPart),
            ("From: <\"joe\"@example.com>", QuotedLocalPart),
            ("From: a..b@example.com", BadLocalPart),
            ("From: \"a\".b@example.com", BadLocalPart),
            ("From: joe@[192.0.2.1]", DomainLiteral),
            ("From: joe@example.com.", BadDomain),
            ("From: joe@exa_mple..com", BadDomain),
            ("From: Joe Bloggs", NoAddress),
            ("From: root (Cron Daemon)", Unqualified),
            ("From: joe@localhost", Unqualified),
            ("From: <joe@example.com", Unclosed),
            ("From: \"Joe <joe@example.com>", UnclosedQuoteOrComment),
            ("From: (Joe <joe@example.com>", AddressInComment),
            ("From: (Joe joe@example.com", AddressInComment),
            ("From: (Joe) (x joe.example.com", UnclosedQuoteOrComment),
            ("From: ", NoAddress),
            ("From: j\\oe@example.com", BadLocalPart),
        ] {
            assert_eq!(domain(from), Err(FromError::Syntax(want)), "{from}");
        }
    }

    /// mail-parser takes an encoded word before @ for a display name: the readings differ.
    #[test]
    fn a_from_two_parsers_read_apart_is_refused() {
        assert_eq!(
            domain("From: =?utf-8?q?y=40other.org?=@example.com"),
            Err(FromError::ParsersDisagree)
        );
    }
}
