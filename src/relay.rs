//! Wires the stages together: key store → key ring, spool → queue runner, listener →
//! sessions. [`start`] is what `serve` runs and what integration tests start in-process.

use crate::config::{Config, DomainConfig};
use crate::delivery::{
    self, DeliveryContext, DeliveryEvent, Outbox, QueueHandle, RetryPolicy, Router, Transport,
};
use crate::dkim::{KeyRing, SharedKeyRing};
use crate::keys::{Algorithm, KeyError, KeyStore, SlotState};
use crate::smtp::{self, SmtpContext};
use crate::spool::Spool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spool {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
    #[error("outbox {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("key store: {0}")]
    Keys(#[from] KeyError),
    #[error("spool {0} is locked: another dkim-relay is using it")]
    SpoolLocked(String),
}

/// A running relay.
pub struct RelayHandle {
    smtp_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    queue: QueueHandle,
    events: broadcast::Sender<DeliveryEvent>,
    keys: Arc<SharedKeyRing>,
    store: KeyStore,
    config: Arc<Config>,
    tasks: Vec<JoinHandle<()>>,
    /// Held open for the relay's life: the exclusive lock on the spool (see `control`).
    _spool_lock: std::fs::File,
    spool: Spool,
}

impl RelayHandle {
    /// The address the SMTP listener is bound to (useful with port 0).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.events.subscribe()
    }

    /// Makes every queued message due now.
    pub fn flush(&self) {
        self.queue.flush();
    }

    /// The spool's fault-injection switch, for tests of a full disk.
    pub fn spool_disk_full(&self) -> crate::spool::DiskFull {
        self.spool.disk_full_switch()
    }

    /// Reloads the keys from the key store; messages in flight keep the keys they had.
    pub fn reload_keys(&self) {
        self.keys.replace(load_keys(&self.store, &self.config));
    }

    /// Stops accepting, ends sessions, lets delivery attempts in progress finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts every stage. Fails only for problems the operator must fix before the relay can
/// do anything useful (spool not writable, port taken, upstream password unreadable).
pub async fn start(config: Config) -> Result<RelayHandle, StartError> {
    // One crypto library everywhere (DESIGN §8); an error means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);

    let store = KeyStore::new(&config.keys.dir);
    if config.keys.generate_missing {
        bootstrap_keys(&store, &config.domains)?;
    }
    let keys = Arc::new(SharedKeyRing::new(load_keys(&store, &config)));

    let spool_err = |source| StartError::Spool {
        path: config.spool.dir.display().to_string(),
        source,
    };
    let spool_lock = crate::control::try_lock_spool(&config.spool.dir)
        .map_err(spool_err)?
        .ok_or_else(|| StartError::SpoolLocked(config.spool.dir.display().to_string()))?;
    let spool = Spool::open(&config.spool.dir, config.spool.fsync).map_err(spool_err)?;
    let initial = spool.load_all().map_err(spool_err)?;
    if !initial.is_empty() {
        tracing::info!(
            messages = initial.len(),
            "loaded the spool; delivering what is there"
        );
    }

    let transport = match Router::from_config(&config).map_err(StartError::Upstream)? {
        Some(router) => {
            tracing::info!(upstreams = %router.describe(), "delivering to the upstreams");
            Transport::Upstreams(Arc::new(router))
        }
        None => {
            let dir = &config.delivery.outbox_dir;
            let outbox =
                Outbox::open(dir, config.spool.fsync).map_err(|source| StartError::Outbox {
                    path: dir.display().to_string(),
                    source,
                })?;
            tracing::warn!(outbox = %dir.display(), "NO UPSTREAM CONFIGURED: signed messages are written to the outbox directory and NOT sent anywhere");
            Transport::Outbox(outbox)
        }
    };

    let (events, _) = broadcast::channel(4096);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let delivery_ctx = Arc::new(DeliveryContext {
        spool: spool.clone(),
        keys: keys.clone(),
        transport,
        retry: RetryPolicy {
            initial: config.delivery.retry_initial.0,
            max: config.delivery.retry_max.0,
            lifetime: config.delivery.max_lifetime.0,
        },
        events: events.clone(),
        hostname: config.hostname.clone(),
        delay_warning: config.delivery.delay_warning.map(|d| d.0),
    });
    let (queue, runner) = delivery::start(
        delivery_ctx,
        config.delivery.workers,
        initial,
        shutdown_rx.clone(),
    );

    let addr = config.smtp.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let smtp_addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let spool_handle = spool.clone();
    let smtp_ctx = Arc::new(SmtpContext {
        config: config.clone(),
        keys: keys.clone(),
        spool,
        queue: queue.clone(),
    });
    let control = start_control(&config, &queue, shutdown_rx.clone());
    let server = tokio::spawn(smtp::serve(listener, smtp_ctx, shutdown_rx));
    tracing::info!(listen = %smtp_addr, hostname = %config.hostname, "dkim-relay is accepting mail");

    Ok(RelayHandle {
        smtp_addr,
        shutdown: shutdown_tx,
        queue,
        events,
        keys,
        store,
        config,
        tasks: vec![server, runner].into_iter().chain(control).collect(),
        _spool_lock: spool_lock,
        spool: spool_handle,
    })
}

/// The queue commands' control socket. Without it mail still flows, so a failure to bind
/// is logged, not fatal.
fn start_control(
    config: &Config,
    queue: &QueueHandle,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let path = crate::control::socket_path(&config.spool.dir);
    match crate::control::server::bind(&path) {
        Ok(listener) => Some(tokio::spawn(crate::control::server::serve(
            listener,
            queue.clone(),
            shutdown,
        ))),
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot open the control socket; queue commands will not reach this relay");
            None
        }
    }
}

fn load_keys(store: &KeyStore, config: &Config) -> KeyRing {
    let ring = KeyRing::load(store, config);
    for (domain, keys) in ring.summary() {
        match keys {
            Ok(selectors) => {
                tracing::info!(domain = %domain, keys = %selectors.join(", "), "signing for domain")
            }
            Err(reason) => {
                tracing::error!(domain = %domain, reason = %reason, "cannot sign for domain; its mail will wait in the queue")
            }
        }
    }
    ring
}

/// First start: a configured domain without keys gets them, active at once, and the
/// records to publish are logged. (Later keys go through rotation, which waits for DNS.)
pub fn bootstrap_keys(store: &KeyStore, domains: &[DomainConfig]) -> Result<(), KeyError> {
    let now = delivery::now_unix();
    for domain in domains {
        let state = store.load(&domain.name)?;
        let mut wanted = vec![(Algorithm::Rsa, &domain.rsa_selectors[0])];
        if domain.ed25519 {
            wanted.push((Algorithm::Ed25519, &domain.ed25519_selectors[0]));
        }
        for (algorithm, selector) in wanted {
            let has_any = state
                .as_ref()
                .is_some_and(|s| s.slots.iter().any(|slot| slot.algorithm == algorithm));
            if has_any {
                continue;
            }
            let (_, record) = store.generate_key(
                &domain.name,
                selector,
                algorithm,
                2048,
                SlotState::Active,
                now,
            )?;
            tracing::warn!(
                domain = %domain.name,
                selector = %selector,
                algorithm = %algorithm,
                record = %record.zone_line(),
                "generated a new key; publish this DNS record before sending real mail"
            );
        }
    }
    Ok(())
}
