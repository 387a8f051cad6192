//! Queue commands (`queue list|show|flush|remove|hold|release`): the requests, the answers,
//! and the one implementation of each, over anything that holds queued messages. The
//! running relay's queue runner (which owns the queue in memory) and the spool files with
//! no relay running (`control::offline`) each say where a message is and carry out the
//! change; what a command means, and what it answers, is decided here only.

use crate::spool::{QueueId, QueuedMessage, RcptStatus};
use serde::{Deserialize, Serialize};

/// One request to the queue runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    List,
    Show {
        id: QueueId,
    },
    /// Retry now: one message, or all (held ones stay held).
    Flush {
        id: Option<QueueId>,
    },
    /// Delete from the queue without a bounce.
    Remove {
        id: QueueId,
    },
    /// Keep in the queue but stop attempting it (survives restarts).
    Hold {
        id: QueueId,
    },
    Release {
        id: QueueId,
    },
}

impl std::fmt::Display for Request {
    /// The command as the operator typed it (`hold ID`), for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::List => f.write_str("list"),
            Request::Show { id } => write!(f, "show {id}"),
            Request::Flush { id: Some(id) } => write!(f, "flush {id}"),
            Request::Flush { id: None } => f.write_str("flush all"),
            Request::Remove { id } => write!(f, "remove {id}"),
            Request::Hold { id } => write!(f, "hold {id}"),
            Request::Release { id } => write!(f, "release {id}"),
        }
    }
}

/// The runner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Entries(Vec<Entry>),
    Done(String),
    Error(String),
}

/// A queued message as the queue commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: QueueId,
    /// Unix seconds when it was accepted.
    pub received: u64,
    pub sender: String,
    pub recipients: Vec<RcptEntry>,
    pub attempts: u32,
    /// Unix seconds of the next attempt (meaningless while held).
    pub next_attempt: u64,
    pub last_error: Option<String>,
    pub held: bool,
    /// An attempt is running right now.
    pub active: bool,
    pub bounce: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptEntry {
    pub address: String,
    pub status: RcptStatus,
    /// Why it failed, for a failed recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Entry {
    pub fn of(item: &QueuedMessage, active: bool) -> Entry {
        let recipients = item
            .envelope
            .rcpts
            .iter()
            .enumerate()
            .map(|(i, address)| RcptEntry {
                address: address.clone(),
                status: item
                    .state
                    .rcpts
                    .get(i)
                    .copied()
                    .unwrap_or(RcptStatus::Pending),
                reason: item.state.failures.get(&i).map(|p| p.text.clone()),
            })
            .collect();
        Entry {
            id: item.envelope.id.clone(),
            received: item.envelope.received,
            sender: item.envelope.mail_from.clone(),
            recipients,
            attempts: item.state.attempts,
            next_attempt: item.state.next_attempt,
            last_error: item.state.last_error.as_ref().map(|p| p.text.clone()),
            held: item.state.held,
            active,
            bounce: item.envelope.is_bounce(),
        }
    }
}

/// Where a message is, as a queue command sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Queued, waiting for its next attempt.
    Scheduled,
    /// `queue hold`: kept, not attempted.
    Held,
    /// An attempt is running right now (only in a running relay).
    InFlight,
    Unknown,
}

/// What to do to a message once its running attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Remove,
    Hold,
}

/// A holder of queued messages: it says where a message is and makes the changes; it
/// decides nothing.
pub trait Queue {
    /// Every message, in queue id order.
    fn entries(&self) -> Vec<Entry>;
    fn entry(&self, id: &QueueId) -> Option<Entry>;
    fn place(&self, id: &QueueId) -> Place;
    /// Makes every scheduled message due at `now` (held ones stay held); how many.
    fn all_due(&mut self, now: u64) -> std::io::Result<usize>;
    /// Makes a scheduled message due at `now`.
    fn due(&mut self, id: &QueueId, now: u64) -> std::io::Result<()>;
    /// Deletes a scheduled or held message, with no bounce.
    fn remove(&mut self, id: &QueueId) -> std::io::Result<()>;
    /// Holds a scheduled message.
    fn hold(&mut self, id: &QueueId) -> std::io::Result<()>;
    /// Releases a held message, due at `now`.
    fn release(&mut self, id: &QueueId, now: u64) -> std::io::Result<()>;
    /// Removes or holds an in-flight message once its attempt ends.
    fn after_attempt(&mut self, id: &QueueId, then: AfterAttempt);
    /// A relay is running: what is made due is attempted now, not at the next start.
    fn running(&self) -> bool;
}

/// Carries out `request` on `queue` at `now` (Unix seconds).
pub fn execute(queue: &mut impl Queue, request: &Request, now: u64) -> std::io::Result<Response> {
    let later = if queue.running() {
        ""
    } else {
        "; no relay is running, so it goes at the next start"
    };
    let done = |text: String| Ok(Response::Done(text));
    match request {
        Request::List => Ok(Response::Entries(queue.entries())),
        Request::Show { id } => match queue.entry(id) {
            Some(entry) => Ok(Response::Entries(vec![entry])),
            None => Ok(no_such(id)),
        },
        Request::Flush { id: None } => {
            let n = queue.all_due(now)?;
            done(format!("{n} message(s) due now{later}"))
        }
        Request::Flush { id: Some(id) } => match queue.place(id) {
            Place::Scheduled => {
                queue.due(id, now)?;
                done(format!("{id} due now{later}"))
            }
            Place::Held => Ok(Response::Error(format!("{id} is held; release it first"))),
            Place::InFlight => done(format!("{id} is being delivered now")),
            Place::Unknown => Ok(no_such(id)),
        },
        Request::Remove { id } => match queue.place(id) {
            Place::Scheduled | Place::Held => {
                queue.remove(id)?;
                done(format!("{id} removed"))
            }
            Place::InFlight => {
                queue.after_attempt(id, AfterAttempt::Remove);
                done(format!(
                    "{id} is being delivered now; removed when the attempt ends unless it is delivered first"
                ))
            }
            Place::Unknown => Ok(no_such(id)),
        },
        Request::Hold { id } => match queue.place(id) {
            Place::Scheduled => {
                queue.hold(id)?;
                done(format!("{id} held"))
            }
            Place::Held => done(format!("{id} was already held")),
            Place::InFlight => {
                queue.after_attempt(id, AfterAttempt::Hold);
                done(format!(
                    "{id} is being delivered now; held after the attempt if it stays queued"
                ))
            }
            Place::Unknown => Ok(no_such(id)),
        },
        Request::Release { id } => match queue.place(id) {
            Place::Held => {
                queue.release(id, now)?;
                done(format!("{id} released{later}"))
            }
            Place::Unknown => Ok(no_such(id)),
            Place::Scheduled | Place::InFlight => Ok(Response::Error(format!("{id} is not held"))),
        },
    }
}

fn no_such(id: &QueueId) -> Response {
    Response::Error(format!("no message {id} in the queue"))
}
