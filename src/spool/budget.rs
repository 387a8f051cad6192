//! The global budget of in-flight message memory: the buffers of every message being
//! received at once (its header block, the output waiting to be written, the write in
//! flight) come out of one semaphore counted in bytes, so a flood of concurrent large
//! transfers cannot grow the relay's memory past `smtp.max_data_memory`.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one transfer holds besides its header block: the DATA reader's output waiting to
/// be written (up to 128KiB: its buffer doubles once past 64KiB), the copy in the file
/// write in flight (up to 128KiB), and the connection's read buffer (32KiB), with room to
/// spare.
pub const TRANSFER_BASE: u32 = 320 * 1024;
/// A header block's memory is taken in steps of this as it grows.
pub const HEADER_STEP: u32 = 64 * 1024;

/// The most one transfer can hold: with a header block of `max_header` bytes.
pub fn largest_transfer(max_header: u64) -> u64 {
    TRANSFER_BASE as u64 + max_header.div_ceil(HEADER_STEP as u64) * HEADER_STEP as u64
}

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: Arc<Semaphore>,
}

/// Memory held by one transfer; given back when dropped.
#[derive(Debug)]
pub struct MemoryLease {
    permit: OwnedSemaphorePermit,
    budget: MemoryBudget,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> MemoryBudget {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            bytes: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Takes `bytes`, waiting at most `wait` for other transfers to give some back.
    pub async fn reserve(&self, bytes: u32, wait: Duration) -> Option<MemoryLease> {
        let acquire = self.bytes.clone().acquire_many_owned(bytes);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(MemoryLease {
                permit,
                budget: self.clone(),
            }),
            // Timed out, or closed (never: the semaphore is not closed).
            _ => None,
        }
    }

    /// Bytes not lent out now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

impl MemoryLease {
    /// Adds `bytes` to the lease if the budget has them now; never waits, since a transfer
    /// waiting while it holds memory could starve the ones that would give some back.
    pub fn try_grow(&mut self, bytes: u32) -> bool {
        match self.budget.bytes.clone().try_acquire_many_owned(bytes) {
            Ok(more) => {
                self.permit.merge(more);
                true
            }
            Err(_) => false,
        }
    }

    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

impl Default for MemoryBudget {
    /// No limit: for spools that only read, and tests that do not measure memory.
    fn default() -> Self {
        MemoryBudget::new(Semaphore::MAX_PERMITS as u64)
    }
}
