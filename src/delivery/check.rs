//! `upstream check`: one session opened exactly as delivery opens it ([`Upstream::open`]),
//! what it saw, and, when asked, one signed test message sent through the same
//! transaction code delivery uses. Nothing here is used by `serve`.

use super::connection::Seen;
use super::upstream::Upstream;
use super::verdict::{Cause, Verdict};
use crate::spool::Envelope;

/// A signed test message: the envelope and the bytes to send (signature fields first).
pub struct TestSend {
    pub envelope: Envelope,
    pub parts: Vec<Vec<u8>>,
}

/// What one check found, in words (also the `--json` form).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: &'static str,
    pub seen: Seen,
    /// The session opened as far as delivery needs (and AUTH succeeded if configured).
    pub usable: bool,
    pub phase: Option<&'static str>,
    pub problem: Option<String>,
    pub fix: Option<String>,
    /// The upstream's reply to the test message, when one was sent.
    pub test_reply: Option<String>,
    pub test_delivered: Option<bool>,
}

impl Upstream {
    /// Opens a session, optionally sends `test`, and closes the session with QUIT.
    pub async fn check(&self, test: Option<&TestSend>) -> CheckReport {
        let cfg = self.config();
        let mut seen = Seen::default();
        let opened = self.open(&mut seen).await;
        let mut report = CheckReport {
            name: cfg.name.clone(),
            host: cfg.host.clone(),
            port: cfg.port,
            tls: match cfg.tls {
                crate::config::TlsMode::Starttls => "starttls",
                crate::config::TlsMode::Implicit => "implicit",
                crate::config::TlsMode::None => "none",
            },
            seen,
            usable: opened.is_ok(),
            phase: None,
            problem: None,
            fix: None,
            test_reply: None,
            test_delivered: None,
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(cause) => {
                report.note(&self.own_cause(cause));
                return report;
            }
        };
        if let Some(test) = test {
            let parts: Vec<&[u8]> = test.parts.iter().map(Vec::as_slice).collect();
            let rcpts: Vec<usize> = (0..test.envelope.rcpts.len()).collect();
            // The test message is ASCII and made here: it goes as it is.
            let form = crate::message::transport_form::Form {
                body_8bitmime: test.envelope.eight_bit && conn.eight_bit,
                ..crate::message::transport_form::Form::AS_STORED
            };
            match super::transaction::transact(&mut conn, &test.envelope, &rcpts, &parts, form)
                .await
            {
                Ok(outcomes) => {
                    let (said, delivered) = match outcomes.into_iter().next() {
                        Some((_, Verdict::Delivered(said))) => (self.redact(&said), true),
                        Some((_, Verdict::Deferred(c) | Verdict::Failed(c))) => {
                            (self.own_cause(c).to_string(), false)
                        }
                        None => ("no recipient was sent".to_string(), false),
                    };
                    report.test_reply = Some(said);
                    report.test_delivered = Some(delivered);
                }
                Err(e) => {
                    let cause = self.own_cause(e.cause);
                    report.test_reply = Some(cause.to_string());
                    report.test_delivered = Some(false);
                }
            }
        }
        conn.quit().await;
        report
    }
}

impl CheckReport {
    fn note(&mut self, cause: &Cause) {
        self.phase = cause.phase.map(|p| p.name());
        self.problem = Some(cause.to_string());
        self.fix = cause.fix.clone();
    }
}
