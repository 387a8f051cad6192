//! Stage 2 of the pipeline: the durable queue. The spool is the source of truth: a
//! message is answered 250 only after it is here (temp file, fsync, rename, fsync of the
//! directory), and at start the relay rebuilds its queue from these files (DESIGN §7).
//!
//! Layout: `queue/<id>.msg` holds the envelope and the message as received (unsigned);
//! `queue/<id>.state` holds the delivery progress and is replaced atomically after each
//! attempt. A file that cannot be read back is moved to `corrupt/` and logged.

mod budget;
mod dirsync;
mod envelope;
mod file;
mod incoming;
mod problem;

pub use budget::{largest_transfer, MemoryBudget, MemoryLease, HEADER_STEP, TRANSFER_BASE};
pub use envelope::{DeliveryState, Envelope, Origin, QueueId, RcptStatus, Utf8Use};
pub use incoming::Incoming;
pub use problem::Problem;

mod recycle;

use crate::fsutil::{ensure_dir, read_nofollow, sync_dir, write_atomic, write_atomic_via};
use dirsync::DirSync;
use recycle::Recycler;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Spool {
    queue: PathBuf,
    corrupt: PathBuf,
    fsync: bool,
    full: DiskFull,
    /// Files of delivered messages kept for reuse (only in the relay that owns the spool).
    recycler: Option<Recycler>,
    /// Memory of messages being received into this spool (`smtp.max_data_memory`).
    memory: MemoryBudget,
    /// The queue directory's fsync, shared by concurrent commits (see dirsync.rs); None:
    /// each commit fsyncs the directory itself (only for the spool benchmark).
    dir_sync: Option<DirSync>,
}

/// A seam for tests of storage failures on machines where no small filesystem can be
/// mounted: while on, storing a message fails with `StorageFull` after its temp file is
/// written, as a full disk would. Off unless a test turns it on.
#[derive(Debug, Clone, Default)]
pub struct DiskFull(Arc<AtomicBool>);

impl DiskFull {
    pub fn set(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(io::Error::from(io::ErrorKind::StorageFull))
        } else {
            Ok(())
        }
    }
}

/// A message read back from the spool; the message bytes are a slice of the file's bytes.
pub struct SpooledMessage {
    bytes: Vec<u8>,
    offset: usize,
}

impl SpooledMessage {
    pub fn message(&self) -> &[u8] {
        &self.bytes[self.offset..]
    }
}

/// A queue entry as loaded at start.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub envelope: Envelope,
    pub state: DeliveryState,
}

impl Spool {
    /// Opens (creating) the spool directory and removes temp files of writes that never
    /// completed: they never got a 250, so the client still holds those messages.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<Spool> {
        let spool = Spool {
            queue: dir.join("queue"),
            corrupt: dir.join("corrupt"),
            fsync,
            full: DiskFull::default(),
            recycler: Some(Recycler::default()),
            memory: MemoryBudget::default(),
            dir_sync: Some(DirSync::default()),
        };
        ensure_dir(&spool.queue, 0o700)?;
        ensure_dir(&spool.corrupt, 0o700)?;
        for entry in std::fs::read_dir(&spool.queue)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                tracing::info!(file = %name, "removing an incomplete spool write from before a crash");
                let _ = std::fs::remove_file(entry.path());
            } else if recycle::is_free_name(&name) {
                // Delivered messages kept for reuse, or a reuse cut short by a crash (it
                // never got its 250): nothing in them is needed.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    /// The spool at `dir` without creating or cleaning anything: for reading while a
    /// relay may be writing (its temp files must stay).
    pub fn attach(dir: &Path, fsync: bool) -> Spool {
        Spool {
            queue: dir.join("queue"),
            corrupt: dir.join("corrupt"),
            fsync,
            full: DiskFull::default(),
            recycler: None,
            memory: MemoryBudget::default(),
            dir_sync: Some(DirSync::default()),
        }
    }

    /// This spool with every commit fsyncing the queue directory on its own, as before
    /// group commit: only for `cargo bench --bench spool`, which compares the two.
    #[doc(hidden)]
    pub fn with_ungrouped_dir_sync(mut self) -> Spool {
        self.dir_sync = None;
        self
    }

    /// (directory fsyncs, commits they answered) of streamed commits so far: how much the
    /// group commit shared. For the spool benchmark and tests.
    pub fn dir_sync_counts(&self) -> (u64, u64) {
        self.dir_sync.as_ref().map_or((0, 0), DirSync::counts)
    }

    /// This spool with a budget for the memory of messages being received into it.
    pub fn with_memory_budget(mut self, memory: MemoryBudget) -> Spool {
        self.memory = memory;
        self
    }

    /// The budget every transfer into this spool (and its clones) takes its buffers from.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The fault-injection switch of this spool (and its clones).
    pub fn disk_full_switch(&self) -> DiskFull {
        self.full.clone()
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue
    }

    /// Stores a message durably. Only after this returns Ok may the client get 250.
    pub fn store(&self, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
        self.store_parts(envelope, &[message])
    }

    /// [`Spool::store`] for a message given as consecutive parts (the trace headers the
    /// relay adds, then the data as received), written without joining them in memory.
    pub fn store_parts(&self, envelope: &Envelope, message: &[&[u8]]) -> io::Result<()> {
        let len = message.iter().map(|p| p.len()).sum();
        let head = file::encode_head(envelope, len)?;
        let mut parts = Vec::with_capacity(message.len() + 1);
        parts.push(head.as_slice());
        parts.extend_from_slice(message);
        let name = msg_name(&envelope.id);
        // A delivered message's file, when one is free, saves creating a file: on ext4
        // that (finding a free inode) was the largest single cost of accepting a message.
        let write = |tmp: String| {
            write_atomic_via(
                &self.queue.join(tmp),
                &self.queue,
                &name,
                &parts,
                0o600,
                self.fsync,
                || self.full.check(),
            )
        };
        let tmp = self.recycler.as_ref().and_then(Recycler::take);
        match write(tmp.unwrap_or_else(|| format!(".{name}.tmp"))) {
            // Out of space while delivered messages' files wait for reuse: give them back
            // and try once more, so an empty queue never refuses mail.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                match self.recycler.as_ref().map(|r| r.give_back(&self.queue)) {
                    Some(n) if n > 0 => {
                        tracing::info!(
                            files = n,
                            "spool out of space: freed the files kept for reuse"
                        );
                        write(format!(".{name}.tmp"))
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// Whether a message could be stored now: a small file goes into the queue folder the
    /// way a message does (fault switch included) and is removed. For /readyz, which must
    /// not say ready while `queue/` is read-only or the disk is full.
    pub fn probe(&self) -> io::Result<()> {
        const NAME: &str = ".ready-probe";
        let tmp = self.queue.join(format!("{NAME}.tmp"));
        let block = [0u8; 4096];
        write_atomic_via(&tmp, &self.queue, NAME, &[&block], 0o600, false, || {
            self.full.check()
        })?;
        std::fs::remove_file(self.queue.join(NAME))
    }

    pub fn read(&self, id: &QueueId) -> io::Result<SpooledMessage> {
        let bytes = read_nofollow(&self.queue.join(msg_name(id)))?;
        let (_, offset) =
            file::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(SpooledMessage { bytes, offset })
    }

    pub fn save_state(&self, id: &QueueId, state: &DeliveryState) -> io::Result<()> {
        let json = serde_json::to_vec(state).map_err(io::Error::other)?;
        write_atomic(&self.queue, &state_name(id), &[&json], 0o600, self.fsync)
    }

    /// Removes a finished message. Losing this removal in a crash only means the message
    /// is delivered again (at least once), so the directory is not fsynced here.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let path = self.queue.join(msg_name(id));
        let keep = self
            .recycler
            .as_ref()
            .and_then(|r| Some((r, r.name_for(&path)?)));
        match keep {
            Some((recycler, free)) => {
                std::fs::rename(&path, self.queue.join(&free))?;
                recycler.kept(free);
            }
            None => std::fs::remove_file(&path)?,
        }
        match std::fs::remove_file(self.queue.join(state_name(id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads every queued message's envelope and state. Damaged files are moved aside to
    /// `corrupt/` and logged; they are never delivered and never stop the relay.
    pub fn load_all(&self) -> io::Result<Vec<QueuedMessage>> {
        let mut out = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&self.queue)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let Some(id) = name.strip_suffix(".msg") else {
                if let Some(id) = name.strip_suffix(".state") {
                    if !names.contains(&format!("{id}.msg")) {
                        // The message was removed after delivery but its state was not.
                        let _ = std::fs::remove_file(self.queue.join(name));
                    }
                }
                continue;
            };
            match self.load_one(id) {
                Ok(entry) => out.push(entry),
                Err(reason) => self.quarantine(id, &reason),
            }
        }
        out.sort_by_key(|m| m.envelope.received);
        Ok(out)
    }

    fn load_one(&self, id: &str) -> Result<QueuedMessage, String> {
        let bytes =
            read_nofollow(&self.queue.join(format!("{id}.msg"))).map_err(|e| e.to_string())?;
        let (envelope, _) = file::decode(&bytes)?;
        if envelope.id.as_str() != id {
            return Err(format!(
                "file name says {id}, envelope says {}",
                envelope.id
            ));
        }
        let state = match read_nofollow(&self.queue.join(format!("{id}.state"))) {
            Ok(json) => match serde_json::from_slice::<DeliveryState>(&json) {
                Ok(state) if state.rcpts.len() == envelope.rcpts.len() => state,
                _ => {
                    tracing::warn!(queue_id = id, "delivery state unreadable; retrying every recipient (some may receive it twice)");
                    DeliveryState::new(&envelope)
                }
            },
            Err(_) => DeliveryState::new(&envelope),
        };
        Ok(QueuedMessage { envelope, state })
    }

    fn quarantine(&self, id: &str, reason: &str) {
        tracing::error!(queue_id = id, reason, dir = %self.corrupt.display(), "damaged spool file moved aside; it will not be delivered");
        for suffix in ["msg", "state"] {
            let name = format!("{id}.{suffix}");
            let from = self.queue.join(&name);
            if from.exists() {
                if let Err(e) = std::fs::rename(&from, self.corrupt.join(&name)) {
                    tracing::error!(queue_id = id, error = %e, "cannot move the damaged file aside");
                }
            }
        }
        let _ = sync_dir(&self.queue);
    }
}

fn msg_name(id: &QueueId) -> String {
    format!("{id}.msg")
}

fn state_name(id: &QueueId) -> String {
    format!("{id}.state")
}

#[cfg(test)]
mod tests;
