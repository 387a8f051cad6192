//! Delivery without an upstream: each signed message is written to the outbox directory
//! as `<queue id>.eml`, exactly the bytes an upstream would receive (before dot-stuffing).
//! This is how the relay runs on a laptop with no provider account.

use crate::fsutil::{ensure_dir, write_atomic};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    fsync: bool,
}

impl Outbox {
    pub fn open(dir: &Path, fsync: bool) -> std::io::Result<Outbox> {
        ensure_dir(dir, 0o755)?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
            fsync,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the message (given as consecutive parts: signatures, then the message)
    /// atomically; readers only ever see complete `.eml` files.
    pub fn write(&self, id: &str, parts: &[&[u8]]) -> std::io::Result<PathBuf> {
        let name = format!("{id}.eml");
        write_atomic(&self.dir, &name, parts, 0o644, self.fsync)?;
        Ok(self.dir.join(name))
    }
}
