//! One segment of the log (segment.rs) on disk: its `.log` file of records (record.rs) and
//! its `.done` file of delivered queue ids, and their names. Below the index (index.rs),
//! the scan at start (recover.rs) and the log that appends (segment.rs), which all use it.

use super::dirsync::DirSync;
use super::record::{self, RECORD_HEADER};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub fn log_name(number: u64) -> String {
    format!("segment-{number}.log")
}

pub fn done_name(number: u64) -> String {
    format!("segment-{number}.done")
}

/// The number of a segment's log or mark file name.
pub fn number_of(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("segment-")?;
    let (n, is_log) = match rest.strip_suffix(".log") {
        Some(n) => (n, true),
        None => (rest.strip_suffix(".done")?, false),
    };
    n.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| n.parse().ok())?
        .map(|n| (n, is_log))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Segment {
    pub number: u64,
    pub salt: u64,
    pub file: File,
    pub queue: PathBuf,
    /// Group commit of this segment's fdatasync.
    pub sync: DirSync,
    /// The `.done` file, opened at the first mark.
    pub done: Mutex<Option<File>>,
}

impl Segment {
    /// Marks `line` (a queue id, or `@offset` of a damaged record) done. Not fsynced:
    /// see segment.rs's module comment.
    pub fn mark_done(&self, line: &str) -> io::Result<()> {
        let mut done = lock(&self.done);
        if done.is_none() {
            *done = Some(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(self.queue.join(done_name(self.number)))?,
            );
        }
        let file = done
            .as_mut()
            .ok_or_else(|| io::Error::other("no done file"))?;
        // One write() with O_APPEND: a line is never interleaved with another.
        file.write_all(format!("{line}\n").as_bytes())
    }

    /// Deletes the segment's files: the log first (see segment.rs's module comment).
    pub fn delete(&self) {
        tracing::debug!(
            segment = self.number,
            "every message in the segment delivered; deleting it"
        );
        for name in [log_name(self.number), done_name(self.number)] {
            match std::fs::remove_file(self.queue.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(file = %name, error = %e, "cannot delete a delivered segment")
                }
                _ => {}
            }
        }
    }

    /// The record at offset `at` with `len` payload bytes, checked: the record's bytes.
    pub fn read(&self, at: u64, len: u32) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; RECORD_HEADER + len as usize];
        self.file.read_exact_at(&mut bytes, at)?;
        match record::record_at(self.salt, &bytes) {
            Some(payload) if payload.end == bytes.len() => Ok(bytes),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the record at {at} of {} fails its checksum",
                    log_name(self.number)
                ),
            )),
        }
    }
}
