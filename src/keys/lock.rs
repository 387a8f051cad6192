//! The key store lock. The CLI, a running relay and other relays sharing the store take
//! it (an exclusive `flock` on `<keys dir>/.lock`) around every read-modify-write of a
//! state file, so none of them acts on a half-done rotation.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Held while it lives; the lock is released when the file is closed.
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Waits for the lock (blocking).
    pub fn acquire(dir: &Path) -> io::Result<StoreLock> {
        crate::fsutil::ensure_dir(dir, 0o700)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        file.lock()?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).unwrap();
        let other = File::open(dir.path().join(".lock")).unwrap();
        assert!(other.try_lock().is_err(), "lock not exclusive");
        drop(first);
        assert!(other.try_lock().is_ok());
    }
}
