//! Queue commands (`dkim-relay queue …`) and how they reach a running relay.
//!
//! A running relay holds an exclusive lock on `<spool.dir>/lock` (so two relays never
//! share a spool) and answers on a Unix socket, `<spool.dir>/control.sock` (mode 0600),
//! one JSON request line and one JSON reply line per connection. The queue runner owns
//! the queue in memory, so every change goes through it: nothing edits a file under a
//! running relay's feet. When no relay holds the lock, the command takes the lock itself
//! and works on the spool files directly.

pub mod cli;
mod offline;
pub mod server;

use std::path::{Path, PathBuf};

pub use crate::queue::{Entry, RcptEntry, Request, Response};

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
