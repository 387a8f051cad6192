//! The reports on disk: one JSON file per report in `<spool dir>/dmarc/`, named by a hash
//! of (reporter, report id), so a report imported twice (the same mail fetched again, a
//! Maildir read twice) is stored once and the second import says so.
//!
//! Plain files rather than an embedded database: `dmarc import` (one process, often run
//! by fetchmail or procmail) writes while the running relay reads for `/metrics`, and the
//! embedded stores that are well kept (redb, sled) allow one process at a time; a report
//! is written once and never changed, which is what [`crate::fsutil::write_atomic`]
//! already does safely; the volume is a few reports per receiver per day; and an operator
//! can read, back up or delete them with ordinary tools. The spool folder holds them
//! because it is the relay's one writable, persistent state folder in every deployment
//! (systemd's StateDirectory, the compose and Kubernetes volumes); the key store may be a
//! read-only shared mount.

use super::{Feedback, ImportError, Limits};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A stored report with when it was imported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// Unix seconds.
    pub imported: u64,
    pub report: Feedback,
}

/// What storing one report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    /// This reporter's report with this id was already stored.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the relay configured by `config`.
    pub fn of(config: &Config) -> Store {
        Store::new(&config.spool.dir.join("dmarc"))
    }

    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name for a report: 32 hex digits of SHA-256 over the reporter (lower case)
    /// and the report id, so any bytes in either make a safe name.
    fn file_name(report: &Feedback) -> String {
        let key = format!("{}\n{}", report.org_name.to_lowercase(), report.report_id);
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{hex}.json")
    }

    /// Stores `report` unless it is there already. Refuses when the disk would be left
    /// with less than `min_free_disk`.
    pub fn add(
        &self,
        report: &Feedback,
        now: u64,
        limits: &Limits,
    ) -> Result<Outcome, ImportError> {
        crate::fsutil::ensure_dir(&self.dir, 0o700)?;
        let name = Self::file_name(report);
        if self.dir.join(&name).exists() {
            return Ok(Outcome::Duplicate);
        }
        let bytes = serde_json::to_vec(&Stored {
            imported: now,
            report: report.clone(),
        })
        .map_err(std::io::Error::other)?;
        let free = crate::fsutil::available_bytes(&self.dir)?;
        if free < limits.min_free_disk.saturating_add(bytes.len() as u64) {
            return Err(ImportError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{} has {free} bytes free; reports are not stored below {} free, to leave room for the spool",
                    self.dir.display(),
                    limits.min_free_disk
                ),
            )));
        }
        crate::fsutil::write_atomic(&self.dir, &name, &[&bytes], 0o600, true)?;
        Ok(Outcome::Added)
    }

    /// Every stored report, and a sentence for each file that cannot be read.
    pub fn load_all(&self) -> (Vec<Stored>, Vec<String>) {
        let mut reports = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (reports, problems);
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match crate::fsutil::read_nofollow(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Stored>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => reports.push(s),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        (reports, problems)
    }

    /// The folder's modification time (changes when a report is added), for readers that
    /// keep a summary and re-read only after an import.
    pub fn changed_at(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok()
    }
}
