//! [`RelayHandle`]: what `start` returns, and what `serve` (and the integration tests)
//! drive a running relay with.

use super::reload::{watch_task, Reloader};
use crate::delivery::DeliveryEvent;
use crate::spool::Spool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// A running relay.
pub struct RelayHandle {
    pub(super) smtp_addr: SocketAddr,
    /// The implicit-TLS listener's address, when `smtp.tls.implicit_listen` is set.
    pub(super) smtp_tls_addr: Option<SocketAddr>,
    /// The metrics/health listener, if configured.
    pub(super) metrics_addr: Option<SocketAddr>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) events: broadcast::Sender<DeliveryEvent>,
    pub(super) reloader: Arc<Reloader>,
    /// Wakes the rotation scheduler (`keys rotate` on a running relay, tests).
    pub(super) rotate_now: Arc<Notify>,
    /// Wakes the hot-reload task (SIGHUP); set once `watch` has started it.
    pub(super) reload: Option<mpsc::UnboundedSender<()>>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// Held open for the relay's life: the exclusive lock on the spool (see `control`).
    pub(super) _spool_lock: std::fs::File,
    pub(super) spool: Spool,
}

impl RelayHandle {
    /// The address the SMTP listener is bound to (useful with port 0).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// The metrics listener's address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The implicit-TLS listener's address (useful with port 0).
    pub fn smtp_tls_addr(&self) -> Option<SocketAddr> {
        self.smtp_tls_addr
    }

    /// Every delivery outcome as it happens (the metrics counters read the same stream).
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.events.subscribe()
    }

    /// Makes every queued message due now.
    pub fn flush(&self) {
        self.reloader.queue.flush();
    }

    /// The spool's fault-injection switch, for tests of a full disk.
    pub fn spool_disk_full(&self) -> crate::spool::DiskFull {
        self.spool.disk_full_switch()
    }

    /// Reloads the keys from the key store; messages in flight keep the keys they had.
    pub fn reload_keys(&self) {
        self.reloader.load_keys();
    }

    /// Starts hot reload: watches the key store and (if given) the config file's folder.
    pub fn watch(&mut self, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
        let (guard, wake, events) =
            crate::watch::watch(self.reloader.store.dir(), config_path.as_deref())?;
        self.reload = Some(wake);
        let task = tokio::spawn(watch_task(
            guard,
            events,
            config_path,
            self.reloader.clone(),
            self.shutdown.subscribe(),
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
