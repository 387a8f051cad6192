//! Wires the stages together: key store → key ring, spool → queue runner, listener →
//! sessions. [`start`] is what `serve` runs and what integration tests start in-process;
//! it reads as the order of the start, each step in a file of its own: `open` (spool,
//! key store, transport), `listeners`, `reload` (hot reload), `rotation` (the scheduler and
//! the control socket's rotation jobs; both apply changes through `reload`), `handle`
//! (the running relay).

use crate::config::{Config, DomainConfig, LiveConfig};
use crate::delivery::{self, DeliveryContext, Router};
use crate::dkim::SharedKeyRing;
use crate::keys::{Algorithm, DnsSeen, KeyError, KeyStore, SlotState};
use crate::rotation::Rotator;
use crate::smtp::{self, SmtpContext};
use reload::{load_keys, Reloader};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

mod handle;
mod listeners;
mod open;
mod reload;
mod rotation;
mod summary;

pub use handle::RelayHandle;

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
    let spool = open::spool(&config)?;
    let store = open::key_store(&config)?;
    // One rotation pass before accepting mail: first keys for new domains, and whatever
    // became due while the relay was down. Only the steps that need no hook and no DNS:
    // the rest waits for the scheduler's first run, right after the listener is up.
    let rotator = Rotator::new(&config).map_err(StartError::Rotation)?;
    if config.rotation.enabled {
        rotator.run_all_local(crate::clock::now_unix()).await;
    }
    drop(rotator);
    let keys = Arc::new(SharedKeyRing::new(load_keys(&store, &config)));
    let live = Arc::new(LiveConfig::new(config.clone()));
    let transport = open::transport(&config)?;

    let (events, _) = broadcast::channel(4096);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let dns_seen = Arc::new(DnsSeen::default());
    let delivery_ctx = Arc::new(DeliveryContext {
        spool: spool.spool.clone(),
        keys: keys.clone(),
        dns: dns_seen.clone(),
        transport: transport.clone(),
        live: live.clone(),
        events: events.clone(),
        clock: crate::clock::Clock::System,
    });
    let (queue, runner) = delivery::start(
        delivery_ctx,
        config.delivery.workers,
        spool.initial,
        shutdown_rx.clone(),
    );
    // Detached: it ends when the event channel closes, after the handle is dropped.
    tokio::spawn(crate::delivery::count_deliveries(events.subscribe()));

    let (listener, smtp_addr) = listeners::bind(config.smtp.listen).await?;
    let (implicit, smtp_tls_addr) = listeners::implicit_tls(&config).await?;
    let smtp_ctx = SmtpContext::new(
        live.clone(),
        keys.clone(),
        spool.spool.clone(),
        queue.clone(),
    )
    .map_err(|e| StartError::Inbound(e.to_string()))?;
    let server = tokio::spawn(smtp::serve(
        listener,
        implicit,
        Arc::new(smtp_ctx),
        shutdown_rx.clone(),
    ));
    let mut tasks = vec![server, runner];
    let (trigger, jobs) = crate::rotation::trigger::channel();
    let trigger = config.rotation.enabled.then_some(trigger);
    tasks.extend(listeners::control(
        &config,
        &queue,
        trigger,
        shutdown_rx.clone(),
    ));

    let reloader = Arc::new(Reloader {
        live: live.clone(),
        keys: keys.clone(),
        store: store.clone(),
        queue,
        transport,
    });
    let rotate_now = Arc::new(tokio::sync::Notify::new());
    if config.rotation.enabled {
        tasks.push(tokio::spawn(rotation::scheduler(
            reloader.clone(),
            rotate_now.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(rotation::jobs(
            reloader.clone(),
            jobs,
            shutdown_rx.clone(),
        )));
    }
    // Its own task, never the rotation scheduler's: a slow DNS server delays nothing else.
    let release = reloader.queue.clone();
    tasks.push(tokio::spawn(crate::rotation::dns_watch::run(
        live.clone(),
        store.clone(),
        dns_seen.clone(),
        // Mail held for a record that is back may go now.
        move || release.flush(),
        shutdown_rx.clone(),
    )));
    let http = crate::metrics::HttpContext {
        live,
        keys,
        store,
        dns: dns_seen,
        spool_dir: config.spool.dir.clone(),
        spool: spool.spool.clone(),
    };
    let metrics = listeners::metrics(&config, http, shutdown_rx).await?;
    let metrics_addr = metrics.map(|(addr, task)| {
        tasks.push(task);
        addr
    });
    tracing::info!(listen = %smtp_addr, hostname = %config.hostname, "{ACCEPTING}");

    Ok(RelayHandle {
        smtp_addr,
        smtp_tls_addr,
        metrics_addr,
        shutdown: shutdown_tx,
        events,
        reloader,
        rotate_now,
        reload: None,
        tasks,
        _spool_lock: spool.lock,
        spool: spool.spool,
    })
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
