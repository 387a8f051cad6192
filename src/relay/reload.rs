//! The running relay's changes, applied one way whatever woke them: a file event or the
//! periodic re-check (hot reload), a SIGHUP, or a rotation run that moved a key
//! (`rotation.rs`). Each ends in [`Reloader`]; none has its own copy of what a reload does.

use crate::config::{Config, LiveConfig};
use crate::delivery::{QueueHandle, Router, SharedTransport, Transport};
use crate::dkim::{KeyRing, SharedKeyRing};
use crate::keys::KeyStore;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What a reload replaces: the config snapshot, the key ring and the delivery router.
pub(super) struct Reloader {
    pub live: Arc<LiveConfig>,
    pub keys: Arc<SharedKeyRing>,
    pub store: KeyStore,
    pub queue: QueueHandle,
    /// The upstreams and routes in force; a reload that changes them swaps it.
    pub transport: Arc<SharedTransport>,
}

impl Reloader {
    /// Loads the key ring from the store under the config in force; messages in flight
    /// keep the keys they had.
    pub fn load_keys(&self) {
        self.keys
            .replace(load_keys(&self.store, &self.live.current()));
    }

    /// Keys or the config changed: new keys, and mail that waited for one may go now.
    pub fn keys_changed(&self) {
        self.load_keys();
        self.queue.flush();
    }

    /// Puts a new config in force, with each change logged as applied or restart-only.
    pub fn apply_config(&self, path: &std::path::Path, new: Config) {
        let effect = crate::watch::reload_effect(&self.live.current(), &new);
        if effect.rebuild_router {
            self.replace_upstreams(&new);
        }
        self.live.replace(new);
        let applied = match effect.live.is_empty() {
            true => "none".to_string(),
            false => effect.live.join(", "),
        };
        tracing::info!(config = %path.display(), applied = %applied, "config reloaded");
        if !effect.restart.is_empty() {
            tracing::warn!(sections = %effect.restart.join(", "), "these config changes take effect after a restart; the running relay keeps the old values");
        }
    }

    /// New attempts use a router built from the new config; attempts already running
    /// finish on the old one. A router that cannot be built (an unreadable password file)
    /// leaves the old one in force.
    fn replace_upstreams(&self, config: &Config) {
        match Router::from_config(config) {
            Ok(Some(router)) => {
                tracing::info!(upstreams = %router.describe(), "upstreams and routes reloaded; new attempts use them");
                self.transport
                    .replace(Transport::Upstreams(Arc::new(router)));
            }
            // reload_effect makes a switch to or from the outbox restart-only.
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "new upstream settings refused; the previous ones stay in force")
            }
        }
    }
}

/// Applies changes to the key store and the config file while the relay runs.
pub(super) async fn watch_task(
    guard: impl Send,
    mut events: mpsc::UnboundedReceiver<()>,
    config_path: Option<PathBuf>,
    reloader: Arc<Reloader>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _guard = guard; // watching stops when this task ends
    let mut config_text = config_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut fingerprint = crate::watch::store_fingerprint(reloader.store.dir());
    loop {
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(crate::watch::RECHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let mut changed = false;
        if let Some(path) = &config_path {
            match crate::watch::reread_config(path, &mut config_text) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    reloader.apply_config(path, new);
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "new config refused; the previous one stays in force")
                }
            }
        }
        let now = crate::watch::store_fingerprint(reloader.store.dir());
        if now != fingerprint {
            fingerprint = now;
            changed = true;
            tracing::info!("key store changed; reloading keys");
        }
        if changed {
            reloader.keys_changed();
        }
    }
}

pub(super) fn load_keys(store: &KeyStore, config: &Config) -> KeyRing {
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
