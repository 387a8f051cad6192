//! Reuse of spool files. Creating a file costs more than overwriting one (ext4 searches for
//! a free inode and skips recently freed ones), so the file of a delivered message is
//! renamed to a hidden `.free-N` name instead of being deleted, and the next message is
//! written into it: overwritten from the start, cut to length, fsynced and renamed into
//! place like a new temp file. Only small files are kept, and only a bounded number, so
//! the spool never holds much disk for messages already gone; when a write runs out of
//! space they are all given back and the write is tried again. Free files are deleted at
//! start; a crash in the middle of a reuse leaves one, which never got its 250.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Files larger than this are deleted, not kept.
const MAX_KEPT_SIZE: u64 = 64 * 1024;
/// At most this many free files wait for reuse (about the number of concurrent writers).
const MAX_KEPT: usize = 128;
const PREFIX: &str = ".free-";

#[derive(Debug, Clone, Default)]
pub struct Recycler {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    free: Mutex<Vec<String>>,
    next: AtomicU64,
}

pub fn is_free_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

impl Recycler {
    /// A free file's name (in the queue folder) to write the next message into.
    pub fn take(&self) -> Option<String> {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    /// The name under which the finished message file at `path` may be kept, or None when
    /// it should be deleted. The name becomes reusable only through [`Recycler::kept`],
    /// after the rename: handing it out earlier would let a writer create a file under it
    /// that the rename then replaces.
    pub fn name_for(&self, path: &Path) -> Option<String> {
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_KEPT_SIZE);
        let room = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            < MAX_KEPT;
        (small && room).then(|| {
            format!(
                "{PREFIX}{}",
                self.inner.next.fetch_add(1, Ordering::Relaxed)
            )
        })
    }

    /// Deletes every free file waiting for reuse; returns how many. Called when a write
    /// ran out of space: disk held for messages already delivered must never be the
    /// reason the spool refuses a new one.
    pub fn give_back(&self, dir: &Path) -> usize {
        let names = std::mem::take(&mut *self.inner.free.lock().unwrap_or_else(|e| e.into_inner()));
        for name in &names {
            let _ = std::fs::remove_file(dir.join(name));
        }
        names.len()
    }

    /// The most disk the free files can hold (each is at most `MAX_KEPT_SIZE`).
    pub fn held_bound(&self) -> u64 {
        let n = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        n as u64 * MAX_KEPT_SIZE
    }

    /// The file renamed to `name` is ready for reuse.
    pub fn kept(&self, name: String) {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
    }
}
