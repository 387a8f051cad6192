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
            // A symlink planted under the temp name (or a recycled `.free-N`) must not
            // make the relay write a message or state through it to another file.
            .custom_flags(libc::O_NOFOLLOW)
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

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes only into `stat`, a plain C struct that may start zeroed;
    // `path` is a NUL-terminated string that outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 here; narrower on 32-bit targets, hence the conversion.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// Reads a whole file, refusing a symlink (ELOOP): a link planted in the queue must not
/// make the relay load, and deliver, a file from elsewhere on the host.
pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink under the temp name or the final name is neither written nor read through.
    #[test]
    fn symlinks_in_the_queue_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let queue = dir.path().join("queue");
        std::fs::create_dir(&queue).unwrap();
        let tmp = queue.join(".free-0");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let r = write_atomic_via(&tmp, &queue, "A.msg", &[b"attacker"], 0o600, false, || {
            Ok(())
        });
        assert!(r.is_err(), "wrote through a symlink");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::os::unix::fs::symlink(&victim, queue.join("B.msg")).unwrap();
        assert!(
            read_nofollow(&queue.join("B.msg")).is_err(),
            "read through a symlink"
        );
        std::fs::write(queue.join("C.msg"), "mail").unwrap();
        assert_eq!(read_nofollow(&queue.join("C.msg")).unwrap(), b"mail");
    }
}
