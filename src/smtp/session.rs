//! One SMTP session: a state machine over the commands of RFC 5321.

use super::conn::{Conn, LineRead};
use super::reply::{Refusal, Reply, Taint};
use super::server::SmtpContext;
use smtp_proto::{Error as ParseError, Request};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Mail transaction parameters accepted so far.
#[derive(Debug)]
pub(super) struct Transaction {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// SIZE= declared at MAIL, used to size the receive buffer.
    pub declared_size: usize,
}

/// Where the session stands. Transitions happen only in [`Session::command`].
#[derive(Debug)]
pub(super) enum State {
    /// Connected, no EHLO/HELO yet.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted; RCPTs collect here; DATA ends it.
    Transaction(Transaction),
}

pub(super) enum Flow {
    Continue,
    Close,
}

pub struct Session<S> {
    pub(super) conn: Conn<S>,
    pub(super) ctx: Arc<SmtpContext>,
    pub(super) peer: IpAddr,
    /// The client is in an allowed network.
    pub(super) relay_allowed: bool,
    pub(super) helo: String,
    pub(super) state: State,
    errors: usize,
}

const ALLOWED_MAIL_FLAGS: u64 = smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: IpAddr, relay_allowed: bool, ctx: Arc<SmtpContext>) -> Self {
        Session {
            conn: Conn::new(stream),
            ctx,
            peer,
            relay_allowed,
            helo: String::new(),
            state: State::Fresh,
            errors: 0,
        }
    }

    pub async fn run(mut self) {
        let greeting = format!("220 {} ESMTP dkim-relay\r\n", self.ctx.config.hostname);
        self.conn.queue_raw(greeting.as_bytes());
        let timeout = self.ctx.config.smtp.command_timeout.0;
        let max_line = self.ctx.config.smtp.max_command_length;
        loop {
            let read = tokio::time::timeout(timeout, self.conn.read_line(max_line)).await;
            let flow = match read {
                Err(_) => {
                    tracing::info!("command timeout; closing");
                    self.respond(Refusal::Timeout.reply())
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection error");
                    break;
                }
                Ok(Ok(LineRead::Eof)) => break,
                Ok(Ok(LineRead::TooLong)) => self.respond(Refusal::CommandTooLong.reply()),
                Ok(Ok(LineRead::Line(line))) => self.command(&line).await,
            };
            if let Flow::Close = flow {
                break;
            }
        }
        if let Err(e) = self.conn.flush().await {
            tracing::debug!(error = %e, "could not send the last reply");
        }
        tracing::debug!("connection closed");
    }

    /// Queues a reply, counting errors; closes after too many or after a 421.
    pub(super) fn respond(&mut self, reply: Reply) -> Flow {
        self.conn.queue_reply(&reply);
        if reply.closes() {
            return Flow::Close;
        }
        if reply.code >= 500 {
            self.errors += 1;
            if self.errors >= self.ctx.config.smtp.max_errors {
                tracing::info!(errors = self.errors, "too many errors; closing");
                self.conn.queue_reply(&Refusal::TooManyErrors.reply());
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    fn answer(&mut self, result: Result<Reply, Refusal>) -> Flow {
        let reply = result.unwrap_or_else(|refusal| refusal.reply());
        self.respond(reply)
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        if let Some(taint) = line_taint(line) {
            // Whatever was in progress can no longer be trusted (DESIGN §3).
            tracing::info!(
                taint = taint.name(),
                "tainted command line; transaction reset"
            );
            self.reset();
            return self.answer(Err(Refusal::BadCommandLine(taint)));
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return self.answer(Err(parse_refusal(e))),
        };
        match request {
            Request::Ehlo { host } => {
                let reply = self.ehlo(&host, true);
                self.answer(Ok(reply))
            }
            Request::Helo { host } => {
                let reply = self.ehlo(&host, false);
                self.answer(Ok(reply))
            }
            Request::Mail { from } => {
                let result = self.mail(from);
                self.answer(result)
            }
            Request::Rcpt { to } => {
                let result = self.rcpt(to);
                self.answer(result)
            }
            Request::Data => self.data().await,
            Request::Rset => {
                self.reset();
                self.answer(Ok(Reply::new(250, "2.0.0", "OK")))
            }
            Request::Noop { .. } => self.answer(Ok(Reply::new(250, "2.0.0", "OK"))),
            Request::Quit => {
                self.conn.queue_reply(&Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            Request::Help { .. } => self.answer(Ok(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY",
            ))),
            Request::Vrfy { .. } => self.answer(Ok(Reply::new(
                252,
                "2.1.5",
                "Cannot verify the user, but will relay the message",
            ))),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Bdat { .. }
            | Request::Auth { .. }
            | Request::StartTls => self.answer(Err(Refusal::NotImplemented)),
        }
    }

    pub(super) fn reset(&mut self) {
        if let State::Transaction(_) = self.state {
            self.state = State::Ready;
        }
    }

    fn ehlo(&mut self, host: &str, extended: bool) -> Reply {
        self.helo = sanitize_helo(host);
        self.state = State::Ready;
        let name = &self.ctx.config.hostname;
        if !extended {
            return Reply::owned(250, "2.0.0", name.clone());
        }
        let size = self.ctx.config.smtp.max_message_size.0;
        // Multi-line reply: written raw, with the final line as the Reply. ENHANCEDSTATUSCODES
        // lines carry no status code themselves (RFC 2034 §3).
        self.conn.queue_raw(
            format!("250-{name}\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n")
                .as_bytes(),
        );
        Reply {
            code: 250,
            status: "",
            text: Cow::Borrowed("ENHANCEDSTATUSCODES"),
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<Cow<'_, str>>) -> Result<Reply, Refusal> {
        match self.state {
            State::Fresh => return Err(Refusal::BadSequence("send EHLO first")),
            State::Transaction(_) => return Err(Refusal::BadSequence("nested MAIL command")),
            State::Ready => {}
        }
        if !self.relay_allowed {
            tracing::warn!(client = %self.peer, sender = %from.address, "relay refused: client not in smtp.allowed_networks");
            return Err(Refusal::RelayDenied);
        }
        if from.flags & !ALLOWED_MAIL_FLAGS != 0
            || from.env_id.is_some()
            || from.trans_id.is_some()
            || from.auth.is_some()
            || from.mtrk.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
        {
            return Err(Refusal::UnsupportedParameter);
        }
        if from.size as u64 > self.ctx.config.smtp.max_message_size.0 {
            return Err(Refusal::MessageTooBig);
        }
        let address = from.address.trim().to_string();
        if !address.is_empty() && !address.contains('@') {
            return Err(Refusal::Syntax("MAIL FROM:<user@domain> or MAIL FROM:<>"));
        }
        self.state = State::Transaction(Transaction {
            mail_from: address,
            rcpts: Vec::new(),
            declared_size: from.size,
        });
        Ok(Reply::new(250, "2.1.0", "Sender OK"))
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<Cow<'_, str>>) -> Result<Reply, Refusal> {
        let max = self.ctx.config.smtp.max_recipients;
        let State::Transaction(txn) = &mut self.state else {
            return Err(Refusal::BadSequence("send MAIL first"));
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return Err(Refusal::UnsupportedParameter);
        }
        let address = to.address.trim();
        match address.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {}
            _ => return Err(Refusal::BadRecipient),
        }
        if txn.rcpts.len() >= max {
            return Err(Refusal::TooManyRecipients);
        }
        txn.rcpts.push(address.to_string());
        Ok(Reply::new(250, "2.1.5", "Recipient OK"))
    }
}

/// A command line must end in CRLF and hold no other CR, LF or NUL.
fn line_taint(line: &[u8]) -> Option<Taint> {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Some(Taint::BareLf);
    };
    body.iter().find_map(|&b| match b {
        b'\r' => Some(Taint::BareCr),
        b'\n' => Some(Taint::BareLf),
        0 => Some(Taint::Nul),
        _ => None,
    })
}

fn parse_refusal(e: ParseError) -> Refusal {
    match e {
        ParseError::UnknownCommand => Refusal::UnknownCommand,
        ParseError::InvalidSenderAddress => Refusal::Syntax("MAIL FROM:<user@domain>"),
        ParseError::InvalidRecipientAddress => Refusal::BadRecipient,
        ParseError::SyntaxError { syntax } => Refusal::Syntax(syntax),
        ParseError::InvalidParameter { .. } | ParseError::UnsupportedParameter { .. } => {
            Refusal::UnsupportedParameter
        }
        ParseError::NeedsMoreData { .. } => Refusal::Syntax("incomplete command"),
        ParseError::ResponseTooLong | ParseError::InvalidResponse { .. } => Refusal::UnknownCommand,
    }
}

/// The HELO name goes into a Received header: keep only characters a host name or an
/// address literal can hold.
fn sanitize_helo(host: &str) -> String {
    let clean: String = host
        .chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_[]:".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_must_end_in_crlf_only() {
        assert_eq!(line_taint(b"NOOP\r\n"), None);
        assert_eq!(line_taint(b"NOOP\n"), Some(Taint::BareLf));
        assert_eq!(line_taint(b"NO\rOP\r\n"), Some(Taint::BareCr));
        assert_eq!(line_taint(b"NO\0OP\r\n"), Some(Taint::Nul));
    }

    #[test]
    fn helo_names_are_made_safe_for_headers() {
        assert_eq!(sanitize_helo("host.example"), "host.example");
        assert_eq!(sanitize_helo("[127.0.0.1]"), "[127.0.0.1]");
        assert_eq!(sanitize_helo("evil\r\nX: y"), "evil??X:?y");
    }
}
