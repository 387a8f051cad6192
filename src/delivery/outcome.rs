//! What happened to a recipient in one attempt, decided where it was observed
//! (DESIGN §7): 2xx done; 4xx, timeouts, TLS and connection failures retry; 5xx fails.

/// The result for one recipient of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The upstream took responsibility; the text is its reply.
    Delivered(String),
    /// Try again later.
    Deferred(String),
    /// Permanent: the upstream refused the recipient or message.
    Failed(String),
}

impl RcptOutcome {
    /// The reply or reason, whatever the outcome.
    pub fn text(&self) -> &str {
        match self {
            RcptOutcome::Delivered(t) | RcptOutcome::Deferred(t) | RcptOutcome::Failed(t) => t,
        }
    }

    /// From a parsed reply, with its enhanced status code (RFC 3463) put back in front of
    /// the text: mail-send splits it off, and the DSN wants it.
    pub fn from_response(reply: &smtp_proto::Response<String>) -> RcptOutcome {
        let [a, b, c] = reply.esc;
        if a == 0 {
            RcptOutcome::from_reply(reply.code, &reply.message)
        } else {
            RcptOutcome::from_reply(reply.code, &format!("{a}.{b}.{c} {}", reply.message.trim()))
        }
    }

    /// From an SMTP reply to MAIL, RCPT or the end of DATA.
    pub fn from_reply(code: u16, text: &str) -> RcptOutcome {
        let said = format!("{code} {}", text.trim());
        match code {
            200..=299 => RcptOutcome::Delivered(said),
            500..=599 => RcptOutcome::Failed(said),
            // 4xx (421 included), and anything out of range (a confused server) is worth
            // another try. Listed in full so no code is classified by a catch-all.
            0..=199 | 300..=499 | 600..=u16::MAX => RcptOutcome::Deferred(said),
        }
    }
}

/// Why a whole attempt failed before any recipient got an answer, and whether it is our
/// own configuration's fault (which must alert the operator, never bounce the mail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub reason: String,
    pub config_fault: bool,
}

impl AttemptError {
    pub fn from_send(error: &mail_send::Error) -> AttemptError {
        use mail_send::Error as E;
        let (reason, config_fault) = match error {
            E::Io(e) => (format!("connection error: {e}"), false),
            E::Tls(e) => (format!("TLS error: {e}"), false),
            E::Timeout => ("timed out".to_string(), false),
            E::UnparseableReply => ("unparseable reply or connection closed".to_string(), false),
            E::UnexpectedReply(r) => (format!("unexpected reply: {} {}", r.code, r.message), false),
            // A 2xx here is no refusal: the upstream took AUTH as some other command.
            E::AuthenticationFailed(r) if r.code < 300 => (
                format!(
                    "the upstream answered AUTH with {} {} instead of 235, so it does not take AUTH there: check upstream.host, port and tls, or remove upstream.username if it needs no AUTH",
                    r.code, r.message
                ),
                true,
            ),
            E::AuthenticationFailed(r) => (
                format!(
                    "AUTH refused ({} {}): check upstream.username and upstream.password_file",
                    r.code, r.message
                ),
                true,
            ),
            E::MissingCredentials => ("no credentials for AUTH".to_string(), true),
            E::UnsupportedAuthMechanism => (
                "upstream offers no AUTH mechanism we support".to_string(),
                true,
            ),
            E::Auth(e) => (format!("AUTH error: {e:?}"), true),
            E::InvalidTLSName => ("upstream.host is not a valid TLS name".to_string(), true),
            E::MissingStartTls => (
                "upstream does not offer STARTTLS, which upstream.tls requires".to_string(),
                true,
            ),
            E::Base64(_) => ("AUTH encoding error".to_string(), true),
            E::MissingMailFrom | E::MissingRcptTo => {
                ("internal: incomplete envelope".to_string(), false)
            }
        };
        AttemptError {
            reason,
            config_fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_map_to_outcomes() {
        assert!(matches!(
            RcptOutcome::from_reply(250, "ok"),
            RcptOutcome::Delivered(_)
        ));
        assert!(matches!(
            RcptOutcome::from_reply(451, "later"),
            RcptOutcome::Deferred(_)
        ));
        assert!(matches!(
            RcptOutcome::from_reply(421, "bye"),
            RcptOutcome::Deferred(_)
        ));
        assert!(matches!(
            RcptOutcome::from_reply(550, "no"),
            RcptOutcome::Failed(_)
        ));
        assert!(matches!(
            RcptOutcome::from_reply(354, "??"),
            RcptOutcome::Deferred(_)
        ));
    }

    #[test]
    fn auth_failure_is_our_fault_not_the_message() {
        let e = mail_send::Error::AuthenticationFailed(smtp_proto::Response {
            code: 535,
            esc: [5, 7, 8],
            message: "bad".into(),
        });
        let err = AttemptError::from_send(&e);
        assert!(err.config_fault);
    }
}
