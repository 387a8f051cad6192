//! Hot reload: the running relay notices changes to the key store and its config file and
//! applies them without a restart. Directories are watched (editors and Kubernetes mounts
//! replace files rather than edit them), and a periodic re-check covers filesystems where
//! events do not arrive.

use crate::config::Config;
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How often files are compared even without events.
pub const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// Starts watching `dirs`; a message arrives on the returned channel after each burst of
/// changes. The returned guard stops watching when dropped.
/// Also returns a sender of the same wake-ups, for a reload asked by signal.
pub fn watch(
    dirs: &[PathBuf],
) -> Result<
    (
        impl Send,
        mpsc::UnboundedSender<()>,
        mpsc::UnboundedReceiver<()>,
    ),
    String,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    let wake = tx.clone();
    let mut debouncer = new_debouncer(
        Duration::from_millis(300),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            if result.is_ok() {
                let _ = tx.send(());
            }
        },
    )
    .map_err(|e| format!("file watcher: {e}"))?;
    for dir in dirs {
        debouncer
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    Ok((debouncer, wake, rx))
}

/// A cheap summary of the key store (names, sizes, modification times), to tell whether
/// anything changed since the last look.
pub fn store_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Re-reads the config file. `Ok(None)` when its text has not changed.
pub fn reread_config(path: &Path, last_text: &mut String) -> Result<Option<Config>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text == *last_text {
        return Ok(None);
    }
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    *last_text = text;
    Ok(Some(config))
}

/// What changed that only a restart applies (the listener and sessions keep their settings).
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if format!("{:?}", old.smtp) != format!("{:?}", new.smtp) {
        out.push("smtp");
    }
    if format!("{:?}", old.spool) != format!("{:?}", new.spool) {
        out.push("spool");
    }
    if format!("{:?}", old.delivery) != format!("{:?}", new.delivery) {
        out.push("delivery");
    }
    if format!("{:?}", old.upstream) != format!("{:?}", new.upstream) {
        out.push("upstream");
    }
    if old.keys.dir != new.keys.dir {
        out.push("keys.dir");
    }
    out
}
