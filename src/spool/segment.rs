//! The segment log: small messages (whole in memory at commit, most mail) are appended to
//! `queue/segment-<n>.log` instead of getting a file each. Creating and deleting a file per
//! message was most of the relay's CPU besides signing (inode allocation on ext4, the queue
//! directory's lock, a rename and a directory fsync per message); an append is one pwrite
//! and a share of one fdatasync (dirsync.rs's group commit), so under load many messages
//! get their 250 from one fdatasync.
//!
//! An append takes its offset and writes under the log's lock (so the file is always a
//! contiguous run of records, and every record written before a record that got its 250 is
//! covered by the same fdatasync), then waits for an fdatasync begun after its write. A new
//! segment's header is fdatasynced and the directory fsynced once, before any record in it.
//! Each start appends to a new segment, never after what a crash may have torn.
//!
//! Delivered messages are marked in `segment-<n>.done` (their ids, one a line) without an
//! fsync: a write() survives a process restart, and losing it to a power cut only means the
//! message is delivered again (at least once, as the file spool's remove). Marks live with
//! their own segment; a segment no longer appended to whose messages are all delivered is
//! deleted, log first, so a crash in between leaves a `.done` without a log (removed at the
//! next start), never a log without its marks.

use super::dirsync::{DirSync, SyncCounts};
use super::index::{Log, Open, Place};
use super::record::{self, RECORD_HEADER, SEGMENT_HEADER};
use super::segment_file::{log_name, Segment};
use super::QueueId;
use crate::fsutil::sync_dir;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A segment takes no more records once it is this long; the next append starts another.
/// Big enough that creating one (a file and a directory fsync) is rare, small enough that
/// one slow message keeps little disk from being given back.
pub const ROTATE_AT: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct Segments {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: PathBuf,
    fsync: bool,
    /// The relay's own spool (or the `queue` CLI's while it holds the spool lock), which
    /// appends, quarantines and deletes. An attached spool (`queue show`, maybe while a
    /// relay runs) reads, rescanning at each use; it never appends or deletes.
    owner: bool,
    log: Mutex<Log>,
    /// fdatasyncs of segments and the commits they answered.
    counts: Arc<SyncCounts>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Segments {
    /// The relay's log over `queue`, with what `log` (recover.rs) found there.
    pub(super) fn owned(queue: &Path, fsync: bool, log: Log, counts: Arc<SyncCounts>) -> Self {
        Segments {
            inner: Arc::new(Inner {
                queue: queue.to_path_buf(),
                fsync,
                owner: true,
                log: Mutex::new(log),
                counts,
            }),
        }
    }

    /// A reader of the segments in `queue`, which scans them when used.
    pub fn attached(queue: &Path) -> Self {
        Segments {
            inner: Arc::new(Inner {
                queue: queue.to_path_buf(),
                fsync: false,
                owner: false,
                log: Mutex::new(Log::default()),
                counts: Arc::default(),
            }),
        }
    }

    /// Whether this is the owner's log, not an attached reader's.
    pub fn owned_here(&self) -> bool {
        self.inner.owner
    }

    pub fn sync_counts(&self) -> (u64, u64) {
        self.inner.counts.get()
    }

    /// The index, rescanned first for an attached reader (a relay may have appended).
    fn log(&self) -> io::Result<MutexGuard<'_, Log>> {
        let mut log = lock(&self.inner.log);
        if !self.inner.owner {
            *log = super::recover::read_only(&self.inner.queue)?;
        }
        Ok(log)
    }

    /// Appends a message (its `.msg` file's bytes, in parts) and returns once it is durable.
    /// Blocking. Only after Ok may the client get 250.
    pub fn append(&self, id: &QueueId, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let Some(len32) = u32::try_from(len)
            .ok()
            .filter(|&l| l as usize <= record::MAX_PAYLOAD)
        else {
            return Err(io::Error::other("message too large for the segment log"));
        };
        if !self.inner.owner {
            return Err(io::Error::other("an attached spool does not append"));
        }
        // The record, all but its header (which needs the segment's salt), is built
        // outside the lock.
        let crc = record::payload_crc(parts);
        let mut bytes = Vec::with_capacity(RECORD_HEADER + len);
        bytes.resize(RECORD_HEADER, 0);
        for part in parts {
            bytes.extend_from_slice(part);
        }
        let seg = {
            let mut log = lock(&self.inner.log);
            if log.index.contains_key(id) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("queue id {id} is already in the spool"),
                ));
            }
            let number = self.current_for(&mut log, bytes.len() as u64)?;
            let Some(open) = log.segments.get_mut(&number) else {
                return Err(io::Error::other("the current segment is not open"));
            };
            bytes[..RECORD_HEADER].copy_from_slice(&record::record_header(
                open.seg.salt,
                len32,
                &crc,
            ));
            if let Err(e) = open.seg.file.write_all_at(&bytes, open.end) {
                // A partial record is cut off, so the next one follows the last whole one.
                let _ = open.seg.file.set_len(open.end);
                return Err(e);
            }
            let place = Place {
                segment: number,
                at: open.end,
                len: len32,
            };
            open.end += bytes.len() as u64;
            // Counted live before its fdatasync: a rotation meanwhile must not delete it.
            open.live += 1;
            let seg = open.seg.clone();
            log.index.insert(id.clone(), place);
            seg
        };
        if self.inner.fsync {
            let synced = seg
                .sync
                .run("of the spool segment", || seg.file.sync_data());
            if let Err(e) = synced {
                // Never answered 250: marked done so a copy that reached the disk anyway is
                // not delivered after a restart; and no more appends to a file whose
                // fdatasync failed (its pages may be lost without a later error).
                let mut log = lock(&self.inner.log);
                if log.current == Some(seg.number) {
                    log.current = None;
                }
                drop(log);
                let _ = self.remove(id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The segment to append `need` bytes to, starting a new one when there is none or the
    /// current one is full. Called under the log's lock: a new segment is rare (once per
    /// [`ROTATE_AT`] bytes), and no append may go into it before it is durable.
    fn current_for(&self, log: &mut Log, need: u64) -> io::Result<u64> {
        if let Some(n) = log.current {
            if let Some(open) = log.segments.get(&n) {
                if open.end + need <= ROTATE_AT || open.end == SEGMENT_HEADER as u64 {
                    return Ok(n);
                }
            }
            log.current = None;
            if log.segments.get(&n).is_some_and(|o| o.live == 0) {
                if let Some(open) = log.segments.remove(&n) {
                    open.seg.delete();
                }
            }
        }
        let seg = loop {
            let number = log.next;
            log.next += 1;
            match self.create(number) {
                // A file under that name (restored from a backup, or one a power cut
                // brought back): never written into; the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => break other?,
            }
        };
        let number = seg.number;
        tracing::debug!(segment = number, "starting a new spool segment");
        log.segments.insert(
            number,
            Open {
                seg: Arc::new(seg),
                live: 0,
                end: SEGMENT_HEADER as u64,
            },
        );
        log.current = Some(number);
        Ok(number)
    }

    /// Creates segment `number` with its header, durable (data and directory entry).
    fn create(&self, number: u64) -> io::Result<Segment> {
        let path = self.inner.queue.join(log_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let mut salt = [0u8; 8];
        // Without randomness the salt is only weaker against a forged embedded record
        // (record.rs); the log still works.
        let _ = getrandom::fill(&mut salt);
        let salt = u64::from_le_bytes(salt);
        let made = file
            .write_all_at(&record::segment_header(salt), 0)
            .and_then(|()| {
                if self.inner.fsync {
                    file.sync_data()?;
                    sync_dir(&self.inner.queue)?;
                }
                Ok(())
            });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            number,
            salt,
            file,
            queue: self.inner.queue.clone(),
            sync: DirSync::counting_in(self.inner.counts.clone()),
            done: Mutex::new(None),
        })
    }

    /// The record of `id` (bytes, offset of the `.msg` bytes in them), or None when `id`
    /// is in no segment. Blocking.
    pub fn read(&self, id: &QueueId) -> Option<io::Result<(Vec<u8>, usize)>> {
        let (seg, place) = match self.log() {
            Ok(log) => {
                let place = *log.index.get(id)?;
                (log.segments.get(&place.segment)?.seg.clone(), place)
            }
            Err(e) => return Some(Err(e)),
        };
        Some(
            seg.read(place.at, place.len)
                .map(|bytes| (bytes, RECORD_HEADER)),
        )
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        lock(&self.inner.log).index.contains_key(id)
    }

    /// Every queued message in a segment, for `load_all`.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        Ok(self.log()?.index.keys().cloned().collect())
    }

    /// Marks `id` delivered, and deletes its segment when that was its last message and it
    /// is no longer appended to. None when `id` is in no segment. Blocking.
    pub fn remove(&self, id: &QueueId) -> Option<io::Result<()>> {
        let (seg, delete) = {
            let mut log = match self.log() {
                Ok(log) => log,
                Err(e) => return Some(Err(e)),
            };
            let place = log.index.remove(id)?;
            let current = log.current;
            let open = log.segments.get_mut(&place.segment)?;
            open.live = open.live.saturating_sub(1);
            let seg = open.seg.clone();
            let delete = self.inner.owner && open.live == 0 && current != Some(place.segment);
            if delete {
                log.segments.remove(&place.segment);
            }
            (seg, delete)
        };
        if delete {
            seg.delete();
            return Some(Ok(()));
        }
        Some(seg.mark_done(id.as_str()))
    }

    /// Bytes held by the current segment when every message in it is delivered: what
    /// [`Segments::release_if_idle`] would give back.
    pub fn idle_bytes(&self) -> u64 {
        let log = lock(&self.inner.log);
        log.current
            .and_then(|n| log.segments.get(&n))
            .filter(|open| open.live == 0)
            .map_or(0, |open| open.end)
    }

    /// Deletes the current segment if every message in it is delivered (the next append
    /// starts a new one), for a disk short of space: delivered mail must never be why the
    /// spool refuses new mail. Returns the bytes given back.
    pub fn release_if_idle(&self) -> u64 {
        let mut log = lock(&self.inner.log);
        let Some(n) = log.current else { return 0 };
        if log.segments.get(&n).is_none_or(|open| open.live != 0) {
            return 0;
        }
        log.current = None;
        let Some(open) = log.segments.remove(&n) else {
            return 0;
        };
        drop(log);
        open.seg.delete();
        open.end
    }
}
