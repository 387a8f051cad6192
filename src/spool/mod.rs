//! Stage 2 of the pipeline: the durable queue. The spool is the source of truth: a
//! message is answered 250 only after it is here, and at start the relay rebuilds its
//! queue from what is here (DESIGN §7).
//!
//! Layout of `queue/`:
//! - `segment-<n>.log`: small messages (whole in memory at commit: at most
//!   [`incoming::HOLD`] bytes, most mail), appended with a checksum and group-committed (one
//!   fdatasync for every append waiting; segment.rs, record.rs); `segment-<n>.done` lists
//!   the delivered ones. A segment is deleted once all its messages are delivered.
//! - `<id>.msg`: a larger message, in a file of its own (temp file, fsync, rename, fsync of
//!   the directory; the directory fsync shared by concurrent commits, dirsync.rs).
//! - `<id>.state`: the delivery progress of either kind, replaced atomically after each
//!   attempt.
//!
//! A record or file that cannot be read back is copied or moved to `corrupt/` and logged.

mod budget;
mod dirsync;
mod envelope;
mod file;
mod incoming;
mod index;
mod problem;
mod record;
mod recover;
mod segment;
mod segment_file;

pub use budget::{largest_transfer, MemoryBudget, MemoryLease, HEADER_STEP, TRANSFER_BASE};
pub use envelope::{DeliveryState, Envelope, Origin, QueueId, RcptStatus, Utf8Use};
pub use incoming::{Incoming, HOLD};
pub use problem::Problem;

use crate::fsutil::{ensure_dir, read_nofollow, sync_dir, write_atomic, write_atomic_via};
use dirsync::DirSync;
use segment::Segments;
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
    /// The log small messages are appended to, and where each queued one is.
    segments: Segments,
    /// Small messages go to the segment log; false only in the spool benchmark, which
    /// compares it with a file per message.
    small_in_segments: bool,
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
    /// Opens (creating) the spool directory, removes temp files of writes that never
    /// completed (they never got a 250, so the client still holds those messages), and
    /// reads the segment log back (recover.rs).
    pub fn open(dir: &Path, fsync: bool) -> io::Result<Spool> {
        let queue = dir.join("queue");
        let corrupt = dir.join("corrupt");
        ensure_dir(&queue, 0o700)?;
        ensure_dir(&corrupt, 0o700)?;
        for entry in std::fs::read_dir(&queue)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.free-N`: files kept for reuse by versions before the segment log.
            if (name.starts_with('.') && name.ends_with(".tmp")) || name.starts_with(".free-") {
                tracing::info!(file = %name, "removing an incomplete spool write from before a crash");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let counts = Arc::default();
        let log = recover::load(&queue, &corrupt, &counts)?;
        Ok(Spool {
            segments: Segments::owned(&queue, fsync, log, counts),
            queue,
            corrupt,
            fsync,
            full: DiskFull::default(),
            small_in_segments: true,
            memory: MemoryBudget::default(),
            dir_sync: Some(DirSync::default()),
        })
    }

    /// The spool at `dir` without creating or cleaning anything: for reading while a
    /// relay may be writing (its temp files and the segment it appends to must stay).
    pub fn attach(dir: &Path, fsync: bool) -> Spool {
        let queue = dir.join("queue");
        Spool {
            segments: Segments::attached(&queue),
            queue,
            corrupt: dir.join("corrupt"),
            fsync,
            full: DiskFull::default(),
            small_in_segments: false,
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

    /// This spool with a file for every message, small ones too, as before the segment
    /// log: only for `cargo bench --bench spool`, which compares the two.
    #[doc(hidden)]
    pub fn with_a_file_per_message(mut self) -> Spool {
        self.small_in_segments = false;
        self
    }

    /// (directory fsyncs, commits they answered) of streamed commits to files so far: how
    /// much the group commit shared. For the spool benchmark and tests.
    pub fn dir_sync_counts(&self) -> (u64, u64) {
        self.dir_sync.as_ref().map_or((0, 0), DirSync::counts)
    }

    /// (segment fdatasyncs, appends they answered) so far, as [`Spool::dir_sync_counts`].
    pub fn segment_sync_counts(&self) -> (u64, u64) {
        self.segments.sync_counts()
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
        if self.small_in_segments && len <= HOLD {
            return self.append(&envelope.id, &parts);
        }
        let name = msg_name(&envelope.id);
        let tmp = self.queue.join(format!(".{name}.tmp"));
        let write = || {
            write_atomic_via(&tmp, &self.queue, &name, &parts, 0o600, self.fsync, || {
                self.full.check()
            })
        };
        match write() {
            // Out of space while a segment of delivered messages waits for more: give
            // it back and try once more, so an empty queue never refuses mail.
            Err(e) if is_out_of_space(&e) && self.segments.release_if_idle() > 0 => write(),
            other => other,
        }
    }

    /// Appends a small message to the segment log (the disk-full seam first, as a full
    /// disk would refuse the write), retrying once on a full disk after giving back an
    /// idle segment. Blocking.
    fn append(&self, id: &QueueId, parts: &[&[u8]]) -> io::Result<()> {
        self.full.check()?;
        match self.segments.append(id, parts) {
            Err(e) if is_out_of_space(&e) && self.segments.release_if_idle() > 0 => {
                tracing::info!("spool out of space: gave back a segment of delivered messages");
                self.segments.append(id, parts)
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

    /// A queued message's bytes, from its segment or its file. Blocking.
    pub fn read(&self, id: &QueueId) -> io::Result<SpooledMessage> {
        let (bytes, start) = self.read_stored(id)?;
        let (_, offset) = file::decode(&bytes[start..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(SpooledMessage {
            bytes,
            offset: start + offset,
        })
    }

    /// The stored form of `id` (file.rs) and where in the bytes it starts: its record in
    /// a segment, or its file.
    fn read_stored(&self, id: &QueueId) -> io::Result<(Vec<u8>, usize)> {
        match self.segments.read(id) {
            Some(record) => record,
            None => Ok((read_nofollow(&self.queue.join(msg_name(id)))?, 0)),
        }
    }

    pub fn save_state(&self, id: &QueueId, state: &DeliveryState) -> io::Result<()> {
        let json = serde_json::to_vec(state).map_err(io::Error::other)?;
        write_atomic(&self.queue, &state_name(id), &[&json], 0o600, self.fsync)
    }

    /// Removes a finished message. Losing this removal in a crash only means the message
    /// is delivered again (at least once), so nothing is fsynced here.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        match self.segments.remove(id) {
            Some(marked) => marked?,
            None => std::fs::remove_file(self.queue.join(msg_name(id)))?,
        }
        match std::fs::remove_file(self.queue.join(state_name(id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads every queued message's envelope and state, oldest first. Damaged files are
    /// moved aside to `corrupt/` and logged (damaged records were at open, recover.rs);
    /// they are never delivered and never stop the relay.
    pub fn load_all(&self) -> io::Result<Vec<QueuedMessage>> {
        let mut out = Vec::new();
        for id in self.segments.ids()? {
            match self.load_one(id.as_str()) {
                Ok(entry) => out.push(entry),
                Err(reason) => {
                    // Checked at open: the disk changed under it since. Not delivered.
                    tracing::error!(queue_id = %id, reason, "spool record unreadable; it will not be delivered")
                }
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.queue)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let Some(id) = name.strip_suffix(".msg") else {
                if let Some(id) = name.strip_suffix(".state") {
                    let queued = QueueId::try_from(id.to_string())
                        .is_ok_and(|id| self.segments.contains(&id));
                    let owner = self.segments.owned_here();
                    if owner && !queued && !names.contains(&format!("{id}.msg")) {
                        // The message was removed after delivery but its state was not.
                        // (Not by an attached reader: the relay may have queued it since
                        // the reader scanned its segments.)
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

    /// The ids of every queued message (in segments and in files), without reading them:
    /// for the queue gauges.
    pub fn queued_ids(&self) -> io::Result<Vec<QueueId>> {
        let mut ids = self.segments.ids()?;
        for entry in std::fs::read_dir(&self.queue)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".msg") {
                ids.extend(QueueId::try_from(id.to_string()).ok());
            }
        }
        Ok(ids)
    }

    fn load_one(&self, id: &str) -> Result<QueuedMessage, String> {
        let queue_id = QueueId::try_from(id.to_string())?;
        let (bytes, start) = self.read_stored(&queue_id).map_err(|e| e.to_string())?;
        let (envelope, _) = file::decode(&bytes[start..])?;
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

fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn msg_name(id: &QueueId) -> String {
    format!("{id}.msg")
}

fn state_name(id: &QueueId) -> String {
    format!("{id}.state")
}

#[cfg(test)]
mod segment_tests;
#[cfg(test)]
mod tests;
