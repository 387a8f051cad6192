//! Queue commands inside the runner. The runner owns the queue, so a command changes the
//! in-memory queue and the spool together; a command for a message whose attempt is
//! running waits for that attempt to end ([`AfterAttempt`]).

use super::{now_unix, Runner};
use crate::control::{Entry, Request, Response};
use crate::spool::{QueueId, QueuedMessage};

/// What to do to a message once its running attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterAttempt {
    Remove,
    Hold,
}

/// Where a message is in the runner.
enum Place {
    Scheduled,
    Held,
    InFlight,
    Unknown,
}

impl Runner {
    pub(super) fn control(&mut self, request: Request) -> Response {
        match request {
            Request::List => {
                let mut entries: Vec<Entry> = self
                    .items
                    .values()
                    .chain(self.held.values())
                    .map(|m| Entry::of(m, false))
                    .chain(self.in_flight.values().map(|m| Entry::of(m, true)))
                    .collect();
                entries.sort_by(|a, b| a.id.cmp(&b.id));
                Response::Entries(entries)
            }
            Request::Show { id } => {
                let found = self
                    .items
                    .get(&id)
                    .or_else(|| self.held.get(&id))
                    .map(|m| Entry::of(m, false))
                    .or_else(|| self.in_flight.get(&id).map(|m| Entry::of(m, true)));
                match found {
                    Some(entry) => Response::Entries(vec![entry]),
                    None => no_such(&id),
                }
            }
            Request::Flush { id: None } => {
                self.make_all_due();
                Response::Done(format!("{} messages due now", self.schedule.len()))
            }
            Request::Flush { id: Some(id) } => match self.place(&id) {
                Place::Scheduled => {
                    let mut item = self.unschedule(&id);
                    if let Some(item) = item.as_mut() {
                        item.state.next_attempt = now_unix();
                    }
                    self.insert_all(item);
                    Response::Done(format!("{id} due now"))
                }
                Place::Held => Response::Error(format!("{id} is held; release it first")),
                Place::InFlight => Response::Done(format!("{id} is being delivered now")),
                Place::Unknown => no_such(&id),
            },
            Request::Remove { id } => match self.place(&id) {
                Place::Scheduled | Place::Held => {
                    let item = self.unschedule(&id).or_else(|| self.held.remove(&id));
                    if let Some(item) = item {
                        self.remove_now(item);
                    }
                    Response::Done(format!("{id} removed"))
                }
                Place::InFlight => {
                    self.after_attempt.insert(id.clone(), AfterAttempt::Remove);
                    Response::Done(format!(
                        "{id} is being delivered now; removed when the attempt ends unless it is delivered first"
                    ))
                }
                Place::Unknown => no_such(&id),
            },
            Request::Hold { id } => match self.place(&id) {
                Place::Scheduled => {
                    if let Some(item) = self.unschedule(&id) {
                        self.hold_now(item);
                    }
                    Response::Done(format!("{id} held"))
                }
                Place::Held => Response::Done(format!("{id} was already held")),
                Place::InFlight => {
                    self.after_attempt.insert(id.clone(), AfterAttempt::Hold);
                    Response::Done(format!(
                        "{id} is being delivered now; held after the attempt if it stays queued"
                    ))
                }
                Place::Unknown => no_such(&id),
            },
            Request::Release { id } => match self.held.remove(&id) {
                Some(mut item) => {
                    item.state.held = false;
                    item.state.next_attempt = now_unix();
                    self.save(&item);
                    tracing::info!(queue_id = %id, "released by operator");
                    self.insert(item);
                    Response::Done(format!("{id} released"))
                }
                None => match self.place(&id) {
                    Place::Unknown => no_such(&id),
                    _ => Response::Error(format!("{id} is not held")),
                },
            },
        }
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

    fn place(&self, id: &QueueId) -> Place {
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

fn no_such(id: &QueueId) -> Response {
    Response::Error(format!("no message {id} in the queue"))
}
