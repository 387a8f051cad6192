//! What one attempt did for one recipient, decided where it was observed and carried as a
//! type (DESIGN §7): [`Verdict`] is delivered, deferred or failed; a [`Cause`] says whose
//! fault it was, carries the upstream's parsed reply when there was one, and so decides
//! whether a retry helps, whether the operator must be alerted, and what a DSN reports.
//! Retry, bounce, failover, logs and events read these types, never their text.

use crate::spool::Problem;

mod words;

/// Where in the conversation with the upstream something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connection and the greeting.
    Connect,
    /// STARTTLS or the TLS handshake (implicit TLS).
    Tls,
    Ehlo,
    Auth,
    Mail,
    Rcpt,
    Data,
}

impl Phase {
    /// A word for log fields and messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "TLS",
            Phase::Ehlo => "EHLO",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL",
            Phase::Rcpt => "RCPT",
            Phase::Data => "DATA",
        }
    }
}

/// An SMTP reply from the upstream, parsed once, where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReply {
    pub code: u16,
    /// The RFC 3463 enhanced status code, when the reply had one.
    pub status: Option<[u8; 3]>,
    pub text: String,
}

impl UpstreamReply {
    pub fn from_response(reply: &smtp_proto::Response<String>) -> UpstreamReply {
        UpstreamReply {
            code: reply.code,
            status: (reply.esc[0] != 0).then_some(reply.esc),
            text: reply.message.trim().to_string(),
        }
    }

    /// 421: the server is closing the connection (RFC 5321 §3.8).
    pub fn closes_connection(&self) -> bool {
        self.code == 421
    }

    fn enhanced(&self) -> Option<String> {
        self.status.map(|[a, b, c]| format!("{a}.{b}.{c}"))
    }
}

impl std::fmt::Display for UpstreamReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.enhanced() {
            Some(status) => write!(f, "{} {status} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// Whose fault a failure is: that decides who is told and whether waiting helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The upstream answered no; its reply's class says for how long.
    Upstream,
    /// The network, TLS or a timeout between us and the upstream.
    Transport,
    /// Our own configuration (AUTH refused, STARTTLS missing, a bad TLS name): the
    /// operator must act. Mail waits; it is never bounced for this.
    OurConfig,
    /// The relay itself: no usable key, the spool, the signer.
    Relay,
    /// Our DNS does not serve a key the message would be signed with, and
    /// `rotation.on_dns_mismatch = "defer"`: sending would carry a signature no receiver
    /// can verify. Mail waits until the DNS watch sees the record again.
    OurDns,
    /// The queue lifetime ran out while every failure was temporary.
    Expired,
    /// The message cannot be carried to this upstream in any form it takes (a UTF-8
    /// address, and the upstream does not offer SMTPUTF8): permanent, and the DSN says
    /// what would fix it.
    Unconvertible,
}

impl Fault {
    /// A word for log fields.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Upstream => "upstream",
            Fault::Transport => "transport",
            Fault::OurConfig => "our-config",
            Fault::Relay => "relay",
            Fault::OurDns => "our-dns",
            Fault::Expired => "expired",
            Fault::Unconvertible => "unconvertible",
        }
    }
}

/// Why a recipient was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub fault: Fault,
    /// The upstream's reply, when the cause is one.
    pub reply: Option<UpstreamReply>,
    /// The relay's own words: the whole reason without a reply, the context with one.
    pub detail: String,
    /// The upstream that answered or could not be reached: "name (host:port)".
    pub upstream: Option<String>,
    /// The step of the conversation it happened in, when an upstream was involved.
    pub phase: Option<Phase>,
    /// What the operator should change, for the failures that have a usual remedy.
    pub fix: Option<String>,
}

impl Cause {
    pub fn reply(reply: UpstreamReply) -> Cause {
        Cause {
            fault: Fault::Upstream,
            reply: Some(reply),
            detail: String::new(),
            upstream: None,
            phase: None,
            fix: None,
        }
    }

    /// The same cause, observed in `phase`.
    pub fn at(mut self, phase: Phase) -> Cause {
        self.phase = Some(phase);
        self
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Cause {
        self.fix = Some(fix.into());
        self
    }

    /// Log fields: the upstream, or "" when none was involved.
    pub fn upstream_field(&self) -> &str {
        self.upstream.as_deref().unwrap_or("")
    }

    pub fn phase_field(&self) -> &'static str {
        self.phase.map_or("", Phase::name)
    }

    pub fn fix_field(&self) -> &str {
        self.fix.as_deref().unwrap_or("")
    }

    pub fn transport(detail: impl Into<String>) -> Cause {
        Cause::of(Fault::Transport, detail)
    }

    pub fn our_config(detail: impl Into<String>) -> Cause {
        Cause::of(Fault::OurConfig, detail)
    }

    pub fn relay(detail: impl Into<String>) -> Cause {
        Cause::of(Fault::Relay, detail)
    }

    pub fn our_dns(detail: impl Into<String>) -> Cause {
        Cause::of(Fault::OurDns, detail)
    }

    fn of(fault: Fault, detail: impl Into<String>) -> Cause {
        Cause {
            fault,
            reply: None,
            detail: detail.into(),
            upstream: None,
            phase: None,
            fix: None,
        }
    }

    /// `what` holds UTF-8 that has no ASCII form (RFC 6531 §3.2: a UTF-8 local part, or
    /// a From addr-spec), and the upstream does not offer SMTPUTF8.
    pub fn needs_smtputf8(what: &str) -> Cause {
        Cause::of(
            Fault::Unconvertible,
            format!("{what} is written in UTF-8 and the upstream does not offer SMTPUTF8 (RFC 6531), so it cannot be carried there; send it with an ASCII address, or route this mail to an upstream that offers SMTPUTF8"),
        )
        .with_fix("route mail with UTF-8 addresses to an upstream that offers SMTPUTF8")
    }

    /// The message has no form the upstream takes (`reason`, from message::transport_form).
    pub fn unconvertible(reason: impl std::fmt::Display) -> Cause {
        Cause::of(
            Fault::Unconvertible,
            format!("the message cannot be carried to this upstream, which offers neither SMTPUTF8 nor 8BITMIME for it: {reason}"),
        )
        .with_fix("route this mail to an upstream that offers SMTPUTF8 and 8BITMIME")
    }

    /// The message outlived the queue lifetime; `last` is what its last attempt found.
    pub fn expired(attempts: u32, last: &Cause) -> Cause {
        Cause {
            fault: Fault::Expired,
            reply: last.reply.clone(),
            detail: format!("expired after {attempts} attempts; last error: {last}"),
            upstream: last.upstream.clone(),
            phase: last.phase,
            fix: last.fix.clone(),
        }
    }

    /// Classifies a mail-send error seen in `phase` of the conversation with `host`, in
    /// words, with the usual fix where there is one (see `words`).
    pub fn from_send(error: &mail_send::Error, phase: Phase, host: &str) -> Cause {
        words::from_send(error, phase, host).at(phase)
    }

    /// Classifies a failed OAuth token request: the endpoint refusing our credentials,
    /// grant or scope (a 4xx) is our configuration; no answer, a 5xx, 429 or 408 is a
    /// passing outage. Either way the mail waits; it is never bounced for this.
    pub fn from_token(error: &crate::oauth::TokenError) -> Cause {
        use crate::oauth::TokenProblem as P;
        let fault = match &error.problem {
            P::Unreachable(_) => Fault::Transport,
            P::Refused { status, .. } => match status {
                408 | 429 | 500..=599 => Fault::Transport,
                0..=407 | 409..=428 | 430..=499 | 600..=u16::MAX => Fault::OurConfig,
            },
            P::BadAnswer { .. } | P::Local(_) => Fault::OurConfig,
        };
        Cause::of(fault, error.to_string())
    }

    /// AUTH XOAUTH2 failed with a token the relay would not renew (fetched a moment ago,
    /// or refused with something other than 535): a 5xx means the endpoint issues tokens
    /// the upstream does not take, which is for the operator to fix; a 4xx passes.
    pub fn oauth_refused(error: &mail_send::Error, host: &str) -> Cause {
        match error {
            mail_send::Error::AuthenticationFailed(r) if r.code >= 500 => {
                let mut cause = Cause::reply(UpstreamReply::from_response(r))
                    .with_fix("check upstream.username (the mailbox) and the app's rights: Microsoft 365 needs SMTP.SendAsApp with admin consent, an Exchange service principal with access to the mailbox and SMTP AUTH enabled for it; Google needs domain-wide delegation of https://mail.google.com/")
                    .at(Phase::Auth);
                cause.fault = Fault::OurConfig;
                cause.detail = "AUTH XOAUTH2 refused the token".into();
                cause
            }
            mail_send::Error::AuthenticationFailed(r) if r.code >= 400 => {
                let mut cause = Cause::reply(UpstreamReply::from_response(r)).at(Phase::Auth);
                cause.detail = "AUTH XOAUTH2 failed for now".into();
                cause
            }
            other => Cause::from_send(other, Phase::Auth, host),
        }
    }

    /// The record a DSN reports: the reply's own enhanced status when its class fits,
    /// 4.4.7 for an expired message, otherwise the DSN kind's generic status (`None`).
    pub fn problem(&self) -> Problem {
        let status = match (self.fault, &self.reply) {
            (Fault::Expired, _) => Some("4.4.7".to_string()),
            // RFC 6531 §3.7.1: non-ASCII addresses not permitted for that recipient.
            (Fault::Unconvertible, _) => Some("5.6.7".to_string()),
            (_, Some(reply)) => reply
                .enhanced()
                .filter(|s| s.as_bytes().first() == reply.code.to_string().as_bytes().first()),
            (_, None) => None,
        };
        let smtp = self.reply.is_some() && self.fault != Fault::Expired;
        // An SMTP diagnostic (RFC 3464 §2.3.6) is the reply itself; who said it and when
        // is for our log, not for the sender's DSN.
        let text = if smtp {
            Cause {
                upstream: None,
                phase: None,
                ..self.clone()
            }
            .to_string()
        } else {
            self.to_string()
        };
        Problem { status, text, smtp }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expired = self.fault == Fault::Expired;
        match (&self.upstream, self.phase) {
            _ if expired => {}
            (Some(name), Some(phase)) => write!(f, "{name} at {}: ", phase.name())?,
            (Some(name), None) => write!(f, "{name}: ")?,
            (None, Some(phase)) => write!(f, "at {}: ", phase.name())?,
            (None, None) => {}
        }
        match (&self.reply, self.detail.is_empty()) {
            (Some(reply), true) => write!(f, "{reply}"),
            (Some(reply), false) if self.fault != Fault::Expired => {
                write!(f, "{reply} ({})", self.detail)
            }
            _ => f.write_str(&self.detail),
        }
    }
}

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream took responsibility (its reply), or the outbox has the message.
    Delivered(String),
    /// Try again later.
    Deferred(Cause),
    /// Permanent: bounce to the sender.
    Failed(Cause),
}

impl Verdict {
    /// The one place a reply code becomes a verdict: 2xx delivered, 5xx failed, and
    /// everything else (4xx, 421 included, and codes out of range from a confused
    /// server) worth another try. Listed in full so no code falls to a catch-all.
    pub fn from_reply(reply: UpstreamReply) -> Verdict {
        match reply.code {
            200..=299 => Verdict::Delivered(reply.to_string()),
            500..=599 => Verdict::Failed(Cause::reply(reply)),
            0..=199 | 300..=499 | 600..=u16::MAX => Verdict::Deferred(Cause::reply(reply)),
        }
    }

    /// The verdict of a reply read in `phase` of a transaction.
    pub fn from_response(reply: &smtp_proto::Response<String>, phase: Phase) -> Verdict {
        match Verdict::from_reply(UpstreamReply::from_response(reply)) {
            Verdict::Delivered(said) => Verdict::Delivered(said),
            Verdict::Deferred(cause) => Verdict::Deferred(cause.at(phase)),
            Verdict::Failed(cause) => Verdict::Failed(cause.at(phase)),
        }
    }

    /// The cause, for a verdict that has one.
    pub fn cause_mut(&mut self) -> Option<&mut Cause> {
        match self {
            Verdict::Delivered(_) => None,
            Verdict::Deferred(cause) | Verdict::Failed(cause) => Some(cause),
        }
    }

    /// After this verdict the upstream closes the connection, so it must not be reused.
    pub fn closes_connection(&self) -> bool {
        match self {
            Verdict::Delivered(_) => false,
            Verdict::Deferred(cause) | Verdict::Failed(cause) => cause
                .reply
                .as_ref()
                .is_some_and(UpstreamReply::closes_connection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, esc: [u8; 3], text: &str) -> UpstreamReply {
        UpstreamReply::from_response(&smtp_proto::Response {
            code,
            esc,
            message: text.to_string(),
        })
    }

    #[test]
    fn reply_codes_map_to_verdicts() {
        assert!(matches!(
            Verdict::from_reply(reply(250, [2, 0, 0], "ok")),
            Verdict::Delivered(_)
        ));
        assert!(matches!(
            Verdict::from_reply(reply(451, [4, 3, 0], "later")),
            Verdict::Deferred(_)
        ));
        let bye = Verdict::from_reply(reply(421, [4, 7, 0], "bye"));
        assert!(matches!(bye, Verdict::Deferred(_)) && bye.closes_connection());
        assert!(matches!(
            Verdict::from_reply(reply(550, [5, 1, 1], "no")),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            Verdict::from_reply(reply(354, [0, 0, 0], "??")),
            Verdict::Deferred(_)
        ));
    }

    #[test]
    fn auth_failure_is_our_fault_not_the_message() {
        let e = mail_send::Error::AuthenticationFailed(smtp_proto::Response {
            code: 535,
            esc: [5, 7, 8],
            message: "bad".into(),
        });
        let cause = Cause::from_send(&e, Phase::Auth, "smtp.example.net");
        assert_eq!(cause.fault, Fault::OurConfig);
        assert_eq!(cause.phase, Some(Phase::Auth));
        assert!(cause.fix_field().contains("password_file"), "{cause:?}");
        assert_eq!(cause.reply.as_ref().map(|r| r.code), Some(535));
    }

    #[test]
    fn a_token_the_upstream_refuses_is_our_config_and_a_4xx_passes() {
        let failed = |code, esc| {
            mail_send::Error::AuthenticationFailed(smtp_proto::Response {
                code,
                esc,
                message: "no".into(),
            })
        };
        let refused = Cause::oauth_refused(&failed(535, [5, 7, 3]), "smtp.test");
        assert_eq!(refused.fault, Fault::OurConfig);
        assert!(
            refused.fix_field().contains("SMTP.SendAsApp"),
            "{refused:?}"
        );
        assert_eq!(
            Cause::oauth_refused(&failed(454, [4, 7, 0]), "smtp.test").fault,
            Fault::Upstream
        );
    }

    #[test]
    fn token_failures_are_our_config_when_refused_and_transport_when_unanswered() {
        use crate::oauth::{TokenError, TokenProblem};
        let of = |problem| {
            Cause::from_token(&TokenError {
                endpoint: "login.test".into(),
                problem,
            })
            .fault
        };
        let refused = |status| TokenProblem::Refused {
            status,
            error: None,
            description: None,
        };
        assert_eq!(of(refused(401)), Fault::OurConfig);
        assert_eq!(of(refused(400)), Fault::OurConfig);
        assert_eq!(of(refused(404)), Fault::OurConfig);
        assert_eq!(of(refused(429)), Fault::Transport);
        assert_eq!(of(refused(503)), Fault::Transport);
        assert_eq!(
            of(TokenProblem::Unreachable("reset".into())),
            Fault::Transport
        );
        let bad = TokenProblem::BadAnswer {
            status: 200,
            problem: "not JSON".into(),
        };
        assert_eq!(of(bad), Fault::OurConfig);
    }

    /// What the DSN's Status: says: the reply's own code, a generic one, or 4.4.7.
    #[test]
    fn status_comes_from_the_reply_or_a_generic_code() {
        let status = |c: Cause| c.problem().status;
        assert_eq!(
            status(Cause::reply(reply(550, [5, 1, 1], "no such user"))),
            Some("5.1.1".into())
        );
        assert_eq!(
            status(Cause::reply(reply(554, [0, 0, 0], "rejected"))),
            None
        );
        // A reply whose enhanced code contradicts its class is not trusted.
        assert_eq!(status(Cause::reply(reply(550, [4, 1, 1], "odd"))), None);
        let last = Cause::reply(reply(451, [4, 3, 0], "x"));
        let expired = Cause::expired(9, &last);
        assert_eq!(status(expired.clone()), Some("4.4.7".into()));
        assert_eq!(
            expired.to_string(),
            "expired after 9 attempts; last error: 451 4.3.0 x"
        );
        assert!(!expired.problem().smtp);
        assert_eq!(status(last), Some("4.3.0".into()));
        assert_eq!(status(Cause::transport("connection error")), None);
        let p = Cause::reply(reply(550, [5, 1, 1], "no such user")).problem();
        assert!(p.smtp);
        assert_eq!(p.text, "550 5.1.1 no such user");
    }
}
