//! One SMTP session: a state machine over the commands of RFC 5321. AUTH lives in
//! `auth.rs`, STARTTLS in `starttls.rs`, DATA and the message policy in `accept.rs`.

use super::context::{ClientInfo, SmtpContext};
use super::reply::{Refusal, Reply, Taint};
use super::wire::{Conn, LineRead};
use crate::auth::DomainGrant;
use crate::message::{Mailbox, ReversePath};
use smtp_proto::{Error as ParseError, Request};
use std::borrow::Cow;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroize;

/// Mail transaction parameters accepted so far.
#[derive(Debug)]
pub(super) struct Transaction {
    pub mail_from: ReversePath,
    pub rcpts: Vec<Mailbox>,
    /// SIZE= declared at MAIL, used to size the receive buffer.
    pub declared_size: usize,
    /// The client gave SMTPUTF8 at MAIL (RFC 6531 §3.4).
    pub smtputf8: bool,
}

/// Where the session stands. Transitions happen only in [`Session::command`] and the
/// verb handlers it calls.
#[derive(Debug)]
pub(super) enum State {
    /// Connected, no EHLO/HELO yet.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted; RCPTs collect here; DATA ends it.
    Transaction(Transaction),
}

/// Whether the stream is encrypted, and how it came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Plain,
    /// TLS from the first byte; the greeting is sent inside TLS.
    ImplicitTls,
    /// After STARTTLS: no new greeting, the client starts with EHLO (RFC 3207 §4.2).
    AfterStartTls,
}

impl Phase {
    pub fn tls(self) -> bool {
        !matches!(self, Phase::Plain)
    }
}

pub(super) enum Flow {
    Continue,
    Close,
    /// 220 to STARTTLS has been queued; hand the socket over for the handshake.
    StartTls,
}

/// How a session ended.
pub enum End<S> {
    Closed,
    /// The client asked for TLS: the bare stream, every buffered byte dropped.
    StartTls(S),
}

/// What waiting for the next command line produced.
enum Input {
    Line(Vec<u8>),
    TooLong,
    Timeout,
    SessionTooOld,
    ShuttingDown,
    Closed,
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub(super) struct AuthUser {
    pub name: String,
    pub domains: DomainGrant,
}

pub struct Session<S> {
    pub(super) conn: Conn<S>,
    pub(super) ctx: Arc<SmtpContext>,
    pub(super) client: ClientInfo,
    pub(super) phase: Phase,
    pub(super) user: Option<AuthUser>,
    pub(super) helo: String,
    pub(super) state: State,
    /// Turns true at shutdown: idle sessions answer 421, DATA gets a grace period.
    pub(super) shutdown: watch::Receiver<bool>,
    errors: usize,
    /// Messages accepted in this session, for `max_messages_per_session`.
    pub(super) messages: usize,
}

/// Resolves once shutdown is signalled; never if the signal's sender is gone.
pub(super) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(
        stream: S,
        client: ClientInfo,
        ctx: Arc<SmtpContext>,
        shutdown: watch::Receiver<bool>,
        phase: Phase,
    ) -> Self {
        Session {
            conn: Conn::new(stream, client.config.smtp.write_timeout.0),
            ctx,
            client,
            phase,
            user: None,
            helo: String::new(),
            state: State::Fresh,
            shutdown,
            errors: 0,
            messages: 0,
        }
    }

    pub async fn run(mut self) -> End<S> {
        if self.phase != Phase::AfterStartTls {
            let greeting = format!("220 {} ESMTP dkim-relay\r\n", self.client.config.hostname);
            self.conn.queue_raw(greeting.as_bytes());
        }
        loop {
            let flow = match self.next_input().await {
                Input::Line(mut line) => {
                    let flow = self.command(&line).await;
                    // An AUTH line may hold a password (PLAIN initial response).
                    line.zeroize();
                    flow
                }
                Input::TooLong => self.respond(Refusal::CommandTooLong.reply()),
                Input::Timeout => {
                    tracing::info!("command timeout; closing");
                    self.respond(Refusal::Timeout.reply())
                }
                Input::SessionTooOld => {
                    tracing::info!("session age limit reached; closing");
                    self.respond(Refusal::SessionTooOld.reply())
                }
                Input::ShuttingDown => self.respond(Refusal::ShuttingDown.reply()),
                Input::Closed => break,
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => break,
                Flow::StartTls => {
                    if let Err(e) = self.conn.flush().await {
                        tracing::debug!(error = %e, "could not send the STARTTLS reply");
                        return End::Closed;
                    }
                    return End::StartTls(self.conn.into_inner());
                }
            }
        }
        if let Err(e) = self.conn.flush().await {
            tracing::debug!(error = %e, "could not send the last reply");
        }
        tracing::debug!("connection closed");
        End::Closed
    }

    /// Waits for the next command line, bounded by the command timeout, the session age
    /// and shutdown. Lines up to the AUTH limit are read; only AUTH may use that length.
    async fn next_input(&mut self) -> Input {
        let smtp = &self.client.config.smtp;
        let session_end = self.client.started + smtp.max_session_age.0;
        let deadline = (Instant::now() + smtp.command_timeout.0).min(session_end);
        let (max_auth, max_command) = (smtp.max_auth_line_length, smtp.max_command_length);
        let read = tokio::select! {
            biased;
            _ = stopping(&mut self.shutdown) => return Input::ShuttingDown,
            read = tokio::time::timeout_at(deadline, self.conn.read_line(max_auth)) => read,
        };
        match read {
            Err(_) if Instant::now() >= session_end => Input::SessionTooOld,
            Err(_) => Input::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection error");
                Input::Closed
            }
            Ok(Ok(LineRead::Eof)) => Input::Closed,
            Ok(Ok(LineRead::TooLong)) => Input::TooLong,
            Ok(Ok(LineRead::Line(line))) if line.len() > max_command && !is_auth(&line) => {
                Input::TooLong
            }
            Ok(Ok(LineRead::Line(line))) => Input::Line(line),
        }
    }

    /// Queues a reply, counting errors; closes after too many or after a 421.
    pub(super) fn respond(&mut self, reply: Reply) -> Flow {
        if reply.is_error() {
            crate::metrics::global().refusal(reply.code, reply.status);
        }
        self.conn.queue_reply(&reply);
        if reply.closes() {
            return Flow::Close;
        }
        if reply.code >= 500 {
            self.errors += 1;
            if self.errors >= self.client.config.smtp.max_errors {
                tracing::info!(errors = self.errors, "too many errors; closing");
                self.conn.queue_reply(&Refusal::TooManyErrors.reply());
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    pub(super) fn answer(&mut self, result: Result<Reply, Refusal>) -> Flow {
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
        // MAIL FROM:<root>: qualified (or refused naming the fix) in repair.rs.
        let origin = self.client.config.smtp.origin_for(self.client.ip);
        let qualified;
        let line = match super::repair::bare_mail_line(line, origin) {
            super::repair::BareSender::No => line,
            super::repair::BareSender::Qualified(l) => {
                qualified = l;
                &qualified[..]
            }
            super::repair::BareSender::Refused => {
                return self.answer(Err(Refusal::UnqualifiedSender))
            }
        };
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
                let result = self.mail(from, line);
                self.answer(result)
            }
            Request::Rcpt { to } => {
                let result = self.rcpt(to, line);
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
            Request::Help { .. } => {
                // Only what this session offers, as EHLO says it.
                let mut text =
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".to_string();
                if self.offers_starttls() {
                    text.push_str(" STARTTLS");
                }
                if self.offers_auth() {
                    text.push_str(" AUTH");
                }
                self.answer(Ok(Reply::owned(214, "2.0.0", text)))
            }
            Request::Vrfy { .. } => self.answer(Ok(Reply::new(
                252,
                "2.1.5",
                "Cannot verify the user, but will relay the message",
            ))),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response).await,
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Bdat { .. } => self.answer(Err(Refusal::NotImplemented)),
        }
    }

    pub(super) fn reset(&mut self) {
        if let State::Transaction(_) = self.state {
            self.state = State::Ready;
        }
    }

    /// The domains this session may use: the AUTH user's, else the client network's.
    pub(super) fn grant(&self) -> Option<&DomainGrant> {
        match &self.user {
            Some(user) => Some(&user.domains),
            None => self.client.grant.as_ref(),
        }
    }

    /// The AUTH user's name for log lines, "-" without AUTH.
    pub(super) fn user_name(&self) -> &str {
        self.user.as_ref().map_or("-", |u| u.name.as_str())
    }

    /// STARTTLS is offered with a certificate, until TLS is on (EHLO and HELP).
    fn offers_starttls(&self) -> bool {
        self.ctx.tls.is_some() && !self.phase.tls()
    }

    /// AUTH only inside TLS (DESIGN §3), so a password never crosses in clear text.
    fn offers_auth(&self) -> bool {
        self.ctx.users.is_some() && self.phase.tls()
    }

    fn ehlo(&mut self, host: &str, extended: bool) -> Reply {
        self.helo = sanitize_helo(host);
        self.state = State::Ready;
        let name = &self.client.config.hostname;
        if !extended {
            return Reply::owned(250, "2.0.0", name.clone());
        }
        let smtp = &self.client.config.smtp;
        let mut lines = format!(
            "250-{name}\r\n250-PIPELINING\r\n250-SIZE {}\r\n",
            smtp.max_message_size.0
        );
        // 8-bit bodies and UTF-8 (RFC 6152, RFC 6531) are always taken: the delivery
        // converts them for an upstream that offers neither (message::transport_form).
        lines.push_str("250-8BITMIME\r\n250-SMTPUTF8\r\n");
        if self.offers_starttls() {
            lines.push_str("250-STARTTLS\r\n");
        }
        if self.offers_auth() {
            lines.push_str("250-AUTH PLAIN LOGIN\r\n");
        }
        // Multi-line reply: written raw, with the final line as the Reply. ENHANCEDSTATUSCODES
        // lines carry no status code themselves (RFC 2034 §3).
        self.conn.queue_raw(lines.as_bytes());
        Reply {
            code: 250,
            status: "",
            text: Cow::Borrowed("ENHANCEDSTATUSCODES"),
        }
    }
}

/// Whether a command line is AUTH (which may be up to 12288 octets, RFC 4954 §4).
fn is_auth(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH "))
}

/// A command line must end in CRLF and hold no other CR, LF or NUL.
pub(super) fn line_taint(line: &[u8]) -> Option<Taint> {
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
