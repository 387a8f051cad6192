//! The AUTH verb (RFC 4954) with PLAIN (RFC 4616) and LOGIN, only inside TLS.
//!
//! Passwords never reach a log line, a Debug string or a reply: they live in zeroized
//! buffers from the base64 decode to the argon2 check on a blocking thread. A failure is
//! answered only after `smtp.auth.failure_delay`, and counted per client address before it
//! is checked; past `max_failures` the address gets 454 4.7.0 until the window passes.
//! Checks run on a bounded pool (`crate::auth::checks`); a full pool is 454 4.7.0 at once.
//! A failed AUTH logs the user name only when it names a configured user.

use super::reply::{Refusal, Reply};
use super::session::{line_taint, AuthUser, Flow, Session, State};
use super::wire::LineRead;
use crate::auth::Busy;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Why an AUTH exchange stopped without success.
enum Stop {
    Refused(Refusal),
    /// The client went away or timed out mid-exchange.
    Lost(Refusal),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

type Secret = Zeroizing<Vec<u8>>;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn auth(&mut self, mechanism: u64, initial: &str) -> Flow {
        match self.authenticate(mechanism, initial).await {
            Ok(reply) => self.respond(reply),
            Err(Stop::Refused(refusal)) => self.answer(Err(refusal)),
            Err(Stop::Lost(refusal)) => {
                self.respond(refusal.reply());
                Flow::Close
            }
        }
    }

    async fn authenticate(&mut self, mechanism: u64, initial: &str) -> Result<Reply, Stop> {
        let Some(users) = self.ctx.users.clone() else {
            return Err(Refusal::NotImplemented.into());
        };
        if !self.phase.tls() {
            return Err(Refusal::AuthNeedsTls.into());
        }
        match self.state {
            State::Fresh => return Err(Refusal::BadSequence("send EHLO first").into()),
            State::Transaction(_) => {
                return Err(Refusal::BadSequence("AUTH is not allowed during a transaction").into())
            }
            State::Ready => {}
        }
        if self.user.is_some() {
            return Err(Refusal::BadSequence("already authenticated").into());
        }
        // Cheap early answer for a client already locked out, before it sends a password.
        let ctx = self.ctx.clone();
        let now = || Instant::now().into_std();
        if ctx.auth_failures.blocked(self.client.ip, now()) {
            tracing::warn!(client = %self.client.ip, "AUTH refused: too many recent failures from this address");
            return Err(Refusal::AuthLocked.into());
        }
        let (name, password) = match mechanism {
            smtp_proto::AUTH_PLAIN => self.plain(initial).await?,
            smtp_proto::AUTH_LOGIN => self.login(initial).await?,
            _ => return Err(Refusal::AuthMechanism.into()),
        };
        let mech = if mechanism == smtp_proto::AUTH_PLAIN {
            "PLAIN"
        } else {
            "LOGIN"
        };
        // Counted before the check, so parallel guesses see each other (limiter.rs).
        let Some(attempt) = ctx.auth_failures.begin(self.client.ip, now()) else {
            tracing::warn!(client = %self.client.ip, "AUTH refused: too many recent failures from this address");
            return Err(Refusal::AuthLocked.into());
        };
        // A name that is no user may be a password typed in the wrong field: never log it.
        let shown = if users.knows(&name) {
            name.clone()
        } else {
            "(not a configured user)".to_string()
        };
        let verdict = ctx
            .password_checks
            .verify(users, name.clone(), password)
            .await;
        match verdict {
            Err(Busy) => {
                attempt.withdraw();
                tracing::warn!(client = %self.client.ip, mechanism = mech, "AUTH refused: every password check worker is busy and the queue is full (smtp.auth.check_workers, smtp.auth.check_queue)");
                Err(Refusal::AuthBusy.into())
            }
            Ok(Some(domains)) => {
                attempt.withdraw();
                tracing::info!(user = %name, mechanism = mech, domains = %domains.describe(), "authenticated");
                // Authenticated: no longer one of the outsiders sharing their small budget.
                if let Some(slot) = &self.client.outsider {
                    slot.release();
                }
                self.user = Some(AuthUser { name, domains });
                Ok(Reply::new(235, "2.7.0", "Authentication successful"))
            }
            Ok(None) => {
                attempt.failed(now());
                tracing::warn!(client = %self.client.ip, user = %shown, mechanism = mech, "authentication failed");
                if let Some(auth) = &ctx.started.smtp.auth {
                    tokio::time::sleep(auth.failure_delay.0).await;
                }
                Err(Refusal::AuthFailed.into())
            }
        }
    }

    /// PLAIN: `authzid NUL authcid NUL password`, as the initial response or after 334.
    async fn plain(&mut self, initial: &str) -> Result<(String, Secret), Stop> {
        let message = if initial.is_empty() {
            self.sasl_response("").await?
        } else {
            decode(initial.as_bytes())?
        };
        let mut parts = message.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::AuthBadEncoding.into());
        };
        // Acting for someone else is not offered: authzid must be empty or the user.
        if !authzid.is_empty() && authzid != authcid {
            return Err(Refusal::AuthFailed.into());
        }
        let name = user_name(authcid)?;
        Ok((name, Zeroizing::new(password.to_vec())))
    }

    /// LOGIN: user name and password, each base64 after its own 334 challenge.
    async fn login(&mut self, initial: &str) -> Result<(String, Secret), Stop> {
        let name = if initial.is_empty() {
            self.sasl_response("VXNlcm5hbWU6").await? // "Username:"
        } else {
            decode(initial.as_bytes())?
        };
        let name = user_name(&name)?;
        let password = self.sasl_response("UGFzc3dvcmQ6").await?; // "Password:"
        Ok((name, password))
    }

    /// Sends a 334 challenge and reads the decoded answer.
    async fn sasl_response(&mut self, challenge: &str) -> Result<Secret, Stop> {
        self.conn
            .queue_raw(format!("334 {challenge}\r\n").as_bytes());
        let smtp = &self.client.config.smtp;
        let read = tokio::time::timeout(
            smtp.command_timeout.0,
            self.conn.read_line(smtp.max_auth_line_length),
        )
        .await;
        let line = match read {
            Err(_) => return Err(Stop::Lost(Refusal::Timeout)),
            Ok(Err(_)) | Ok(Ok(LineRead::Eof)) => return Err(Stop::Lost(Refusal::Timeout)),
            Ok(Ok(LineRead::TooLong)) => return Err(Refusal::CommandTooLong.into()),
            Ok(Ok(LineRead::Line(line))) => Zeroizing::new(line),
        };
        if let Some(taint) = line_taint(&line) {
            return Err(Refusal::BadCommandLine(taint).into());
        }
        let text = &line[..line.len() - 2];
        if text == b"*" {
            return Err(Refusal::AuthCancelled.into());
        }
        decode(text)
    }
}

fn decode(b64: &[u8]) -> Result<Secret, Stop> {
    if b64 == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Zeroizing::new)
        .map_err(|_| Refusal::AuthBadEncoding.into())
}

fn user_name(bytes: &[u8]) -> Result<String, Stop> {
    match std::str::from_utf8(bytes) {
        Ok(name) if !name.is_empty() && !name.chars().any(char::is_control) => Ok(name.to_string()),
        _ => Err(Refusal::AuthBadEncoding.into()),
    }
}
