//! Asking a running relay's rotation to act now (`keys rotate --emergency`, `keys
//! publish`, `keys rotate --now` through the control socket), and its answer.

use super::Ask;
use tokio::sync::{mpsc, oneshot};

/// One request: run this domain now; the reply is the run's report as lines
/// ([`super::DomainReport::lines`]) or why it could not run.
pub struct RotateJob {
    pub domain: String,
    pub ask: Ask,
    pub reply: oneshot::Sender<Result<Vec<String>, String>>,
}

/// The scheduler's side: where jobs arrive.
pub type JobReceiver = mpsc::Receiver<RotateJob>;

/// Everyone else's side.
#[derive(Clone)]
pub struct RotateTrigger(mpsc::Sender<RotateJob>);

/// A trigger and its receiver; a handful of jobs may wait (they are operator commands).
pub fn channel() -> (RotateTrigger, JobReceiver) {
    let (tx, rx) = mpsc::channel(8);
    (RotateTrigger(tx), rx)
}

impl RotateTrigger {
    /// Runs `domain` now and waits for the report.
    pub async fn run(&self, domain: String, ask: Ask) -> Result<Vec<String>, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(RotateJob { domain, ask, reply })
            .await
            .map_err(|_| "rotation is not running in this relay".to_string())?;
        answer
            .await
            .map_err(|_| "the rotation run ended without an answer".to_string())?
    }
}
