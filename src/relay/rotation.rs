//! Rotation inside the running relay: the scheduler (a run at start, right after the
//! listener is up, then every `rotation.check_every` and when woken) and the jobs the
//! control socket hands over (`keys rotate --emergency`, `keys publish`). Hooks and DNS
//! lookups run here, never before the listener: a slow hook or a frozen DNS server never
//! delays accepting mail.

use super::reload::{load_keys, Reloader};
use crate::config::Config;
use crate::rotation::trigger::JobReceiver;
use crate::rotation::Rotator;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// A rotator for the relay's current config that swaps the signing keys the moment a
/// new key is activated (before any replaced key can be retired or revoked).
fn relay_rotator(config: &Arc<Config>, reloader: &Reloader) -> Option<Rotator> {
    match Rotator::new(config) {
        Ok(r) => {
            let (config, keys, store) = (
                config.clone(),
                reloader.keys.clone(),
                reloader.store.clone(),
            );
            Some(r.with_key_swap(Arc::new(move || keys.replace(load_keys(&store, &config)))))
        }
        Err(e) => {
            tracing::error!(error = %e, "rotation cannot run");
            None
        }
    }
}

/// Runs the rotation planner at start, then every `rotation.check_every` and when asked;
/// reloads the key ring and retries deferred mail when keys changed.
pub(super) async fn scheduler(
    reloader: Arc<Reloader>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        let config = reloader.live.current();
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = tokio::time::sleep(config.rotation.check_every.0) => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
        // Built per run so a reloaded config (resolver, hook, policy) applies.
        let config = reloader.live.current();
        if !config.rotation.enabled {
            continue;
        }
        let Some(rotator) = relay_rotator(&config, &reloader) else {
            continue;
        };
        let run = rotator.run_all(crate::clock::now_unix(), false);
        let changed = tokio::select! {
            changed = run => changed,
            _ = shutdown.changed() => return,
        };
        if changed {
            reloader.keys_changed();
        }
    }
}

/// Runs rotation jobs from the control socket (`keys rotate --emergency`, `keys
/// publish`), each in its own task so it never waits behind a slow scheduled run.
pub(super) async fn jobs(
    reloader: Arc<Reloader>,
    mut jobs: JobReceiver,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            Some(job) = jobs.recv() => job,
            _ = shutdown.changed() => return,
        };
        let config = reloader.live.current();
        let Some(rotator) = relay_rotator(&config, &reloader) else {
            let _ = job
                .reply
                .send(Err("rotation cannot run; see the relay's log".into()));
            continue;
        };
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let result = rotator
                .run(&job.domain, crate::clock::now_unix(), job.ask)
                .await;
            reloader.keys_changed();
            let _ = job
                .reply
                .send(result.map(|report| report.lines(&job.domain)));
        });
    }
}
