//! Durable file writes shared by the spool and the key store.
//!
//! A file that other code may read must never be seen half-written: write a temporary
//! file in the same directory, fsync it, rename it over the final name, then fsync the
//! directory so the rename itself survives a power cut.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes the concatenation of `parts` to `dir/name` atomically with the given Unix mode.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    mode: u32,
    fsync: bool,
) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    write_atomic_via(&tmp, dir, name, parts, mode, fsync, || Ok(()))
}

/// [`write_atomic`] through the temporary file `tmp` (in
/// `dir`), with `check` run after the bytes are written and before the rename (the spool's
/// fault-injection seam, so tests reach the real clean-up path). `tmp` may already exist:
/// it is overwritten from the start and cut to length, so an old file can be reused
/// without the cost of creating one (see the spool's recycling).
pub fn write_atomic_via(
    tmp: &Path,
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    mode: u32,
    fsync: bool,
    check: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(tmp)?;
        let mut len = 0;
        for part in parts {
            file.write_all(part)?;
            len += part.len() as u64;
        }
        // Overwriting in place keeps the file's blocks; only a longer old file is cut.
        file.set_len(len)?;
        check()?;
        if fsync {
            file.sync_all()?;
        }
        std::fs::rename(tmp, dir.join(name))?;
        if fsync {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) with the given mode if it does not exist.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}
