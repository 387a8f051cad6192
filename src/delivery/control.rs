//! Queue commands inside the runner. The runner owns the queue, so a command changes the
//! in-memory queue and the spool together; a command for a message whose attempt is
//! running waits for that attempt to end ([`AfterAttempt`]). What each command means is
//! decided by `queue::execute`, the same for the spool with no relay running.

use super::Runner;
use crate::queue::{self, AfterAttempt, Entry, Place, Request, Response};
use crate::spool::{QueueId, QueuedMessage};

impl Runner {
    pub(super) fn control(&mut self, request: Request) -> Response {
        let now = self.ctx.clock.now_unix();
        queue::execute(self, &request, now).unwrap_or_else(|e| Response::Error(e.to_string()))
    }

    /// Applies a command that waited for the attempt; returns the message if it stays
    /// in the schedule.
    pub(super) fn apply_deferred(&mut self, item: QueuedMessage) -> Option<QueuedMessage> {
        match self.after_attempt.remove(&item.envelope.id) {
            None => Some(item),
            Some(AfterAttempt::Remove) => {
                self.remove_now(item);
                None
            }
            Some(AfterAttempt::Hold) => {
                self.hold_now(item);
                None
            }
        }
    }

    fn place_of(&self, id: &QueueId) -> Place {
        if self.in_flight.contains_key(id) {
            Place::InFlight
        } else if self.items.contains_key(id) {
            Place::Scheduled
        } else if self.held.contains_key(id) {
            Place::Held
        } else {
            Place::Unknown
        }
    }

    fn unschedule(&mut self, id: &QueueId) -> Option<QueuedMessage> {
        let item = self.items.remove(id)?;
        self.schedule.remove(&(item.state.next_attempt, id.clone()));
        Some(item)
    }

    fn remove_now(&mut self, item: QueuedMessage) {
        let id = &item.envelope.id;
        match self.ctx.spool.remove(id) {
            Ok(()) => tracing::info!(queue_id = %id, "removed by operator; no bounce"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot remove from the spool"),
        }
    }

    fn hold_now(&mut self, mut item: QueuedMessage) {
        item.state.held = true;
        self.save(&item);
        tracing::info!(queue_id = %item.envelope.id, "held by operator");
        self.held.insert(item.envelope.id.clone(), item);
    }

    fn save(&self, item: &QueuedMessage) {
        if let Err(e) = self.ctx.spool.save_state(&item.envelope.id, &item.state) {
            // Memory has the change; only a restart would forget it.
            tracing::error!(queue_id = %item.envelope.id, error = %e, "cannot save the queue state");
        }
    }
}

impl queue::Queue for Runner {
    fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self
            .items
            .values()
            .chain(self.held.values())
            .map(|m| Entry::of(m, false))
            .chain(self.in_flight.values().map(|m| Entry::of(m, true)))
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries
    }

    fn entry(&self, id: &QueueId) -> Option<Entry> {
        self.items
            .get(id)
            .or_else(|| self.held.get(id))
            .map(|m| Entry::of(m, false))
            .or_else(|| self.in_flight.get(id).map(|m| Entry::of(m, true)))
    }

    fn place(&self, id: &QueueId) -> Place {
        self.place_of(id)
    }

    fn all_due(&mut self, _now: u64) -> std::io::Result<usize> {
        self.make_all_due();
        Ok(self.schedule.len())
    }

    fn due(&mut self, id: &QueueId, now: u64) -> std::io::Result<()> {
        let mut item = self.unschedule(id);
        if let Some(item) = item.as_mut() {
            item.state.next_attempt = now;
        }
        self.insert_all(item);
        Ok(())
    }

    fn remove(&mut self, id: &QueueId) -> std::io::Result<()> {
        if let Some(item) = self.unschedule(id).or_else(|| self.held.remove(id)) {
            self.remove_now(item);
        }
        Ok(())
    }

    fn hold(&mut self, id: &QueueId) -> std::io::Result<()> {
        if let Some(item) = self.unschedule(id) {
            self.hold_now(item);
        }
        Ok(())
    }

    fn release(&mut self, id: &QueueId, now: u64) -> std::io::Result<()> {
        if let Some(mut item) = self.held.remove(id) {
            item.state.held = false;
            item.state.next_attempt = now;
            self.save(&item);
            tracing::info!(queue_id = %id, "released by operator");
            self.insert(item);
        }
        Ok(())
    }

    fn after_attempt(&mut self, id: &QueueId, then: AfterAttempt) {
        self.after_attempt.insert(id.clone(), then);
    }

    fn running(&self) -> bool {
        true
    }
}
