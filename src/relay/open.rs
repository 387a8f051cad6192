//! What `start` opens before anything serves: the spool (locked first, so a second relay
//! on the same spool stops before it touches anything), the key store's folder, and the
//! transport (the upstream router, or the outbox).

use super::StartError;
use crate::config::Config;
use crate::delivery::{Outbox, Router, SharedTransport, Transport};
use crate::keys::KeyStore;
use crate::spool::{MemoryBudget, QueuedMessage, Spool};
use std::sync::Arc;

/// The spool, locked for this relay, with what it already holds.
pub(super) struct OpenSpool {
    pub lock: std::fs::File,
    pub spool: Spool,
    pub initial: Vec<QueuedMessage>,
}

pub(super) fn spool(config: &Config) -> Result<OpenSpool, StartError> {
    let spool_err = |source| StartError::Spool {
        path: config.spool.dir.display().to_string(),
        source,
    };
    let lock = crate::control::try_lock_spool(&config.spool.dir)
        .map_err(spool_err)?
        .ok_or_else(|| StartError::SpoolLocked(config.spool.dir.display().to_string()))?;
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
    Ok(OpenSpool {
        lock,
        spool,
        initial,
    })
}

pub(super) fn key_store(config: &Config) -> Result<KeyStore, StartError> {
    if std::fs::metadata(&config.keys.dir).is_ok_and(|m| !m.is_dir()) {
        return Err(StartError::NotADirectory {
            field: "keys.dir",
            path: config.keys.dir.display().to_string(),
        });
    }
    Ok(KeyStore::for_config(&config.keys))
}

pub(super) fn transport(config: &Config) -> Result<Arc<SharedTransport>, StartError> {
    let transport = match Router::from_config(config).map_err(StartError::Upstream)? {
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
    Ok(Arc::new(SharedTransport::new(transport)))
}
