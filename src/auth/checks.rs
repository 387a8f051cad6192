//! The password checks of AUTH on a small bounded pool. Each argon2id check holds about
//! 19 MiB for its duration on a blocking thread; unbounded, 200 parallel AUTHs took 200
//! threads and gigabytes. At most `workers` checks run at once (sized to the cores: more
//! would not finish sooner), `queue` more may wait for one, and anything beyond is told
//! [`Busy`] at once, to be answered 454 4.7.0, instead of piling up. Each worker's argon2
//! memory is kept for the next check rather than freed (see [`Scratch`]).

use super::users::Scratch;
use super::{DomainGrant, Users};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Every worker is busy and the queue is full: try again in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

pub struct PasswordChecks {
    /// Checks running or waiting to: `workers + queue` permits, taken without waiting.
    admitted: Arc<Semaphore>,
    /// Checks running: `workers` permits, each moved into the blocking task so that a
    /// session that goes away mid-check does not free a worker still hashing.
    running: Arc<Semaphore>,
    /// argon2 memory of the checks that ran before, one per worker at most.
    scratch: Arc<Mutex<Vec<Scratch>>>,
}

impl PasswordChecks {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        PasswordChecks {
            admitted: Arc::new(Semaphore::new(workers + queue)),
            running: Arc::new(Semaphore::new(workers)),
            scratch: Arc::new(Mutex::new(Vec::with_capacity(workers))),
        }
    }

    /// Checks `name` and `password` on the pool: the user's domains when they match,
    /// None when they do not, [`Busy`] (without checking) when the pool is full.
    pub async fn verify(
        &self,
        users: Arc<Users>,
        name: String,
        password: Zeroizing<Vec<u8>>,
    ) -> Result<Option<DomainGrant>, Busy> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        let scratch = self.scratch.clone();
        let check = tokio::task::spawn_blocking(move || {
            let lock = || scratch.lock().unwrap_or_else(|e| e.into_inner());
            let mut memory = lock().pop().unwrap_or_default();
            let verdict = users.verify_with(&name, &password, &mut memory);
            lock().push(memory);
            drop((running, admitted));
            verdict
        });
        // A panic inside argon2 is a failed check, never a success.
        Ok(check.await.unwrap_or(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_workers_and_the_queue_a_check_is_refused_at_once() {
        let hash = super::super::hash_password(b"pw").unwrap();
        let users = Arc::new(
            Users::parse(&format!(
                "[[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\nfrom_domains = []\n"
            ))
            .unwrap(),
        );
        let checks = Arc::new(PasswordChecks::new(1, 1));
        // Hold the only worker so that nothing finishes while the queue fills.
        let worker = checks.running.clone().acquire_owned().await.unwrap();
        let first = tokio::spawn({
            let (checks, users) = (checks.clone(), users.clone());
            async move {
                checks
                    .verify(users, "app".into(), Zeroizing::new(b"pw".to_vec()))
                    .await
            }
        });
        let second = tokio::spawn({
            let (checks, users) = (checks.clone(), users.clone());
            async move {
                checks
                    .verify(users, "app".into(), Zeroizing::new(b"no".to_vec()))
                    .await
            }
        });
        while checks.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let third = checks
            .verify(users.clone(), "app".into(), Zeroizing::new(b"pw".to_vec()))
            .await;
        assert_eq!(third, Err(Busy));
        drop(worker);
        assert!(matches!(first.await.unwrap(), Ok(Some(_))));
        assert_eq!(second.await.unwrap(), Ok(None));
    }
}
