//! docs/clients.md lists every refusal the relay can give (issue 14 item 6): each
//! [`Refusal`] variant's reply code, status and the start of its text must appear there.
//! The match in `every_refusal` has no `_` arm, so a new variant does not compile until
//! it is listed here, and then this test fails until it is documented.

use super::{Refusal, Taint};
use crate::message::repair::body::Unrepairable;
use crate::message::{FromError, FromSyntax, PathError};

fn every_refusal() -> Vec<Refusal> {
    let all = vec![
        Refusal::UnknownCommand,
        Refusal::Syntax("MAIL FROM:<address>"),
        Refusal::BadSequence("send MAIL first"),
        Refusal::NotImplemented,
        Refusal::CommandTooLong,
        Refusal::BadCommandLine(Taint::BareLf),
        Refusal::RelayDenied,
        Refusal::UnsupportedParameter,
        Refusal::BadRecipient,
        Refusal::BadSender(PathError::NoDomain),
        Refusal::BadRecipientPath(PathError::NoDomain),
        Refusal::MessageTooBig,
        Refusal::TooManyRecipients,
        Refusal::NoRecipients,
        Refusal::TaintedData(Taint::BareLf),
        Refusal::LineTooLong,
        Refusal::MalformedHeader,
        Refusal::BadFrom(FromError::Syntax(FromSyntax::Unqualified)),
        Refusal::RepeatedField("Subject"),
        Refusal::NoKeyForDomain,
        Refusal::SpoolFailed,
        Refusal::SpoolFull,
        Refusal::TooManyErrors,
        Refusal::Timeout,
        Refusal::TooManyConnections,
        Refusal::ShuttingDown,
        Refusal::TlsRequired,
        Refusal::AuthNeedsTls,
        Refusal::AuthMechanism,
        Refusal::AuthFailed,
        Refusal::AuthLocked,
        Refusal::AuthCancelled,
        Refusal::AuthBadEncoding,
        Refusal::FromDomainDenied,
        Refusal::SenderDomainDenied,
        Refusal::NonAsciiAddress,
        Refusal::Utf8Headers,
        Refusal::HeaderTooBig,
        Refusal::TooManyMessages,
        Refusal::SessionTooOld,
        Refusal::AuthBusy,
        Refusal::ClientNotAllowed,
        Refusal::TooManyOutsiders,
        Refusal::NoHeader,
        Refusal::HeaderLineUnfoldable,
        Refusal::LongLineUnrepairable(Unrepairable::Sealed),
        Refusal::LongLineUnrepairable(Unrepairable::TooLarge),
        Refusal::UnqualifiedSender,
        Refusal::NoDataMemory,
    ];
    for r in &all {
        // No `_` arm: a new variant must be added to the list above.
        match r {
            Refusal::UnknownCommand
            | Refusal::Syntax(_)
            | Refusal::BadSequence(_)
            | Refusal::NotImplemented
            | Refusal::CommandTooLong
            | Refusal::BadCommandLine(_)
            | Refusal::RelayDenied
            | Refusal::UnsupportedParameter
            | Refusal::BadRecipient
            | Refusal::BadSender(_)
            | Refusal::BadRecipientPath(_)
            | Refusal::MessageTooBig
            | Refusal::TooManyRecipients
            | Refusal::NoRecipients
            | Refusal::TaintedData(_)
            | Refusal::LineTooLong
            | Refusal::MalformedHeader
            | Refusal::BadFrom(_)
            | Refusal::RepeatedField(_)
            | Refusal::NoKeyForDomain
            | Refusal::SpoolFailed
            | Refusal::SpoolFull
            | Refusal::TooManyErrors
            | Refusal::Timeout
            | Refusal::TooManyConnections
            | Refusal::ShuttingDown
            | Refusal::TlsRequired
            | Refusal::AuthNeedsTls
            | Refusal::AuthMechanism
            | Refusal::AuthFailed
            | Refusal::AuthLocked
            | Refusal::AuthCancelled
            | Refusal::AuthBadEncoding
            | Refusal::FromDomainDenied
            | Refusal::SenderDomainDenied
            | Refusal::NonAsciiAddress
            | Refusal::Utf8Headers
            | Refusal::HeaderTooBig
            | Refusal::TooManyMessages
            | Refusal::SessionTooOld
            | Refusal::AuthBusy
            | Refusal::ClientNotAllowed
            | Refusal::TooManyOutsiders
            | Refusal::NoHeader
            | Refusal::HeaderLineUnfoldable
            | Refusal::LongLineUnrepairable(_)
            | Refusal::UnqualifiedSender
            | Refusal::NoDataMemory => {}
        }
    }
    all
}

/// The reply as the doc writes it: code, status and the text up to its first `:` or `;`
/// (after which the text depends on the case).
fn documented_form(r: &Refusal) -> String {
    let reply = r.reply();
    let text = reply
        .text
        .split([':', ';'])
        .next()
        .unwrap_or_default()
        .trim_end();
    format!("{} {} {}", reply.code, reply.status, text)
}

#[test]
fn docs_clients_md_lists_every_refusal() {
    let doc = include_str!("../../../docs/clients.md");
    let missing: Vec<String> = every_refusal()
        .iter()
        .map(documented_form)
        .filter(|form| !doc.contains(form.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/clients.md:\n{}",
        missing.join("\n")
    );
}

/// Every 5xx text says what to change (issue 14 item 6): a fix follows the problem.
#[test]
fn every_permanent_refusal_names_a_fix() {
    for r in every_refusal() {
        let reply = r.reply();
        // Their detail after the colon is the fix ("send MAIL first", the usage).
        let fix_after_colon = matches!(r, Refusal::BadSequence(_) | Refusal::Syntax(_));
        // Left to the SMTPUTF8 work (utf8 branch), which replaces these two refusals.
        let smtputf8 = matches!(r, Refusal::NonAsciiAddress | Refusal::Utf8Headers);
        if reply.code >= 500 && !fix_after_colon && !smtputf8 {
            assert!(
                reply.text.contains(';'),
                "{} {} {} names no fix",
                reply.code,
                reply.status,
                reply.text
            );
        }
    }
}
