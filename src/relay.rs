//! Wires the stages together: key store → key ring, spool → queue runner, listener →
//! sessions. [`start`] is what `serve` runs and what integration tests start in-process.

use crate::config::{Config, DomainConfig, LiveConfig};
use crate::delivery::{
    self, DeliveryContext, DeliveryEvent, Outbox, QueueHandle, RetryPolicy, Router,
    SharedTransport, Transport,
};
use crate::dkim::{KeyRing, SharedKeyRing};
use crate::keys::{Algorithm, KeyError, KeyStore, SlotState};
use crate::rotation::Rotator;
use crate::smtp::{self, SmtpContext};
use crate::spool::{MemoryBudget, Spool};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

mod summary;

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
    #[error("cannot listen on {addr}: {source} (another program holds it? stop that one or change the listen address in the config)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("key store: {0}")]
    Keys(#[from] KeyError),
    #[error("the spool directory {0} is locked: another dkim-relay is using it (stop that one, or give this one its own spool.dir)")]
    SpoolLocked(String),
    #[error("rotation: {0}")]
    Rotation(String),
    #[error("inbound: {0}")]
    Inbound(String),
    #[error("{field} = {path} is a file, not a directory: move the file away or point {field} at a directory")]
    NotADirectory { field: &'static str, path: String },
}

/// Binds the implicit-TLS listener when one is configured.
async fn bind_implicit_tls(
    config: &Config,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    let Some(addr) = config.smtp.tls.as_ref().and_then(|t| t.implicit_listen) else {
        return Ok((None, None));
    };
    let listen_err = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    Ok((Some(listener), Some(bound)))
}

/// A running relay.
pub struct RelayHandle {
    smtp_addr: SocketAddr,
    /// The implicit-TLS listener's address, when `smtp.tls.implicit_listen` is set.
    smtp_tls_addr: Option<SocketAddr>,
    /// The metrics/health listener, if configured.
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    queue: QueueHandle,
    events: broadcast::Sender<DeliveryEvent>,
    keys: Arc<SharedKeyRing>,
    store: KeyStore,
    live: Arc<LiveConfig>,
    /// The upstreams and routes in force; a reload that changes them swaps it.
    transport: Arc<SharedTransport>,
    shutdown_rx: watch::Receiver<bool>,
    /// Wakes the rotation scheduler (`keys rotate` on a running relay, tests).
    rotate_now: Arc<tokio::sync::Notify>,
    /// Wakes the hot-reload task (SIGHUP); set once `watch` has started it.
    reload: Option<tokio::sync::mpsc::UnboundedSender<()>>,
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

    /// The implicit-TLS listener's address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn smtp_tls_addr(&self) -> Option<SocketAddr> {
        self.smtp_tls_addr
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
        self.keys
            .replace(load_keys(&self.store, &self.live.current()));
    }

    /// Starts hot reload: watches the key store and (if given) the config file's folder.
    pub fn watch(&mut self, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
        let (guard, wake, events) = crate::watch::watch(self.store.dir(), config_path.as_deref())?;
        self.reload = Some(wake);
        let task = tokio::spawn(watch_task(
            guard,
            events,
            config_path,
            self.live.clone(),
            self.keys.clone(),
            self.store.clone(),
            self.queue.clone(),
            self.transport.clone(),
            self.shutdown_rx.clone(),
        ));
        self.tasks.push(task);
        Ok(())
    }

    /// Re-reads the config file and the key store now (SIGHUP, `systemctl reload`), as a
    /// file change would; without hot reload running, reloads the keys.
    pub fn reload(&self) {
        match &self.reload {
            Some(wake) if wake.send(()).is_ok() => {}
            _ => self.reload_keys(),
        }
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

/// The log line that says the relay accepts mail; it names the bound address
/// (`listen=ADDR`), which scripts, tests and the benchmark read back with
/// [`listen_addr_in_log`] when the relay was started on port 0.
pub const ACCEPTING: &str = "dkim-relay is accepting mail";

/// The SMTP address in the [`ACCEPTING`] log line, if `line` is that line.
pub fn listen_addr_in_log(line: &str) -> Option<SocketAddr> {
    if !line.contains(ACCEPTING) {
        return None;
    }
    line.split("listen=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `config check` proves before `serve` would start: the files the config names load
/// the way `start` loads them (TLS certificate and key, users file, upstream password and
/// CA, the rotation resolver). Uses the constructors `start` uses, so the two cannot
/// disagree about what is valid. Binds nothing and touches neither spool nor key store.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inbound = |e: &dyn std::fmt::Display| StartError::Inbound(e.to_string());
    if let Some(tls) = &config.smtp.tls {
        smtp::tls::TlsStore::open(tls).map_err(|e| inbound(&smtp::InboundError::from(e)))?;
    }
    if let Some(auth) = &config.smtp.auth {
        crate::auth::Users::load(&auth.users_file)
            .map_err(|e| inbound(&smtp::InboundError::from(e)))?;
    }
    Router::from_config(config).map_err(StartError::Upstream)?;
    Rotator::new(config).map_err(StartError::Rotation)?;
    Ok(())
}

/// Starts every stage. Fails only for problems the operator must fix before the relay can
/// do anything useful (spool not writable, port taken, upstream password unreadable).
pub async fn start(config: Config) -> Result<RelayHandle, StartError> {
    // One crypto library everywhere (DESIGN §8); an error means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);

    // First, so a second relay on the same spool stops before it touches anything.
    let spool_lock = crate::control::try_lock_spool(&config.spool.dir)
        .map_err(|source| StartError::Spool {
            path: config.spool.dir.display().to_string(),
            source,
        })?
        .ok_or_else(|| StartError::SpoolLocked(config.spool.dir.display().to_string()))?;
    if std::fs::metadata(&config.keys.dir).is_ok_and(|m| !m.is_dir()) {
        return Err(StartError::NotADirectory {
            field: "keys.dir",
            path: config.keys.dir.display().to_string(),
        });
    }
    let store = KeyStore::new(&config.keys.dir);
    // One rotation pass before accepting mail: first keys for new domains, and whatever
    // became due while the relay was down.
    let rotator = Rotator::new(&config).map_err(StartError::Rotation)?;
    if config.rotation.enabled {
        rotator.run_all(crate::clock::now_unix(), false).await;
    }
    let keys = Arc::new(SharedKeyRing::new(load_keys(&store, &config)));
    let live = Arc::new(LiveConfig::new(config.clone()));

    let spool_err = |source| StartError::Spool {
        path: config.spool.dir.display().to_string(),
        source,
    };
    let spool = Spool::open(&config.spool.dir, config.spool.fsync)
        .map_err(spool_err)?
        .with_memory_budget(MemoryBudget::new(config.smtp.max_data_memory.0));
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
            for upstream in config.upstream_list() {
                tracing::info!("{}", upstream.profile_choice().explain(&upstream));
            }
            Transport::Upstreams(Arc::new(router))
        }
        None => {
            let dir = &config.delivery.outbox_dir;
            let outbox =
                Outbox::open(dir, config.spool.fsync).map_err(|source| StartError::Outbox {
                    path: dir.display().to_string(),
                    source,
                })?;
            // `serve` says so loudly in its start summary (summary.rs).
            tracing::debug!(outbox = %dir.display(), "no upstream: writing to the outbox");
            Transport::Outbox(outbox)
        }
    };
    let transport = Arc::new(SharedTransport::new(transport));

    let (events, _) = broadcast::channel(4096);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let delivery_ctx = Arc::new(DeliveryContext {
        spool: spool.clone(),
        keys: keys.clone(),
        transport: transport.clone(),
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
    let (implicit, smtp_tls_addr) = bind_implicit_tls(&config).await?;
    let smtp_ctx = SmtpContext::new(config.clone(), keys.clone(), spool, queue.clone())
        .map_err(|e| StartError::Inbound(e.to_string()))?;
    let server = tokio::spawn(smtp::serve(
        listener,
        implicit,
        Arc::new(smtp_ctx),
        shutdown_rx.clone(),
    ));
    let rotate_now = Arc::new(tokio::sync::Notify::new());
    let mut tasks = vec![server, runner];
    tasks.extend(start_control(&config, &queue, shutdown_rx.clone()));
    if config.rotation.enabled {
        drop(rotator);
        tasks.push(tokio::spawn(rotation_scheduler(
            live.clone(),
            keys.clone(),
            store.clone(),
            queue.clone(),
            rotate_now.clone(),
            shutdown_rx.clone(),
        )));
    }
    // Detached: it ends when the event channel closes, after the handle is dropped.
    tokio::spawn(crate::delivery::count_deliveries(events.subscribe()));
    let metrics_addr = match config.metrics.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Listen { addr, source })?;
            let ctx = Arc::new(crate::metrics::HttpContext {
                live: live.clone(),
                keys: keys.clone(),
                store: store.clone(),
                spool_dir: config.spool.dir.clone(),
                queue_dir: spool_handle.queue_dir().to_path_buf(),
                spool: spool_handle.clone(),
            });
            tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                ctx,
                shutdown_rx.clone(),
            )));
            tracing::info!(listen = %bound, "metrics and health on http://{bound}/metrics, /healthz, /readyz");
            Some(bound)
        }
        None => None,
    };
    tracing::info!(listen = %smtp_addr, hostname = %config.hostname, "{ACCEPTING}");

    Ok(RelayHandle {
        smtp_addr,
        smtp_tls_addr,
        metrics_addr,
        shutdown: shutdown_tx,
        queue,
        events,
        keys,
        store,
        live,
        transport,
        shutdown_rx,
        rotate_now,
        reload: None,
        tasks,
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

/// Runs the rotation planner every `rotation.check_every` and when asked; reloads the
/// key ring and retries deferred mail when keys changed.
async fn rotation_scheduler(
    live: Arc<LiveConfig>,
    keys: Arc<SharedKeyRing>,
    store: KeyStore,
    queue: QueueHandle,
    wake: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let config = live.current();
        tokio::select! {
            _ = tokio::time::sleep(config.rotation.check_every.0) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        // Built per run so a reloaded config (resolver, hook, policy) applies.
        let config = live.current();
        if !config.rotation.enabled {
            continue;
        }
        let rotator = match Rotator::new(&config) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rotation cannot run");
                continue;
            }
        };
        if rotator.run_all(crate::clock::now_unix(), false).await {
            keys.replace(load_keys(&store, &config));
            // Mail that waited for a key may go now.
            queue.flush();
        }
    }
}

/// Applies changes to the key store and the config file while the relay runs.
#[allow(clippy::too_many_arguments)]
async fn watch_task(
    guard: impl Send,
    mut events: tokio::sync::mpsc::UnboundedReceiver<()>,
    config_path: Option<std::path::PathBuf>,
    live: Arc<LiveConfig>,
    keys: Arc<SharedKeyRing>,
    store: KeyStore,
    queue: QueueHandle,
    transport: Arc<SharedTransport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _guard = guard; // watching stops when this task ends
    let mut config_text = config_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut fingerprint = crate::watch::store_fingerprint(store.dir());
    loop {
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(crate::watch::RECHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let mut reload = false;
        if let Some(path) = &config_path {
            match crate::watch::reread_config(path, &mut config_text) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    let effect = crate::watch::reload_effect(&live.current(), &new);
                    if effect
                        .live
                        .iter()
                        .any(|f| crate::watch::UPSTREAM_FIELDS.contains(f))
                    {
                        replace_upstreams(&transport, &new);
                    }
                    live.replace(new);
                    reload = true;
                    let applied = match effect.live.is_empty() {
                        true => "none".to_string(),
                        false => effect.live.join(", "),
                    };
                    tracing::info!(config = %path.display(), applied = %applied, "config reloaded");
                    if !effect.restart.is_empty() {
                        tracing::warn!(sections = %effect.restart.join(", "), "these config changes take effect after a restart; the running relay keeps the old values");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "new config refused; the previous one stays in force")
                }
            }
        }
        let now = crate::watch::store_fingerprint(store.dir());
        if now != fingerprint {
            fingerprint = now;
            reload = true;
            tracing::info!("key store changed; reloading keys");
        }
        if reload {
            keys.replace(load_keys(&store, &live.current()));
            queue.flush();
        }
    }
}

/// A reload changed the upstreams or routes: new attempts use a router built from the
/// new config; attempts already running finish on the old one. A router that cannot be
/// built (an unreadable password file) leaves the old one in force.
fn replace_upstreams(transport: &SharedTransport, config: &Config) {
    match Router::from_config(config) {
        Ok(Some(router)) => {
            tracing::info!(upstreams = %router.describe(), "upstreams and routes reloaded; new attempts use them");
            transport.replace(Transport::Upstreams(Arc::new(router)));
        }
        // reload_effect makes a switch to or from the outbox restart-only.
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "new upstream settings refused; the previous ones stay in force")
        }
    }
}

fn load_keys(store: &KeyStore, config: &Config) -> KeyRing {
    let ring = KeyRing::load(store, config);
    for (domain, keys) in ring.summary() {
        match keys {
            Ok(selectors) => {
                tracing::debug!(domain = %domain, keys = %selectors.join(", "), "signing for domain")
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
    let now = crate::clock::now_unix();
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
