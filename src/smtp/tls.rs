//! The certificate the relay presents to its clients, reloaded when the files change.
//!
//! Certificates are renewed by tools (certbot, cert-manager) that replace the files, so
//! a periodic check of both modification times is used rather than an inotify watch on
//! a file that is about to be replaced. A new pair that fails to load is logged and the
//! old one stays in use: a half-written renewal must not take TLS down.

use crate::config::InboundTlsConfig;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("certificate and key do not form a usable pair: {0}")]
    Pair(String),
}

/// The acceptor in use and the file times it was built from.
pub struct TlsStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(TlsAcceptor, Stamp)>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

fn load(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_err = |path: &Path, problem: String| TlsError::File {
        path: path.display().to_string(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(cert_file, "no certificate in the file".into()));
    }
    // The error text of a key parse never contains key material, only its kind.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_err(key_file, format!("no usable private key ({e})")))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsStore {
    pub fn open(config: &InboundTlsConfig) -> Result<TlsStore, TlsError> {
        let s = stamp(&config.cert_file, &config.key_file);
        let acceptor = load(&config.cert_file, &config.key_file)?;
        Ok(TlsStore {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: RwLock::new((acceptor, s)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard.0.clone()
    }

    /// Reloads when either file's modification time changed; returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
            if guard.1 == now {
                return false;
            }
        }
        match load(&self.cert_file, &self.key_file) {
            Ok(acceptor) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (acceptor, now);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Keep the old pair; try again at the next tick (the stamp is not updated).
                tracing::error!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one");
                false
            }
        }
    }

    /// Checks the files every `every` until shutdown.
    pub async fn watch(
        self: Arc<Self>,
        every: std::time::Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let store = self.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
        }
    }
}
