//! SMTP replies, and the one place where every refusal becomes a reply.
//!
//! Handlers return a [`Refusal`] naming what went wrong; [`Refusal::reply`] decides the
//! code, enhanced status (RFC 3463) and text the client sees. Details for the operator
//! go to the log at the place the refusal is made, never into the reply.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code, e.g. "2.0.0".
    pub status: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, status: &'static str, text: String) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Owned(text),
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        let line = if self.status.is_empty() {
            format!("{} {}\r\n", self.code, self.text)
        } else {
            format!("{} {} {}\r\n", self.code, self.status, self.text)
        };
        out.extend_from_slice(line.as_bytes());
    }

    /// 4xx/5xx replies count towards the session's error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// 421 means the server closes the connection after sending it.
    pub fn closes(&self) -> bool {
        self.code == 421
    }
}

/// Why a bare CR, bare LF or NUL made the relay refuse a message or line (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taint {
    BareCr,
    BareLf,
    Nul,
}

impl Taint {
    pub fn name(self) -> &'static str {
        match self {
            Taint::BareCr => "bare CR",
            Taint::BareLf => "bare LF",
            Taint::Nul => "NUL byte",
        }
    }
}

/// Every way the relay says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownCommand,
    Syntax(&'static str),
    BadSequence(&'static str),
    NotImplemented,
    CommandTooLong,
    /// A command line with a bare CR/LF or NUL.
    BadCommandLine(Taint),
    /// The client is not in an allowed network.
    RelayDenied,
    UnsupportedParameter,
    BadRecipient,
    /// A MAIL FROM path the relay cannot forward exactly as it read it.
    BadSender(crate::message::PathError),
    /// A RCPT TO path the relay cannot forward exactly as it read it.
    BadRecipientPath(crate::message::PathError),
    MessageTooBig,
    TooManyRecipients,
    NoRecipients,
    /// A bare CR/LF or NUL in DATA: the smuggling defence.
    TaintedData(Taint),
    LineTooLong,
    MalformedHeader,
    /// From missing, repeated, or not one mailbox that every parser reads alike.
    BadFrom(crate::message::FromError),
    /// A field RFC 5322 allows once (To, Subject, Message-ID, …) occurs twice.
    RepeatedField(&'static str),
    /// The relay has no key for the From domain.
    NoKeyForDomain,
    SpoolFailed,
    /// The spool's disk is full (or over quota).
    SpoolFull,
    TooManyErrors,
    Timeout,
    TooManyConnections,
    ShuttingDown,

    // Inbound hardening (issue 4).
    /// `require_tls` is set and the client sent MAIL in clear text.
    TlsRequired,
    /// AUTH over a connection without TLS.
    AuthNeedsTls,
    /// A SASL mechanism other than PLAIN or LOGIN.
    AuthMechanism,
    /// Wrong user name or password (after the configured delay).
    AuthFailed,
    /// Too many failed AUTHs from this address recently.
    AuthLocked,
    /// The client answered a SASL challenge with `*`.
    AuthCancelled,
    /// A SASL response that is not base64 or not the mechanism's format.
    AuthBadEncoding,
    /// The header From domain is not among those the client or user may use.
    FromDomainDenied,
    /// The MAIL FROM domain is not among those the client or user may use.
    SenderDomainDenied,
    /// An address whose bytes are not UTF-8 (UTF-8 itself is taken, RFC 6531).
    NonAsciiAddress,
    /// Header bytes above 127 that are not UTF-8 (UTF-8 itself is taken, RFC 6532).
    Utf8Headers,
    HeaderTooBig,
    /// `max_messages_per_session` reached.
    TooManyMessages,
    /// `max_session_age` reached.
    SessionTooOld,

    // Hostile clients (issue "Hostile clients", items 3 and 4).
    /// Every password-check worker is busy and the queue is full.
    AuthBusy,
    /// AUTH is not configured and the client is outside every allowed network: nothing
    /// it could do here would be accepted, so it is told in the greeting.
    ClientNotAllowed,
    /// `max_outsider_connections` clients outside the allowed networks are connected.
    TooManyOutsiders,
    // Sign-safe repairs (issue 14 item 2).
    /// A message with no header block at all and the null sender: no From can be added.
    NoHeader,
    /// A header line over 998 octets with no whitespace to fold it at.
    HeaderLineUnfoldable,
    /// A line over 998 octets where re-encoding is impossible or would break a signature.
    LongLineUnrepairable(crate::message::repair::body::Unrepairable),
    /// MAIL FROM is a bare user name (or user@host without a dot) and the network has no
    /// `qualify_domain`.
    UnqualifiedSender,
    // Memory under load (issue "Hostile clients" 5).
    /// No share of `max_data_memory` for this message (at DATA, or while its header grew).
    NoDataMemory,
}

impl Refusal {
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::UnknownCommand => Reply::new(
                500,
                "5.5.2",
                "Command not recognised; use EHLO, MAIL, RCPT, DATA, RSET, NOOP or QUIT",
            ),
            Refusal::Syntax(usage) => Reply::owned(501, "5.5.4", format!("Syntax: {usage}")),
            Refusal::BadSequence(why) => {
                Reply::owned(503, "5.5.1", format!("Bad sequence of commands: {why}"))
            }
            Refusal::NotImplemented => Reply::new(
                502,
                "5.5.1",
                "Command not implemented; use EHLO, MAIL, RCPT, DATA, RSET, NOOP or QUIT (STARTTLS and AUTH when EHLO offers them)",
            ),
            Refusal::CommandTooLong => Reply::new(
                500,
                "5.5.2",
                "Line too long; send commands within smtp.max_command_length octets",
            ),
            Refusal::BadCommandLine(t) => Reply::owned(
                500,
                "5.5.2",
                format!(
                    "Command line contains a {}; lines must end in CRLF",
                    t.name()
                ),
            ),
            Refusal::RelayDenied => {
                Reply::new(
                550,
                "5.7.1",
                "Relay access denied: client not allowed; add its network to smtp.allowed_networks or authenticate with AUTH",
            )
            }
            Refusal::UnsupportedParameter => Reply::new(
                555,
                "5.5.4",
                "Parameter not supported; send the command without it",
            ),
            Refusal::BadRecipient => Reply::new(
                501,
                "5.1.3",
                "Bad recipient address syntax; send RCPT TO:<local@domain>",
            ),
            Refusal::BadSender(why) => Reply::owned(
                501,
                "5.1.7",
                format!("Bad sender address: {why}; send MAIL FROM:<local@domain> or <>"),
            ),
            Refusal::BadRecipientPath(why) => Reply::owned(
                553,
                "5.1.3",
                format!("Bad recipient address: {why}; send RCPT TO:<local@domain>"),
            ),
            Refusal::MessageTooBig => Reply::new(
                552,
                "5.3.4",
                "Message too big; stay within the SIZE that EHLO announces (smtp.max_message_size)",
            ),
            Refusal::TooManyRecipients => Reply::new(452, "4.5.3", "Too many recipients"),
            Refusal::NoRecipients => Reply::new(
                554,
                "5.5.1",
                "No valid recipients; send RCPT TO:<address> before DATA",
            ),
            Refusal::TaintedData(t) => Reply::owned(
                550,
                "5.6.0",
                format!("Message contains a {}; lines must end in CRLF", t.name()),
            ),
            Refusal::LineTooLong => Reply::new(
                554,
                "5.6.0",
                "Message has a line longer than this relay's hard limit (smtp.max_line_length); encode the body as quoted-printable or base64",
            ),
            Refusal::NoHeader => Reply::new(
                550,
                "5.6.0",
                "Message has no header block and the null sender <>, so no From can be added; add a From: header field",
            ),
            Refusal::HeaderLineUnfoldable => Reply::new(
                550,
                "5.6.0",
                "Message has a header line over 998 octets with no space to fold it at; shorten that field or encode it (RFC 2047)",
            ),
            Refusal::LongLineUnrepairable(why) => Reply::owned(
                554,
                "5.6.0",
                format!(
                    "Message has {}; encode that part as quoted-printable or base64 before signing or sending",
                    why.name()
                ),
            ),
            Refusal::UnqualifiedSender => Reply::new(
                553,
                "5.1.7",
                "MAIL FROM is a bare user or host name; give the sending host a mail domain (Postfix: myorigin = example.com) or set qualify_domain for its network in [[smtp.origins]]",
            ),
            Refusal::MalformedHeader => Reply::new(
                550,
                "5.6.0",
                "Message header is malformed; write each header field as Name: value, folded lines starting with a space",
            ),
            Refusal::BadFrom(why) => Reply::owned(
                550,
                "5.6.0",
                format!("Bad From: {why}; {}", from_fix(why)),
            ),
            Refusal::RepeatedField(name) => Reply::owned(
                550,
                "5.6.0",
                format!(
                    "Message has more than one {name} header field; RFC 5322 allows one, \
                     and receivers fail the DKIM signature of such a message: write one {name} field"
                ),
            ),
            Refusal::NoKeyForDomain => {
                Reply::new(
                550,
                "5.7.1",
                "This relay does not sign for the From domain; send as a domain it signs for, or add the domain as [[domains]] on the relay",
            )
            }
            Refusal::SpoolFailed => Reply::new(451, "4.3.0", "Message not stored; try again later"),
            Refusal::SpoolFull => {
                Reply::new(452, "4.3.1", "Insufficient system storage; try again later")
            }
            Refusal::TooManyErrors => {
                Reply::new(421, "4.7.0", "Too many errors; closing connection")
            }
            Refusal::Timeout => Reply::new(421, "4.4.2", "Timeout; closing connection"),
            Refusal::TooManyConnections => {
                Reply::new(421, "4.7.0", "Too many connections; try again later")
            }
            Refusal::ShuttingDown => Reply::new(421, "4.3.2", "Service shutting down"),
            Refusal::TlsRequired => Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first; enable STARTTLS on the client",
            ),
            Refusal::AuthNeedsTls => Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism; send STARTTLS before AUTH",
            ),
            Refusal::AuthMechanism => Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication type; use AUTH PLAIN or AUTH LOGIN",
            ),
            Refusal::AuthFailed => Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid; check the user name and password",
            ),
            Refusal::AuthLocked => Reply::new(
                454,
                "4.7.0",
                "Too many failed authentications; try again later",
            ),
            Refusal::AuthCancelled => Reply::new(
                501,
                "5.7.0",
                "Authentication cancelled; send AUTH again to retry",
            ),
            Refusal::AuthBadEncoding => {
                Reply::new(
                501,
                "5.5.2",
                "Cannot decode the authentication response; send it base64-encoded in the mechanism's format",
            )
            }
            Refusal::FromDomainDenied => {
                Reply::new(
                550,
                "5.7.1",
                "Not authorised to send as the From domain; send as a domain this client may use, or add it to its from_domains",
            )
            }
            Refusal::SenderDomainDenied => Reply::new(
                550,
                "5.7.1",
                "Not authorised to use this envelope sender domain; use a MAIL FROM in a domain this client may use, or <>",
            ),
            Refusal::NonAsciiAddress => Reply::new(
                553,
                "5.6.7",
                "Address is not valid UTF-8; send addresses in ASCII or UTF-8",
            ),
            Refusal::Utf8Headers => Reply::new(
                554,
                "5.6.7",
                "Header field bytes are not valid UTF-8 (a Latin-1 or other legacy charset?); send UTF-8 or RFC 2047 encoded-words",
            ),
            Refusal::HeaderTooBig => Reply::new(
                552,
                "5.3.4",
                "Message header too big; stay within smtp.max_header_size",
            ),
            Refusal::TooManyMessages => {
                Reply::new(421, "4.7.0", "Too many messages in this session; reconnect")
            }
            Refusal::SessionTooOld => {
                Reply::new(421, "4.4.2", "Session too long; closing connection")
            }
            Refusal::AuthBusy => Reply::new(
                454,
                "4.7.0",
                "Too many authentications in progress; try again in a moment",
            ),
            Refusal::ClientNotAllowed => Reply::new(
                554,
                "5.7.1",
                "This relay serves only its own networks; add this host to smtp.allowed_networks",
            ),
            Refusal::TooManyOutsiders => Reply::new(
                421,
                "4.7.0",
                "Too many connections from outside the allowed networks; try again later",
            ),
            Refusal::NoDataMemory => Reply::new(
                452,
                "4.3.1",
                "Too many messages in transfer at once; try again later",
            ),
        }
    }
}
/// What the sender of a refused From should change, for the refusal's own case. A bare
/// user name is what cron and an unconfigured Postfix write (`From: root (Cron Daemon)`):
/// the fix is on the sending host, not in the message.
fn from_fix(why: &crate::message::FromError) -> &'static str {
    use crate::message::{FromError, FromSyntax};
    match why {
        FromError::Missing => "add one From: header, such as From: Name <user@example.com>",
        FromError::Several(_) => "send exactly one From header",
        FromError::Syntax(FromSyntax::Unqualified) => {
            "the sending host wrote a bare user or host name: give it a mail domain (Postfix: myorigin = example.com; cron: MAILFROM=cron@example.com; msmtp: from user@example.com), or set qualify_domain for its network in [[smtp.origins]] on the relay"
        }
        FromError::Syntax(_) | FromError::ParsersDisagree => {
            "write one address such as Name <user@example.com>"
        }
    }
}

#[cfg(test)]
mod docs;
