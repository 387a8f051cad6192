//! Queue commands (`dkim-relay queue …`) and how they reach a running relay.
//!
//! A running relay holds an exclusive lock on `<spool.dir>/lock` (so two relays never
//! share a spool) and answers on a Unix socket, `<spool.dir>/control.sock` (mode 0600),
//! one JSON request line and one JSON reply line per connection. The queue runner owns
//! the queue in memory, so every change goes through it: nothing edits a file under a
//! running relay's feet. When no relay holds the lock, the command takes the lock itself
//! and works on the spool files directly.
//!
//! The same socket lets `keys rotate --emergency` and `keys publish` have the running
//! relay's rotation act at once instead of at its next scheduled run.

pub mod cli;
mod offline;
pub mod server;

use std::path::{Path, PathBuf};

pub use crate::queue::{Entry, RcptEntry, Request, Response};

/// A line on the control socket: a queue command, or a rotation run.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ControlRequest {
    Queue(Request),
    Rotation(RotationRequest),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum RotationRequest {
    /// Run this domain's rotation now and answer with what it did (`keys rotate
    /// --emergency`, `keys publish`, `keys rotate --now`).
    Rotate {
        domain: String,
        ask: crate::rotation::Ask,
    },
}

/// How long a rotation request on the control socket may take: four hook runs (publish
/// and revoke, RSA and Ed25519) at their timeout, plus DNS lookups.
pub fn rotation_request_timeout(config: &crate::config::Config) -> std::time::Duration {
    config.rotation.hook_timeout.0 * 4 + std::time::Duration::from_secs(30)
}

pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("control.sock")
}

pub fn lock_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("lock")
}

/// Takes the spool's exclusive lock without waiting. `Ok(None)`: someone (a running
/// relay) holds it. The lock lasts as long as the returned file is open.
pub fn try_lock_spool(spool_dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    crate::fsutil::ensure_dir(spool_dir, 0o700)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(spool_dir))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}
