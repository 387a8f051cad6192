//! Queue commands with no relay running: the caller holds the spool lock, so the files
//! can be changed directly; the next relay start picks the changes up. What each command
//! means is `queue::execute`'s, the same as in a running relay.

use super::{Request, Response};
use crate::queue::{self, AfterAttempt, Entry, Place};
use crate::spool::{QueueId, QueuedMessage, Spool};

pub fn run(spool: &Spool, request: &Request) -> anyhow::Result<Response> {
    let mut files = SpoolFiles {
        spool,
        all: spool.load_all()?,
    };
    files.all.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    Ok(queue::execute(
        &mut files,
        request,
        crate::clock::now_unix(),
    )?)
}

/// The queue as the spool files hold it.
struct SpoolFiles<'a> {
    spool: &'a Spool,
    all: Vec<QueuedMessage>,
}

impl SpoolFiles<'_> {
    fn find(&mut self, id: &QueueId) -> Option<&mut QueuedMessage> {
        self.all.iter_mut().find(|m| &m.envelope.id == id)
    }

    /// Changes one message's state and writes it back.
    fn update(
        &mut self,
        id: &QueueId,
        change: impl FnOnce(&mut QueuedMessage),
    ) -> std::io::Result<()> {
        let spool = self.spool;
        if let Some(m) = self.find(id) {
            change(m);
            spool.save_state(&m.envelope.id, &m.state)?;
        }
        Ok(())
    }
}

impl queue::Queue for SpoolFiles<'_> {
    fn entries(&self) -> Vec<Entry> {
        self.all.iter().map(|m| Entry::of(m, false)).collect()
    }

    fn entry(&self, id: &QueueId) -> Option<Entry> {
        self.all
            .iter()
            .find(|m| &m.envelope.id == id)
            .map(|m| Entry::of(m, false))
    }

    fn place(&self, id: &QueueId) -> Place {
        match self.all.iter().find(|m| &m.envelope.id == id) {
            Some(m) if m.state.held => Place::Held,
            Some(_) => Place::Scheduled,
            None => Place::Unknown,
        }
    }

    fn all_due(&mut self, now: u64) -> std::io::Result<usize> {
        let mut n = 0;
        for m in self.all.iter_mut().filter(|m| !m.state.held) {
            m.state.next_attempt = now;
            self.spool.save_state(&m.envelope.id, &m.state)?;
            n += 1;
        }
        Ok(n)
    }

    fn due(&mut self, id: &QueueId, now: u64) -> std::io::Result<()> {
        self.update(id, |m| m.state.next_attempt = now)
    }

    fn remove(&mut self, id: &QueueId) -> std::io::Result<()> {
        self.spool.remove(id)?;
        self.all.retain(|m| &m.envelope.id != id);
        Ok(())
    }

    fn hold(&mut self, id: &QueueId) -> std::io::Result<()> {
        self.update(id, |m| m.state.held = true)
    }

    fn release(&mut self, id: &QueueId, now: u64) -> std::io::Result<()> {
        self.update(id, |m| {
            m.state.held = false;
            m.state.next_attempt = now;
        })
    }

    /// Nothing is in flight without a relay.
    fn after_attempt(&mut self, _id: &QueueId, _then: AfterAttempt) {}

    fn running(&self) -> bool {
        false
    }
}
