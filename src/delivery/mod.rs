//! Stage 4 of the pipeline: delivery. The queue runner keeps every spooled message in
//! memory by its next attempt time, hands due ones to at most `delivery.workers`
//! concurrent attempts, and reschedules what was deferred (DESIGN §2, §7).
//!
//! Time is an input: attempts take `now`, and [`QueueHandle::flush`] makes everything due
//! at once (what `queue flush` and tests use instead of waiting).
//!
//! Files: `attempt` (one attempt of one message), `prepare` (read, convert to the form
//! the connection's EHLO takes, sign: one blocking hop, after the connection), `router` (which upstreams, in which
//! order), `upstream` (one server: pool, signing profile), `connect` (opening a session
//! step by step: TCP, TLS, EHLO, AUTH), `connection` (an open session and what opening it
//! saw), `login` (AUTH: password or XOAUTH2 with an OAuth
//! token), `tls` (trusted CAs, the presented certificate), `check` (`upstream check`: one
//! session opened as delivery would, reported), `transaction` (MAIL/RCPT/DATA),
//! `verdict` (the typed result of an attempt: reply, whose fault, retry or not),
//! `redact` (our credentials out of upstream replies), `bounce` (RFC 3464 DSNs),
//! `control` (queue commands inside the runner), `schedule` (retry times), `tally`
//! (outcome counters for /metrics), `outbox`.

mod attempt;
mod bounce;
mod check;
mod connect;
mod connection;
mod control;
mod login;
mod outbox;
mod prepare;
mod profile;
mod redact;
mod router;
mod schedule;
mod tally;
mod tls;
mod transaction;
mod upstream;
mod verdict;

pub use check::{CheckReport, TestSend};
pub use connection::{Capabilities, Seen};
pub use outbox::Outbox;
pub use router::Router;
pub use schedule::{NextStep, RetryPolicy};
pub use tally::count_deliveries;
pub use tls::CertificateFacts;
pub use upstream::{FailedAt, SendError, SigningProfile, Upstream};
pub use verdict::{Cause, Fault, Phase, UpstreamReply, Verdict};

use crate::clock::Clock;
use crate::config::LiveConfig;
use crate::dkim::SharedKeyRing;
use crate::spool::{QueueId, QueuedMessage, Spool};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};

/// Where signed messages go.
#[derive(Debug, Clone)]
pub enum Transport {
    Outbox(Outbox),
    /// One or more upstreams with failover and routes.
    Upstreams(Arc<Router>),
}

/// What happened, for tests and (later) metrics. Logs carry the same facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEvent {
    Delivered {
        id: QueueId,
        rcpt: String,
    },
    Deferred {
        id: QueueId,
        cause: Cause,
    },
    Failed {
        id: QueueId,
        rcpt: String,
        cause: Cause,
    },
    /// Every recipient is delivered or failed; the message left the spool.
    Done {
        id: QueueId,
    },
    /// A DSN about message `id` was stored as message `dsn`.
    BounceQueued {
        id: QueueId,
        dsn: QueueId,
    },
}

/// The transport in force, swapped whole when a reload changes the upstreams or routes
/// (DESIGN §6: upstreams are read per delivery). An attempt takes the current one when it
/// starts and keeps it to its end, so a message in flight finishes on the upstream it
/// started with; the old connection pools close when their last attempt ends.
#[derive(Debug)]
pub struct SharedTransport(std::sync::RwLock<Transport>);

impl SharedTransport {
    pub fn new(transport: Transport) -> SharedTransport {
        SharedTransport(std::sync::RwLock::new(transport))
    }

    pub fn current(&self) -> Transport {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, transport: Transport) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = transport;
    }
}

/// Everything an attempt needs.
pub struct DeliveryContext {
    pub spool: Spool,
    pub keys: Arc<SharedKeyRing>,
    /// What the DNS watch last saw for each selector: it may hold a domain's mail.
    pub dns: Arc<crate::keys::DnsSeen>,
    pub transport: Arc<SharedTransport>,
    /// The config in force: each attempt reads the retry schedule, `delay_warning` and
    /// the relay's name (Reporting-MTA, MAILER-DAEMON@ of bounces) from it, so a reload
    /// applies to the next attempt.
    pub live: Arc<LiveConfig>,
    pub events: broadcast::Sender<DeliveryEvent>,
    /// Where the runner reads `now` for its schedule (the system clock in the relay).
    pub clock: Clock,
}

impl DeliveryContext {
    /// The retry schedule in force.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_config(&self.live.current().delivery)
    }

    fn emit(&self, event: DeliveryEvent) {
        // No subscribers is normal outside tests.
        let _ = self.events.send(event);
    }
}

enum Command {
    Enqueue(Box<QueuedMessage>),
    Flush,
    /// A queue command (`dkim-relay queue …`) and where to send its answer.
    Control(
        crate::queue::Request,
        oneshot::Sender<crate::queue::Response>,
    ),
    /// An attempt ended; the message comes back if it stays queued, with any bounce.
    Finished(QueueId, Box<attempt::AttemptResult>),
}

/// The way other stages talk to the queue runner.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Enqueue(m) => write!(f, "Enqueue({})", m.envelope.id),
            Command::Flush => f.write_str("Flush"),
            Command::Control(r, _) => write!(f, "Control({r:?})"),
            Command::Finished(id, _) => write!(f, "Finished({id})"),
        }
    }
}

impl QueueHandle {
    /// Hands a message that is already in the spool to the runner.
    pub fn enqueue(&self, message: QueuedMessage) {
        if self.tx.send(Command::Enqueue(Box::new(message))).is_err() {
            // The runner has stopped (shutdown); the message is in the spool and will be
            // loaded at the next start.
            tracing::info!("queue runner stopped; message stays in the spool");
        }
    }

    /// Makes every queued message due now.
    pub fn flush(&self) {
        let _ = self.tx.send(Command::Flush);
    }

    /// Runs a queue command in the runner, which owns the queue.
    pub async fn control(&self, request: crate::queue::Request) -> crate::queue::Response {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Control(request, tx)).is_err() {
            return crate::queue::Response::Error("the relay is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| crate::queue::Response::Error("the relay is shutting down".into()))
    }
}

/// Starts the runner with the messages loaded from the spool. It runs until `shutdown`;
/// attempts in progress then finish before the returned future completes.
pub fn start(
    ctx: Arc<DeliveryContext>,
    workers: usize,
    initial: Vec<QueuedMessage>,
    shutdown: watch::Receiver<bool>,
) -> (QueueHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle { tx: tx.clone() };
    let mut runner = Runner {
        ctx,
        items: HashMap::new(),
        schedule: BTreeSet::new(),
        held: HashMap::new(),
        in_flight: HashMap::new(),
        after_attempt: HashMap::new(),
        permits: Arc::new(Semaphore::new(workers)),
        workers,
        tx,
    };
    for item in initial {
        runner.insert(item);
    }
    let task = tokio::spawn(runner.run(rx, shutdown));
    (handle, task)
}

struct Runner {
    ctx: Arc<DeliveryContext>,
    /// Messages waiting for their next attempt, by id.
    items: HashMap<QueueId, QueuedMessage>,
    /// (next attempt, id), so the earliest due message is first.
    schedule: BTreeSet<(u64, QueueId)>,
    /// `queue hold`: kept, not attempted.
    held: HashMap<QueueId, QueuedMessage>,
    /// A copy of each message an attempt is running for, so `queue list` shows it.
    in_flight: HashMap<QueueId, QueuedMessage>,
    /// Queue commands that must wait for the running attempt to end.
    after_attempt: HashMap<QueueId, crate::queue::AfterAttempt>,
    /// One permit per concurrent attempt (= upstream connections in use).
    permits: Arc<Semaphore>,
    workers: usize,
    /// To send `Finished` back to ourselves from attempt tasks.
    tx: mpsc::UnboundedSender<Command>,
}

impl Runner {
    fn insert(&mut self, item: QueuedMessage) {
        if item.state.held {
            self.held.insert(item.envelope.id.clone(), item);
            return;
        }
        let key = (item.state.next_attempt, item.envelope.id.clone());
        self.items.insert(item.envelope.id.clone(), item);
        self.schedule.insert(key);
    }

    fn insert_all(&mut self, items: impl IntoIterator<Item = QueuedMessage>) {
        for item in items {
            self.insert(item);
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            self.dispatch_due();
            let sleep = self.time_to_next();
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Enqueue(item)) => self.insert(*item),
                    Some(Command::Flush) => self.make_all_due(),
                    Some(Command::Control(request, reply)) => {
                        let _ = reply.send(self.control(request));
                    }
                    Some(Command::Finished(id, result)) => {
                        let result = *result;
                        self.in_flight.remove(&id);
                        let requeue = result.requeue.and_then(|item| self.apply_deferred(item));
                        self.insert_all(requeue.into_iter().chain(result.bounce));
                    }
                    None => break,
                },
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Let attempts in progress finish: each holds a permit until it is done.
        let all = u32::try_from(self.workers).unwrap_or(u32::MAX);
        if tokio::time::timeout(Duration::from_secs(30), self.permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "delivery attempts still running after 30s; their messages stay in the spool"
            );
        }
        tracing::info!(queued = self.items.len(), "queue runner stopped");
    }

    fn time_to_next(&self) -> Duration {
        match self.schedule.first() {
            // Busy workers: a Finished command will wake us.
            Some(_) if self.permits.available_permits() == 0 => Duration::from_secs(3600),
            Some((at, _)) => Duration::from_secs(at.saturating_sub(self.ctx.clock.now_unix())),
            None => Duration::from_secs(3600),
        }
    }

    fn make_all_due(&mut self) {
        let now = self.ctx.clock.now_unix();
        let ids: Vec<QueueId> = self.schedule.iter().map(|(_, id)| id.clone()).collect();
        self.schedule.clear();
        for id in ids {
            if let Some(item) = self.items.get_mut(&id) {
                item.state.next_attempt = now;
                self.schedule.insert((now, id));
            }
        }
    }

    fn dispatch_due(&mut self) {
        let now = self.ctx.clock.now_unix();
        while let Some((at, _)) = self.schedule.first() {
            if *at > now {
                break;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some((_, id)) = self.schedule.pop_first() else {
                break;
            };
            let Some(item) = self.items.remove(&id) else {
                continue;
            };
            self.in_flight.insert(id.clone(), item.clone());
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            let span = tracing::info_span!("delivery", queue_id = %id);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let back = attempt::attempt(&ctx, item, ctx.clock.now_unix()).await;
                    drop(permit);
                    let _ = tx.send(Command::Finished(id, Box::new(back)));
                },
                span,
            ));
        }
    }
}
