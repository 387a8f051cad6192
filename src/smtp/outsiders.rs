//! The outsiders' budget (Postfix's anvil idea, DESIGN §3): clients outside every allowed
//! network that have not authenticated share `smtp.max_outsider_connections` slots of
//! their own, so however many sockets they open they never take the slots of the
//! relay's own hosts. A client that authenticates gives its outsider slot back and keeps
//! only its ordinary one.

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One slot of the budget, held from accept until the session ends or the client
/// authenticates. Clones share it (it survives STARTTLS with the rest of `ClientInfo`).
#[derive(Clone)]
pub struct OutsiderSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl OutsiderSlot {
    /// Takes a slot from `budget` without waiting; None when all are in use.
    pub fn take(budget: &Arc<Semaphore>) -> Option<OutsiderSlot> {
        let permit = budget.clone().try_acquire_owned().ok()?;
        Some(OutsiderSlot(Arc::new(Mutex::new(Some(permit)))))
    }

    /// Gives the slot back early (the client authenticated).
    pub fn release(&self) {
        let mut permit = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *permit = None;
    }
}

impl std::fmt::Debug for OutsiderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutsiderSlot")
    }
}
