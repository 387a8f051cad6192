//! Group commit of the queue directory's fsync. Every message's rename into `queue/` must
//! be durable before its 250, and one fsync of the directory makes durable every rename
//! done before that fsync began. So commits that finish their rename while another
//! commit's directory fsync runs wait for the next one and share it: under load one fsync
//! answers many messages, and a lone message still gets its own at once (no timer, no
//! added latency). Each message's data is still fsynced on its own before its rename.
//!
//! A waiter is released by the first fsync that *began* after its rename (generation
//! `started + 1` at the time it asked); a later one covers it too, so it is released Ok
//! if any fsync from its generation on succeeded, and with the error otherwise.

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Clone, Default)]
pub struct DirSync {
    inner: Arc<Inner>,
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
    /// fsyncs run and commits they answered: for the spool benchmark and tests.
    syncs: u64,
    commits: u64,
}

impl DirSync {
    /// Makes durable every entry renamed into `dir` before this call. Blocking: called
    /// from the blocking pool, as the rest of a commit is.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.commits += 1;
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
                return Err(io::Error::new(
                    kind,
                    format!("fsync of the queue directory: {message}"),
                ));
            }
            if state.running {
                state = inner.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            state.syncs += 1;
            let generation = state.started;
            drop(state);
            let result = crate::fsutil::sync_dir(dir);
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
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.syncs, state.commits)
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
