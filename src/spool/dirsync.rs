//! Group commit of an fsync: of the queue directory (a large message's rename into
//! `queue/`) or of a segment log (small messages appended to it, segment.rs). Each must be
//! durable before its 250, and one fsync makes durable everything done to that file before
//! the fsync began. So commits that finish their rename or append while another commit's
//! fsync runs wait for the next one and share it: under load one fsync answers many
//! messages, and a lone message still gets its own at once (no timer, no added latency).
//!
//! A waiter is released by the first fsync that *began* after its rename or write
//! (generation `started + 1` at the time it asked); a later one covers it too, so it is
//! released Ok if any fsync from its generation on succeeded, and with the error otherwise.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Clone, Default)]
pub struct DirSync {
    inner: Arc<Inner>,
    counts: Arc<SyncCounts>,
}

/// fsyncs run and commits they answered: for the spool benchmark and tests. Shared by the
/// group syncs of every segment, so the figure outlives a segment deleted after delivery.
#[derive(Debug, Default)]
pub struct SyncCounts {
    syncs: AtomicU64,
    commits: AtomicU64,
}

impl SyncCounts {
    pub fn get(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Generations of fsyncs begun and finished; one runs at a time.
    started: u64,
    finished: u64,
    running: bool,
    /// The last generation that succeeded, and the error of the last that failed.
    last_ok: u64,
    last_error: Option<(io::ErrorKind, String)>,
}

impl DirSync {
    /// Makes durable every entry renamed into `dir` before this call. Blocking: called
    /// from the blocking pool, as the rest of a commit is.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        self.run("of the queue directory", || crate::fsutil::sync_dir(dir))
    }

    /// A group sync whose counts add to `counts`.
    pub fn counting_in(counts: Arc<SyncCounts>) -> DirSync {
        DirSync {
            inner: Arc::default(),
            counts,
        }
    }

    /// Runs `fsync` (which makes durable everything done before it began) once for this
    /// caller and every caller waiting with it; `what` names it in an error. Blocking.
    pub fn run(&self, what: &str, fsync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        self.counts.commits.fetch_add(1, Ordering::Relaxed);
        // An fsync already running may have begun before this caller's rename.
        let needed = state.started + 1;
        loop {
            if state.finished >= needed {
                if state.last_ok >= needed {
                    return Ok(());
                }
                let (kind, message) = state
                    .last_error
                    .clone()
                    .unwrap_or((io::ErrorKind::Other, "failed".into()));
                return Err(io::Error::new(kind, format!("fsync {what}: {message}")));
            }
            if state.running {
                state = inner.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            self.counts.syncs.fetch_add(1, Ordering::Relaxed);
            let generation = state.started;
            drop(state);
            let result = fsync();
            state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            state.finished = generation;
            match result {
                Ok(()) => state.last_ok = generation,
                Err(e) => state.last_error = Some((e.kind(), e.to_string())),
            }
            inner.done.notify_all();
        }
    }

    /// (directory fsyncs run, commits answered by them) since the spool was opened.
    pub fn counts(&self) -> (u64, u64) {
        self.counts.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_commit_gets_its_own_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DirSync::default();
        for _ in 0..3 {
            sync.sync(dir.path()).unwrap();
        }
        assert_eq!(sync.counts(), (3, 3));
    }

    #[test]
    fn a_failed_fsync_is_reported_to_the_commits_it_covered() {
        let sync = DirSync::default();
        let err = sync.sync(Path::new("/nonexistent/queue")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("queue directory"), "{err}");
        // The next commit is not answered by the old failure: it runs its own fsync.
        let dir = tempfile::tempdir().unwrap();
        sync.sync(dir.path()).unwrap();
    }

    #[test]
    fn concurrent_commits_share_fsyncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DirSync::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        sync.sync(dir.path()).unwrap();
                    }
                });
            }
        });
        let (syncs, commits) = sync.counts();
        assert_eq!(commits, 400);
        assert!(syncs <= commits);
    }
}
