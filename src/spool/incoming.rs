//! A message written into the spool while it arrives, so that a large message is never
//! held whole in memory. Its temp file is opened once the envelope is known (after the
//! header block), the message is appended in pieces, and [`Incoming::commit`] writes the
//! head it reserved, fsyncs, renames into the queue and fsyncs the directory: the same
//! steps as [`super::Spool::store`], so only after it returns Ok may the client get 250.
//! Dropped uncommitted (refused, tainted, disconnect, error) it removes its temp file:
//! nothing of such a message stays in the queue.

use super::file::ReservedHead;
use super::{msg_name, DiskFull, Envelope, Spool};
use crate::fsutil::sync_dir;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// The most tokio copies into its own buffer per write (the default is 2 MiB): about one
/// piece of output from the DATA reader, which the memory budget counts.
const WRITE_BUF: usize = 128 * 1024;

#[derive(Debug)]
pub struct Incoming {
    /// None only after a failed commit took it.
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    queue: PathBuf,
    name: String,
    head: ReservedHead,
    /// Message bytes written after the head.
    written: u64,
    fsync: bool,
    full: DiskFull,
    committed: bool,
}

impl Spool {
    /// Opens the temp file for `envelope`'s message; its `received`, `size` and
    /// `eight_bit` may still change before [`Incoming::commit`].
    pub async fn begin(&self, envelope: &Envelope) -> io::Result<Incoming> {
        let head = ReservedHead::for_envelope(envelope)?;
        let name = msg_name(&envelope.id);
        self.give_back_when_short().await;
        // A delivered message's file, when one is free, saves creating one (see recycle.rs).
        let tmp = self.queue.join(
            self.recycler
                .as_ref()
                .and_then(|r| r.take())
                .unwrap_or_else(|| format!(".{name}.tmp")),
        );
        let path = tmp.clone();
        let reserved = head.len();
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                // A symlink planted under the temp or `.free-N` name is not followed.
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            // A placeholder, overwritten in place at commit; the file is cut to length then.
            file.write_all_at(&vec![b' '; reserved], 0)?;
            Ok(file)
        })
        .await
        .map_err(io::Error::other)?;
        let mut incoming = Incoming {
            file: None,
            tmp,
            queue: self.queue.clone(),
            name,
            head,
            written: 0,
            fsync: self.fsync,
            full: self.full.clone(),
            committed: false,
        };
        let mut file = tokio::fs::File::from_std(file?);
        file.set_max_buf_size(WRITE_BUF);
        file.seek(io::SeekFrom::Start(reserved as u64)).await?;
        incoming.file = Some(file);
        Ok(incoming)
    }
}

/// Below this much free space (plus what the free files hold) the spool gives the free
/// files back before a message streams in. Its size is not known before it ends, so the
/// ENOSPC retry of `store` cannot be had here; a disk this short should not hoard files
/// for reuse anyway.
const SHORT_OF_SPACE: u64 = 32 << 20;

impl Spool {
    async fn give_back_when_short(&self) {
        let Some(recycler) = self.recycler.clone() else {
            return;
        };
        let held = recycler.held_bound();
        if held == 0 {
            return;
        }
        let queue = self.queue.clone();
        let freed = tokio::task::spawn_blocking(move || {
            let short = crate::fsutil::available_bytes(&queue)
                .is_ok_and(|free| free < SHORT_OF_SPACE.saturating_add(held));
            short.then(|| recycler.give_back(&queue))
        })
        .await;
        if let Ok(Some(n)) = freed {
            if n > 0 {
                tracing::info!(
                    files = n,
                    "spool short of space: freed the files kept for reuse"
                );
            }
        }
    }
}

impl Incoming {
    /// Appends message bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self.file.as_mut().ok_or_else(gone)?;
        file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
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
        let mut file = self.file.take().ok_or_else(gone)?;
        // Waits for the write in flight, so every byte is in the file before the head.
        file.flush().await?;
        let file = file.into_std().await;
        let (tmp, queue, name) = (self.tmp.clone(), self.queue.clone(), self.name.clone());
        let (fsync, full) = (self.fsync, self.full.clone());
        let len = head.len() as u64 + self.written;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.write_all_at(&head, 0)?;
            // A reused file may be longer than this message.
            file.set_len(len)?;
            full.check()?;
            if fsync {
                file.sync_all()?;
            }
            std::fs::rename(&tmp, queue.join(&name))?;
            if fsync {
                sync_dir(&queue)?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort, as in fsutil: a leftover temp file is removed at the next start.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the spool file was already closed")
}
