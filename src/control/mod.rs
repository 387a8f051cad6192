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

use crate::spool::{QueueId, QueuedMessage, RcptStatus};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One request to the queue runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    List,
    Show {
        id: QueueId,
    },
    /// Retry now: one message, or all (held ones stay held).
    Flush {
        id: Option<QueueId>,
    },
    /// Delete from the queue without a bounce.
    Remove {
        id: QueueId,
    },
    /// Keep in the queue but stop attempting it (survives restarts).
    Hold {
        id: QueueId,
    },
    Release {
        id: QueueId,
    },
}

impl std::fmt::Display for Request {
    /// The command as the operator typed it (`hold ID`), for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::List => f.write_str("list"),
            Request::Show { id } => write!(f, "show {id}"),
            Request::Flush { id: Some(id) } => write!(f, "flush {id}"),
            Request::Flush { id: None } => f.write_str("flush all"),
            Request::Remove { id } => write!(f, "remove {id}"),
            Request::Hold { id } => write!(f, "hold {id}"),
            Request::Release { id } => write!(f, "release {id}"),
        }
    }
}

/// The runner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Entries(Vec<Entry>),
    Done(String),
    Error(String),
}

/// A queued message as the queue commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: QueueId,
    /// Unix seconds when it was accepted.
    pub received: u64,
    pub sender: String,
    pub recipients: Vec<RcptEntry>,
    pub attempts: u32,
    /// Unix seconds of the next attempt (meaningless while held).
    pub next_attempt: u64,
    pub last_error: Option<String>,
    pub held: bool,
    /// An attempt is running right now.
    pub active: bool,
    pub bounce: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptEntry {
    pub address: String,
    pub status: RcptStatus,
    /// Why it failed, for a failed recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Entry {
    pub fn of(item: &QueuedMessage, active: bool) -> Entry {
        let recipients = item
            .envelope
            .rcpts
            .iter()
            .enumerate()
            .map(|(i, address)| RcptEntry {
                address: address.clone(),
                status: item
                    .state
                    .rcpts
                    .get(i)
                    .copied()
                    .unwrap_or(RcptStatus::Pending),
                reason: item.state.failures.get(&i).cloned(),
            })
            .collect();
        Entry {
            id: item.envelope.id.clone(),
            received: item.envelope.received,
            sender: item.envelope.mail_from.clone(),
            recipients,
            attempts: item.state.attempts,
            next_attempt: item.state.next_attempt,
            last_error: item.state.last_error.clone(),
            held: item.state.held,
            active,
            bounce: item.envelope.is_bounce(),
        }
    }
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
