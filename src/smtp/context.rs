//! What the inbound side shares: [`SmtpContext`] (built once at start) and [`ClientInfo`]
//! (what the listener learned about one connection, kept across STARTTLS). Sessions read
//! the config through the snapshot the listener took when it accepted the connection, so
//! a hot reload applies to the next connection and never changes the rules in the middle
//! of one.

use super::outsiders::OutsiderSlot;
use super::tls::{TlsError, TlsStore};
use crate::auth::{DomainGrant, FailureLimiter, Grants, PasswordChecks, UserError, Users};
use crate::config::{Config, LiveConfig};
use crate::delivery::QueueHandle;
use crate::dkim::SharedKeyRing;
use crate::spool::Spool;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// What every session shares.
pub struct SmtpContext {
    /// The config in force, swapped whole by hot reload; read through [`Self::snapshot`].
    live: Arc<LiveConfig>,
    /// The config the listener started with. Only restart-only fields are read from it
    /// (`smtp.listen`, the connection limits, `[smtp.tls]`, `[smtp.auth]`,
    /// `max_data_memory`, `shutdown_grace`: see `watch::reload_effect`): they size what
    /// was built at start, and a reload must not make the two disagree.
    pub started: Arc<Config>,
    /// The last snapshot with the grants built from it, rebuilt when the config changes.
    current: Mutex<Snapshot>,
    /// Keys in force, to refuse at DATA time a From domain the relay cannot sign for.
    pub keys: Arc<SharedKeyRing>,
    pub spool: Spool,
    /// Where accepted messages go for delivery.
    pub queue: QueueHandle,
    /// The certificate for STARTTLS and implicit TLS; None without `[smtp.tls]`.
    pub tls: Option<Arc<TlsStore>>,
    /// AUTH users; None without `[smtp.auth]` (then AUTH is neither offered nor accepted).
    pub users: Option<Arc<Users>>,
    /// Failed AUTHs per client address, shared by all sessions.
    pub auth_failures: FailureLimiter,
    /// The bounded pool AUTH password checks run on.
    pub password_checks: PasswordChecks,
}

/// Why the inbound side cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("smtp.tls: {0}")]
    Tls(#[from] TlsError),
    #[error("smtp.auth.users_file: {0}")]
    Users(#[from] UserError),
}

/// One consistent view of the live config for a connection: the config and who may relay
/// as which domain under it (`allowed_networks`, `senders`).
#[derive(Clone)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub grants: Arc<Grants>,
}

impl Snapshot {
    fn of(config: Arc<Config>) -> Snapshot {
        let grants = Arc::new(Grants::from_config(&config.smtp));
        Snapshot { config, grants }
    }
}

impl SmtpContext {
    /// Builds what sessions share; loads the TLS certificate and the users file.
    pub fn new(
        live: Arc<LiveConfig>,
        keys: Arc<SharedKeyRing>,
        spool: Spool,
        queue: QueueHandle,
    ) -> Result<SmtpContext, InboundError> {
        let config = live.current();
        let tls = match &config.smtp.tls {
            Some(tls) => Some(Arc::new(TlsStore::open(tls)?)),
            None => None,
        };
        let users = match &config.smtp.auth {
            Some(auth) => Some(Arc::new(Users::load(&auth.users_file)?)),
            None => None,
        };
        let (max, window, tracked) = config
            .smtp
            .auth
            .as_ref()
            .map_or((usize::MAX, std::time::Duration::ZERO, 1), |a| {
                (a.max_failures, a.failure_window.0, a.max_tracked_clients)
            });
        let (workers, waiting) = config
            .smtp
            .auth
            .as_ref()
            .map_or((1, 0), |a| (a.check_workers, a.check_queue));
        Ok(SmtpContext {
            current: Mutex::new(Snapshot::of(config.clone())),
            live,
            tls,
            users,
            auth_failures: FailureLimiter::new(max, window, tracked),
            password_checks: PasswordChecks::new(workers, waiting),
            started: config,
            keys,
            spool,
            queue,
        })
    }

    /// The config in force now, with its grants. Grants are built once per config, not
    /// per connection: the cache is keyed on the snapshot's identity.
    pub fn snapshot(&self) -> Snapshot {
        let config = self.live.current();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current.config, &config) {
            *current = Snapshot::of(config);
        }
        current.clone()
    }
}

/// What the listener knows about a client; it survives STARTTLS (unlike session state).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// The config in force when the connection was accepted: the whole connection,
    /// STARTTLS included, reads this one.
    pub config: Arc<Config>,
    /// The domains the client's network may use; None: it may relay only after AUTH.
    pub grant: Option<DomainGrant>,
    /// When the TCP connection was accepted: the session age counts from here.
    pub started: Instant,
    /// The outsiders' budget slot of a client outside every allowed network; None for
    /// the relay's own hosts.
    pub outsider: Option<OutsiderSlot>,
}
