//! One upstream SMTP server: a bounded pool of open connections (at most `pool_size`,
//! busy and idle together), reused from message to message and reconnected when they
//! fail, and the signing profile mail for this upstream gets (DESIGN §5, §7).

use super::connection::{Client, Connection, Seen};
use super::login::Login;
use super::prepare::{NotReady, Preparer};
pub use super::profile::SigningProfile;
use super::redact::Redactor;
use super::tls::SeenChain;
use super::transaction::{transact, Outcomes};
use super::verdict::{Cause, Verdict};
use crate::config::{TlsMode, UpstreamConfig};
use crate::spool::Envelope;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// How long an upstream that refused a connection is tried after the others.
const DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A reused connection idle longer than this is reset with RSET (which also proves it is
/// alive) before use.
const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a send failed: before a session existed (the upstream is down or refuses us,
/// so another upstream may be tried) or inside a transaction (this upstream decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedAt {
    Connect,
    Transaction,
}

#[derive(Debug, Clone)]
pub struct SendError {
    pub cause: Cause,
    pub at: FailedAt,
}

pub struct Upstream {
    pub(super) config: UpstreamConfig,
    /// Our name, said in EHLO.
    pub(super) hostname: String,
    pub(super) connector: TlsConnector,
    /// The chain the upstream presented in the last handshake (for `upstream check`).
    pub(super) seen_chain: SeenChain,
    /// AUTH: none, password, or XOAUTH2 with its token source.
    pub(super) login: Login,
    /// Takes our credentials out of the upstream's replies before anyone sees them.
    redactor: Redactor,
    profile: SigningProfile,
    /// Connections not in use, most recently used last.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection in use. A new connection is opened only when no idle
    /// one is left, so busy + idle never exceeds `pool_size`.
    in_use: Semaphore,
    /// After a connection failure, until when this upstream counts as down (failover
    /// then tries the others first).
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("tls", &self.config.tls)
            .field("username", &self.login.user())
            .finish()
    }
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, hostname: &str) -> Result<Arc<Upstream>, String> {
        let seen_chain = SeenChain::default();
        // The token endpoint trusts what the upstream trusts (ca_file); its certificates
        // are not the upstream's, so they are not kept for `upstream check`.
        let token_tls = super::tls::connector(config, SeenChain::default())?;
        let login = Login::from_config(config, token_tls.config().clone())?;
        Ok(Arc::new(Upstream {
            connector: super::tls::connector(config, seen_chain.clone())?,
            seen_chain,
            config: config.clone(),
            hostname: hostname.to_string(),
            redactor: login.redactor(),
            login,
            profile: SigningProfile::from_config(
                config.profile_choice().profile,
                &config.unsigned_headers,
            ),
            idle: Mutex::new(Vec::new()),
            in_use: Semaphore::new(config.pool_size.max(1)),
            down_until: Mutex::new(None),
        }))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}:{})",
            self.config.name, self.config.host, self.config.port
        )
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn profile(&self) -> &SigningProfile {
        &self.profile
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// A reply text with our credentials taken out.
    pub(super) fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// Names this upstream in a cause, and takes our credentials out of its words.
    pub(super) fn own_cause(&self, cause: Cause) -> Cause {
        let mut cause = self.redactor.cause(cause);
        cause.upstream = Some(self.describe());
        cause
    }

    /// The last connection attempt failed recently (see [`DOWN_FOR`]).
    pub fn is_down(&self) -> bool {
        let until = *self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn mark(&self, down: bool) {
        let until = down.then(|| Instant::now() + DOWN_FOR);
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Sends one message to the recipients `rcpts` (indexes into the envelope), in the
    /// form the connection it goes out on takes, prepared by `prep` once that connection
    /// is known. Every reply text in the result has our credentials taken out.
    pub(super) async fn send(
        &self,
        envelope: &Envelope,
        rcpts: &[usize],
        prep: &Preparer<'_>,
    ) -> Result<Outcomes, SendError> {
        match self.send_unredacted(envelope, rcpts, prep).await {
            Ok(outcomes) => Ok(outcomes
                .into_iter()
                .map(|(i, v)| {
                    let mut v = self.redactor.verdict(v);
                    if let Some(cause) = v.cause_mut() {
                        cause.upstream = Some(self.describe());
                    }
                    (i, v)
                })
                .collect()),
            Err(SendError { cause, at }) => Err(SendError {
                cause: self.own_cause(cause),
                at,
            }),
        }
    }

    async fn send_unredacted(
        &self,
        envelope: &Envelope,
        rcpts: &[usize],
        prep: &Preparer<'_>,
    ) -> Result<Outcomes, SendError> {
        // Closed only if the relay is shutting down, which never happens while we hold it.
        let Ok(_permit) = self.in_use.acquire().await else {
            return Err(SendError {
                cause: Cause::relay("upstream pool closed"),
                at: FailedAt::Connect,
            });
        };
        let mut reused = self.take_idle().await;
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => match self.connect().await {
                    Ok(conn) => {
                        self.mark(false);
                        conn
                    }
                    Err(cause) => {
                        self.mark(true);
                        return Err(SendError {
                            cause,
                            at: FailedAt::Connect,
                        });
                    }
                },
            };
            // The form follows this connection's EHLO; signed for it now (reused when a
            // reconnect or failover needs the same profile and form).
            let form = prep.form_for(&conn);
            let prepared = match prep.get(&self.profile, form).await {
                Ok(prepared) => prepared,
                Err(not_ready) => {
                    // Nothing was sent on the connection: it stays usable.
                    conn.last_used = Instant::now();
                    self.put_idle(conn);
                    return match not_ready {
                        NotReady::Fail(cause) => Ok(rcpts
                            .iter()
                            .map(|&i| (i, Verdict::Failed(cause.clone())))
                            .collect()),
                        NotReady::Defer(cause) => Err(SendError {
                            cause,
                            at: FailedAt::Transaction,
                        }),
                    };
                }
            };
            match transact(&mut conn, envelope, rcpts, &prepared.parts(), form).await {
                Ok(outcomes) => {
                    // After a 421 the server closes the connection: do not keep it.
                    let closing = outcomes.iter().any(|(_, v)| v.closes_connection());
                    if !closing {
                        conn.last_used = Instant::now();
                        self.put_idle(conn);
                    }
                    return Ok(outcomes);
                }
                // A kept-open connection the server had closed: try once on a fresh one.
                Err(e) if was_reused && e.retry_now => {
                    let cause = self.own_cause(e.cause);
                    tracing::debug!(upstream = %cause.upstream_field(), phase = %cause.phase_field(), reason = %cause, "reused upstream connection failed; reconnecting");
                    continue;
                }
                Err(e) => {
                    return Err(SendError {
                        cause: e.cause,
                        at: FailedAt::Transaction,
                    })
                }
            }
        }
    }

    async fn take_idle(&self) -> Option<Connection> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let idle_for = conn.last_used.elapsed();
            if idle_for >= self.config.idle_timeout.0 {
                continue; // dropped: closes the socket
            }
            if idle_for < PROBE_AFTER {
                return Some(conn);
            }
            let mut conn = conn;
            let alive = match &mut conn.client {
                Client::Tls(c) => c.rset().await.is_ok(),
                Client::Plain(c) => c.rset().await.is_ok(),
            };
            if alive {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    async fn connect(&self) -> Result<Connection, Cause> {
        let cfg = &self.config;
        let conn = self.open(&mut Seen::default()).await?;
        tracing::info!(upstream = %self.describe(), tls = match cfg.tls { TlsMode::Starttls => "starttls", TlsMode::Implicit => "implicit", TlsMode::None => "none" }, pool_size = cfg.pool_size, "connected to upstream");
        Ok(conn)
    }
}
