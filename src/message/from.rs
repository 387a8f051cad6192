//! The domain of the RFC 5322 From mailbox: the one DMARC aligns on, so the one to sign
//! for (DESIGN §4). The envelope sender is never used: bounces have `MAIL FROM:<>`.

use super::HeaderBlock;
use crate::config::is_dns_name;
use mail_parser::{Address, MessageParser};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    #[error("the message has no From header field")]
    Missing,
    #[error("the message has {0} From header fields")]
    Several(usize),
    #[error("From holds a group instead of one mailbox")]
    Group,
    #[error("From holds {0} mailboxes instead of one")]
    SeveralMailboxes(usize),
    #[error("From holds no usable address")]
    NoAddress,
}

/// Returns the lower-case domain of the single mailbox in the single From field.
pub fn from_domain(headers: &HeaderBlock<'_>) -> Result<String, FromError> {
    let mut froms = headers.all("From");
    let field = froms.next().ok_or(FromError::Missing)?;
    let extra = froms.count();
    if extra > 0 {
        return Err(FromError::Several(extra + 1));
    }
    // Let mail-parser read the address syntax (comments, quoted display names, encoded
    // words, groups) from a one-field message holding just this value.
    let mut one_field = Vec::with_capacity(field.value.len() + 9);
    one_field.extend_from_slice(b"From:");
    one_field.extend_from_slice(field.value);
    one_field.extend_from_slice(b"\r\n\r\n");
    let parsed = MessageParser::new()
        .parse_headers(&one_field)
        .ok_or(FromError::NoAddress)?;
    let mailbox = match parsed.from() {
        None => return Err(FromError::NoAddress),
        Some(Address::Group(_)) => return Err(FromError::Group),
        Some(Address::List(list)) => match list.as_slice() {
            [one] => one,
            [] => return Err(FromError::NoAddress),
            many => return Err(FromError::SeveralMailboxes(many.len())),
        },
    };
    let address = mailbox.address.as_deref().ok_or(FromError::NoAddress)?;
    domain_of(address).ok_or(FromError::NoAddress)
}

fn domain_of(address: &str) -> Option<String> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if local.is_empty() || !domain.contains('.') || !is_dns_name(&domain) {
        return None;
    }
    Some(domain)
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
        assert_eq!(domain("From: joe@Example.COM").unwrap(), "example.com");
        assert_eq!(
            domain("From: Joe <joe@example.com>").unwrap(),
            "example.com"
        );
        assert_eq!(
            domain("From: \"Doe, Joe\" <joe@mail.example.com> (cron)").unwrap(),
            "mail.example.com"
        );
        assert_eq!(
            domain("From: =?UTF-8?Q?J=C3=B6e?= <joe@example.com>").unwrap(),
            "example.com"
        );
        assert_eq!(
            domain("From:\r\n <joe@example.com>").unwrap(),
            "example.com"
        );
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
    fn several_mailboxes_or_a_group_are_refused() {
        assert_eq!(
            domain("From: a@example.com, b@example.org"),
            Err(FromError::SeveralMailboxes(2))
        );
        assert_eq!(
            domain("From: team: a@example.com, b@example.org;"),
            Err(FromError::Group)
        );
    }

    #[test]
    fn no_address_is_refused() {
        assert_eq!(domain("From: Joe Bloggs"), Err(FromError::NoAddress));
        assert_eq!(domain("From: <>"), Err(FromError::NoAddress));
        assert_eq!(domain("From: joe@localhost"), Err(FromError::NoAddress));
    }
}
