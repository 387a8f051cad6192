//! A message written into the spool while it arrives, so that a large message is never
//! held whole in memory. The message is appended in pieces after the envelope is known
//! (after the header block), and [`Incoming::commit`] makes it durable the way
//! [`super::Spool::store`] does, so only after it returns Ok may the client get 250.
//!
//! The first [`HOLD`] bytes are held in memory and a temp file is opened only when the
//! message outgrows them. A small message (most mail) is then appended to the segment log
//! at commit (segment.rs) in one trip to the blocking pool, instead of one trip for opening,
//! one per write and one for the commit; each trip wakes a thread, and those wake-ups cost
//! more CPU than the writes. A larger one is finished in its temp file: the head it
//! reserved written, fsync, rename into the queue, fsync of the directory (that last one
//! shared with the commits running at the same time, see dirsync.rs). The held bytes take
//! the place of the file write in flight in the transfer's memory budget
//! (`TRANSFER_BASE`), so a transfer holds no more than before.
//!
//! Dropped uncommitted (refused, tainted, disconnect, error) it removes its temp file if
//! it had one: nothing of such a message stays in the queue.

use super::dirsync::DirSync;
use super::file::ReservedHead;
use super::{msg_name, DiskFull, Envelope, Spool};
use crate::fsutil::sync_dir;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// The most tokio copies into its own buffer per write (the default is 2 MiB): about one
/// piece of output from the DATA reader, which the memory budget counts.
const WRITE_BUF: usize = 128 * 1024;

/// Message bytes held in memory before the temp file is opened (at most the write in
/// flight the budget counts); a message no longer than this goes to the segment log.
pub const HOLD: usize = 64 * 1024;

#[derive(Debug)]
pub struct Incoming {
    bytes: Bytes,
    /// The temp file once it exists; removed when dropped uncommitted.
    tmp: Option<PathBuf>,
    queue: PathBuf,
    name: String,
    head: ReservedHead,
    /// Message bytes written after the head.
    written: u64,
    fsync: bool,
    full: DiskFull,
    dir_sync: Option<DirSync>,
    /// The spool, for the segment log (a small message) and its space (a large one).
    spool: Spool,
    committed: bool,
}

/// Where the message bytes written so far are.
#[derive(Debug)]
enum Bytes {
    /// In memory, no file yet (at most [`HOLD`] bytes).
    Held(Vec<u8>),
    /// In the temp file, written after the reserved head.
    File(tokio::fs::File),
    /// Taken by a failed write or commit.
    Gone,
}

impl Spool {
    /// Starts `envelope`'s message; its `received`, `size` and `eight_bit` may still
    /// change before [`Incoming::commit`]. No file is touched until the message outgrows
    /// [`HOLD`] bytes or is committed.
    pub async fn begin(&self, envelope: &Envelope) -> io::Result<Incoming> {
        Ok(Incoming {
            bytes: Bytes::Held(Vec::new()),
            tmp: None,
            queue: self.queue.clone(),
            name: msg_name(&envelope.id),
            head: ReservedHead::for_envelope(envelope)?,
            written: 0,
            fsync: self.fsync,
            full: self.full.clone(),
            dir_sync: self.dir_sync.clone(),
            spool: self.clone(),
            committed: false,
        })
    }
}

/// Below this much free space (plus what an idle segment holds) the spool gives back the
/// current segment, when all its messages are delivered, before a large message's file is
/// opened. A streamed message's size is not known before it ends, so the ENOSPC retry of
/// `store` cannot be had here; a disk this short should not keep delivered mail anyway.
const SHORT_OF_SPACE: u64 = 32 << 20;

/// Gives back an idle segment when the disk is short of space. Blocking.
fn give_back_when_short(spool: &Spool) {
    let held = spool.segments.idle_bytes();
    if held == 0 {
        return;
    }
    let short = crate::fsutil::available_bytes(&spool.queue)
        .is_ok_and(|free| free < SHORT_OF_SPACE.saturating_add(held));
    if short && spool.segments.release_if_idle() > 0 {
        tracing::info!("spool short of space: gave back a segment of delivered messages");
    }
}

/// Opens the temp file `.<name>.tmp` for a large message. Blocking. Returns its path.
fn open_temp(spool: &Spool, name: &str) -> io::Result<(std::fs::File, PathBuf)> {
    give_back_when_short(spool);
    let tmp = spool.queue.join(format!(".{name}.tmp"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        // Ids are unique and leftovers are removed at start; truncating anyway means the
        // file holds exactly what this commit writes.
        .truncate(true)
        .mode(0o600)
        // A symlink planted under the temp name is not followed.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    Ok((file, tmp))
}

/// What a commit does once every byte is in the file: fsync its data, rename it into the
/// queue, and make the rename durable. Blocking.
struct Finish {
    queue: PathBuf,
    name: String,
    fsync: bool,
    full: DiskFull,
    dir_sync: Option<DirSync>,
}

impl Finish {
    fn run(&self, file: &std::fs::File, tmp: &Path) -> io::Result<()> {
        self.full.check()?;
        if self.fsync {
            // fdatasync: the data and what is needed to read it back (the size, the
            // block map); the timestamps it skips matter to no reader.
            file.sync_data()?;
        }
        std::fs::rename(tmp, self.queue.join(&self.name))?;
        // The rename is durable once an fsync of the directory begun after it has
        // finished; concurrent commits share one (dirsync.rs).
        match (self.fsync, &self.dir_sync) {
            (false, _) => Ok(()),
            (true, Some(group)) => group.sync(&self.queue),
            (true, None) => sync_dir(&self.queue),
        }
    }
}

impl Incoming {
    /// Appends message bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Bytes::Held(held) = &mut self.bytes {
            let needed = held.len() + bytes.len();
            if needed <= HOLD {
                if needed > held.capacity() {
                    // Doubling, but never past HOLD (the budget counts no more).
                    let room = needed.next_power_of_two().min(HOLD);
                    held.reserve_exact(room - held.len());
                }
                held.extend_from_slice(bytes);
                self.written += bytes.len() as u64;
                return Ok(());
            }
            let file = self.open_file().await?;
            self.bytes = Bytes::File(file);
        }
        let Bytes::File(file) = &mut self.bytes else {
            return Err(gone());
        };
        file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Opens the temp file for a message that outgrew [`HOLD`] and writes the held bytes
    /// after a placeholder for the head (overwritten in place at commit).
    async fn open_file(&mut self) -> io::Result<tokio::fs::File> {
        let Bytes::Held(held) = std::mem::replace(&mut self.bytes, Bytes::Gone) else {
            return Err(gone());
        };
        let (spool, name) = (self.spool.clone(), self.name.clone());
        let reserved = self.head.len();
        let (file, tmp) = tokio::task::spawn_blocking(move || {
            let (file, tmp) = open_temp(&spool, &name)?;
            let written = file
                .write_all_at(&vec![b' '; reserved], 0)
                .and_then(|()| file.write_all_at(&held, reserved as u64));
            match written {
                Ok(()) => Ok((file, tmp)),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        })
        .await
        .map_err(io::Error::other)??;
        self.tmp = Some(tmp);
        let mut file = tokio::fs::File::from_std(file);
        file.set_max_buf_size(WRITE_BUF);
        file.seek(io::SeekFrom::Start(reserved as u64 + self.written))
            .await?;
        Ok(file)
    }

    /// Message bytes written so far: the `size` the envelope must carry at commit.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the message durable in the queue under its id.
    pub async fn commit(mut self, envelope: &Envelope) -> io::Result<()> {
        if envelope.size != self.written || msg_name(&envelope.id) != self.name {
            return Err(io::Error::other(
                "envelope does not describe the message written",
            ));
        }
        let head = self.head.fill(envelope)?;
        let finish = Finish {
            queue: self.queue.clone(),
            name: self.name.clone(),
            fsync: self.fsync,
            full: self.full.clone(),
            dir_sync: self.dir_sync.clone(),
        };
        match std::mem::replace(&mut self.bytes, Bytes::Gone) {
            Bytes::Held(held) if self.spool.small_in_segments => {
                // The whole message is here: appended to the segment log in one trip.
                let (spool, id) = (self.spool.clone(), envelope.id.clone());
                tokio::task::spawn_blocking(move || spool.append(&id, &[&head, &held]))
                    .await
                    .map_err(io::Error::other)??;
            }
            Bytes::Held(held) => {
                // A file per message (the spool benchmark's baseline): open, write, fsync
                // and rename in one trip.
                let spool = self.spool.clone();
                tokio::task::spawn_blocking(move || -> io::Result<()> {
                    let (file, tmp) = open_temp(&spool, &finish.name)?;
                    let result = file
                        .write_all_at(&head, 0)
                        .and_then(|()| file.write_all_at(&held, head.len() as u64))
                        .and_then(|()| finish.run(&file, &tmp));
                    if result.is_err() {
                        // Best effort; a leftover is removed at the next start. After a
                        // failed rename the file is still under its temp name.
                        let _ = std::fs::remove_file(&tmp);
                    }
                    result
                })
                .await
                .map_err(io::Error::other)??;
            }
            Bytes::File(mut file) => {
                // Waits for the write in flight, so every byte is in the file before the head.
                file.flush().await?;
                let file = file.into_std().await;
                let tmp = self.tmp.clone().ok_or_else(gone)?;
                tokio::task::spawn_blocking(move || -> io::Result<()> {
                    file.write_all_at(&head, 0)?;
                    finish.run(&file, &tmp)
                })
                .await
                .map_err(io::Error::other)??;
            }
            Bytes::Gone => return Err(gone()),
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let (false, Some(tmp)) = (self.committed, &self.tmp) {
            // Best effort, as in fsutil: a leftover temp file is removed at the next start.
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the spool file was already closed")
}
