//! Wires the stages together: key store → key ring, spool → queue runner, listener →
//! sessions. [`start`] is what `serve` runs and what integration tests start in-process.

use crate::config::{Config, DomainConfig};
use crate::delivery::{
    self, DeliveryContext, DeliveryEvent, Outbox, QueueHandle, RetryPolicy, Transport, Upstream,
};
use crate::dkim::{KeyRing, SharedKeyRing};
use crate::keys::{Algorithm, KeyError, KeyStore, SlotState};
use crate::rotation::Rotator;
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
    #[error("rotation: {0}")]
    Rotation(String),
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
    /// Wakes the rotation scheduler (`keys rotate` on a running relay, tests).
    rotate_now: Arc<tokio::sync::Notify>,
    tasks: Vec<JoinHandle<()>>,
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

    /// Reloads the keys from the key store; messages in flight keep the keys they had.
    pub fn reload_keys(&self) {
        self.keys.replace(load_keys(&self.store, &self.config));
    }

    /// Runs the rotation planner now instead of at its next tick.
    pub fn rotate_now(&self) {
        self.rotate_now.notify_one();
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
    // One rotation pass before accepting mail: first keys for new domains, and whatever
    // became due while the relay was down.
    let rotator = Rotator::new(&config).map_err(StartError::Rotation)?;
    if config.rotation.enabled {
        rotator.run_all(delivery::now_unix(), false).await;
    }
    let keys = Arc::new(SharedKeyRing::new(load_keys(&store, &config)));

    let spool_err = |source| StartError::Spool {
        path: config.spool.dir.display().to_string(),
        source,
    };
    let spool = Spool::open(&config.spool.dir, config.spool.fsync).map_err(spool_err)?;
    let initial = spool.load_all().map_err(spool_err)?;
    if !initial.is_empty() {
        tracing::info!(
            messages = initial.len(),
            "loaded the spool; delivering what is there"
        );
    }

    let transport = match &config.upstream {
        Some(upstream) => {
            let upstream =
                Upstream::new(upstream, &config.hostname).map_err(StartError::Upstream)?;
            tracing::info!(upstream = %upstream.describe(), "delivering to the upstream");
            Transport::Upstream(upstream)
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
    let smtp_ctx = Arc::new(SmtpContext {
        config: config.clone(),
        keys: keys.clone(),
        spool,
        queue: queue.clone(),
    });
    let server = tokio::spawn(smtp::serve(listener, smtp_ctx, shutdown_rx.clone()));
    let rotate_now = Arc::new(tokio::sync::Notify::new());
    let mut tasks = vec![server, runner];
    if config.rotation.enabled {
        tasks.push(tokio::spawn(rotation_scheduler(
            rotator,
            keys.clone(),
            store.clone(),
            config.clone(),
            queue.clone(),
            rotate_now.clone(),
            shutdown_rx,
        )));
    }
    tracing::info!(listen = %smtp_addr, hostname = %config.hostname, "dkim-relay is accepting mail");

    Ok(RelayHandle {
        smtp_addr,
        shutdown: shutdown_tx,
        queue,
        events,
        keys,
        store,
        config,
        rotate_now,
        tasks,
    })
}

/// Runs the rotation planner every `rotation.check_every` and when asked; reloads the
/// key ring and retries deferred mail when keys changed.
async fn rotation_scheduler(
    rotator: Rotator,
    keys: Arc<SharedKeyRing>,
    store: KeyStore,
    config: Arc<Config>,
    queue: QueueHandle,
    wake: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = config.rotation.check_every.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        if rotator.run_all(delivery::now_unix(), false).await {
            keys.replace(load_keys(&store, &config));
            // Mail that waited for a key may go now.
            queue.flush();
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

/// Gives each domain without keys an active RSA (and Ed25519) key at once, skipping the
/// DNS wait. This is `keys activate --force` for new domains; tests use it to start from a
/// signing state. Normal first keys go through rotation and wait for DNS.
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
