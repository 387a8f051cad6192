//! One delivery attempt of one message: read it from the spool, sign it with the keys in
//! force now, hand it to the transport, and record what happened to each recipient.

use super::bounce::{self, DsnKind};
use super::prepare::{NotReady, Preparer};
use super::schedule::NextStep;
use super::transaction::Outcomes;
use super::upstream::{FailedAt, SigningProfile};
use super::verdict::{Cause, Fault, Verdict};
use super::{DeliveryContext, DeliveryEvent, Transport};
use crate::message::transport_form::Form;
use crate::spool::{DeliveryState, QueuedMessage, RcptStatus};

/// What an attempt leaves behind for the runner.
pub struct AttemptResult {
    /// The message, if it stays queued.
    pub requeue: Option<QueuedMessage>,
    /// A DSN this attempt put in the spool, to be queued too.
    pub bounce: Option<QueuedMessage>,
}

/// Runs one attempt at time `now` (Unix seconds).
pub async fn attempt(ctx: &DeliveryContext, mut item: QueuedMessage, now: u64) -> AttemptResult {
    let id = item.envelope.id.clone();
    let pending: Vec<usize> = item.state.pending().collect();
    if pending.is_empty() {
        // Every recipient was settled earlier but the message could not be finished
        // (its bounce was not stored): only finishing is left.
        return finish(ctx, item, now).await;
    }
    item.state.attempts += 1;
    let outcomes = match prepare_and_send(ctx, &item, &pending).await {
        Ok(outcomes) => outcomes,
        Err(cause) => pending
            .iter()
            .map(|&i| (i, Verdict::Deferred(cause.clone())))
            .collect(),
    };

    let mut deferred = None;
    for (i, verdict) in outcomes {
        let rcpt = &item.envelope.rcpts[i];
        match verdict {
            Verdict::Delivered(reply) => {
                item.state.rcpts[i] = RcptStatus::Delivered;
                tracing::info!(queue_id = %id, rcpt = %rcpt, reply = %reply, "delivered");
                ctx.emit(DeliveryEvent::Delivered {
                    id: id.clone(),
                    rcpt: rcpt.clone(),
                });
            }
            Verdict::Failed(cause) => fail(ctx, &mut item, i, cause),
            Verdict::Deferred(cause) => deferred = Some(cause),
        }
    }

    if item.state.is_finished() {
        return finish(ctx, item, now).await;
    }
    let cause = deferred.unwrap_or_else(|| Cause::relay("no result"));
    match ctx
        .retry()
        .next(item.envelope.received, item.state.attempts, now)
    {
        NextStep::Expired => {
            let expired = Cause::expired(item.state.attempts, &cause);
            for i in item.state.pending().collect::<Vec<_>>() {
                fail(ctx, &mut item, i, expired.clone());
            }
            finish(ctx, item, now).await
        }
        NextStep::RetryAt(at) => {
            item.state.next_attempt = at;
            item.state.last_error = Some(cause.problem());
            let bounce = delay_warning(ctx, &mut item, now).await;
            if let Err(e) = ctx.spool.save_state(&id, &item.state) {
                // The message itself is safe in the spool; only progress may be repeated.
                tracing::error!(queue_id = %id, error = %e, "cannot save delivery state");
            }
            tracing::info!(queue_id = %id, attempts = item.state.attempts, fault = cause.fault.name(), upstream = %cause.upstream_field(), phase = %cause.phase_field(), reason = %cause, fix = %cause.fix_field(), retry_in_s = at.saturating_sub(now), "deferred");
            ctx.emit(DeliveryEvent::Deferred { id, cause });
            AttemptResult {
                requeue: Some(item),
                bounce,
            }
        }
    }
}

fn fail(ctx: &DeliveryContext, item: &mut QueuedMessage, i: usize, cause: Cause) {
    let id = &item.envelope.id;
    let rcpt = item.envelope.rcpts[i].clone();
    item.state.rcpts[i] = RcptStatus::Failed;
    item.state.failures.insert(i, cause.problem());
    tracing::warn!(queue_id = %id, rcpt = %rcpt, fault = cause.fault.name(), upstream = %cause.upstream_field(), phase = %cause.phase_field(), reason = %cause, "failed permanently");
    ctx.emit(DeliveryEvent::Failed {
        id: id.clone(),
        rcpt,
        cause,
    });
}

/// Every recipient is settled: bounce the failed ones to the sender, then leave the
/// spool. The bounce is stored first, so a crash in between repeats it, never loses it.
async fn finish(ctx: &DeliveryContext, mut item: QueuedMessage, now: u64) -> AttemptResult {
    let id = item.envelope.id.clone();
    let any_failed = item.state.rcpts.contains(&RcptStatus::Failed);
    let bounce = if any_failed {
        match queue_dsn(ctx, &item, DsnKind::Failed, now).await {
            Ok(bounce) => bounce,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot store the bounce; the message stays queued until it can be");
                item.state.next_attempt = now.saturating_add(ctx.retry().delay(1).as_secs());
                let _ = ctx.spool.save_state(&id, &item.state);
                return AttemptResult {
                    requeue: Some(item),
                    bounce: None,
                };
            }
        }
    } else {
        None
    };
    if let Err(e) = ctx.spool.remove(&id) {
        tracing::error!(queue_id = %id, error = %e, "cannot remove a finished message from the spool");
    }
    tracing::info!(queue_id = %id, attempts = item.state.attempts, "done");
    ctx.emit(DeliveryEvent::Done { id });
    AttemptResult {
        requeue: None,
        bounce,
    }
}

/// After a deferral: a one-time warning to the sender once the message is older than
/// `delivery.delay_warning` (off unless configured).
async fn delay_warning(
    ctx: &DeliveryContext,
    item: &mut QueuedMessage,
    now: u64,
) -> Option<QueuedMessage> {
    let after = ctx.live.current().delivery.delay_warning?.0;
    let age = now.saturating_sub(item.envelope.received);
    if item.state.warned || age < after.as_secs() {
        return None;
    }
    match queue_dsn(ctx, item, DsnKind::Delayed, now).await {
        Ok(bounce) => {
            item.state.warned = true;
            bounce
        }
        Err(e) => {
            tracing::warn!(queue_id = %item.envelope.id, error = %e, "cannot store the delay warning; will try after the next attempt");
            None
        }
    }
}

/// Writes a DSN for `item` to the spool. Ok(None): none is due (the sender was `<>`, or
/// the message is itself a bounce).
async fn queue_dsn(
    ctx: &DeliveryContext,
    item: &QueuedMessage,
    kind: DsnKind,
    now: u64,
) -> Result<Option<QueuedMessage>, String> {
    let env = &item.envelope;
    if env.mail_from.is_empty() || env.is_bounce() {
        tracing::info!(queue_id = %env.id, "no bounce: the sender was <>");
        return Ok(None);
    }
    let spool = ctx.spool.clone();
    let id = env.id.clone();
    let original = tokio::task::spawn_blocking(move || spool.read(&id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the original: {e}"))?;
    let hostname = ctx.live.current().hostname.clone();
    let domain = bounce::signing_domain(&hostname, &ctx.keys.current());
    let dsn = bounce::build(
        kind,
        &hostname,
        &domain,
        env,
        &item.state,
        original.message(),
        now,
    );
    let spool = ctx.spool.clone();
    let (envelope, message) = (dsn.envelope.clone(), dsn.message);
    tokio::task::spawn_blocking(move || spool.store(&envelope, &message))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("spool: {e}"))?;
    let dsn_id = dsn.envelope.id.clone();
    tracing::info!(queue_id = %env.id, dsn_id = %dsn_id, kind = match kind { DsnKind::Failed => "failed", DsnKind::Delayed => "delayed" }, to = %env.mail_from, "bounce queued");
    ctx.emit(DeliveryEvent::BounceQueued {
        id: env.id.clone(),
        dsn: dsn_id,
    });
    let state = DeliveryState::new(&dsn.envelope);
    Ok(Some(QueuedMessage {
        envelope: dsn.envelope,
        state,
    }))
}

/// Prepares (reads, converts, signs: see prepare.rs) and sends; an Err is a reason to
/// defer every pending recipient.
async fn prepare_and_send(
    ctx: &DeliveryContext,
    item: &QueuedMessage,
    pending: &[usize],
) -> Result<Outcomes, Cause> {
    let env = &item.envelope;
    let prep = Preparer::new(ctx, env)?;
    let transport = ctx.transport.current();
    match &transport {
        Transport::Outbox(outbox) => {
            // The outbox is a directory, not an SMTP server: the message as stored.
            let prepared = match prep.get(&SigningProfile::standard(), Form::AS_STORED).await {
                Ok(prepared) => prepared,
                Err(NotReady::Defer(cause)) => return Err(cause),
                Err(NotReady::Fail(cause)) => {
                    return Ok(pending
                        .iter()
                        .map(|&i| (i, Verdict::Failed(cause.clone())))
                        .collect())
                }
            };
            let outbox = outbox.clone();
            let id = env.id.to_string();
            let path = tokio::task::spawn_blocking(move || outbox.write(&id, &prepared.parts()))
                .await
                .map_err(|e| Cause::relay(format!("outbox task failed: {e}")))?
                .map_err(|e| Cause::relay(format!("cannot write to the outbox: {e}")))?;
            let said = format!("written to {}", path.display());
            Ok(pending
                .iter()
                .map(|&i| (i, Verdict::Delivered(said.clone())))
                .collect())
        }
        Transport::Upstreams(router) => {
            let candidates = router.candidates(env);
            let mut last = Cause::our_config("no upstream for this message");
            // On failover the signatures are made again only for a different profile or
            // form: `prep` keeps each one it made.
            for (n, upstream) in candidates.iter().enumerate() {
                let started = std::time::Instant::now();
                let sent = upstream.send(env, pending, &prep).await;
                crate::metrics::global().upstream.observe(started.elapsed());
                let e = match sent {
                    Ok(outcomes) => {
                        tracing::info!(queue_id = %env.id, upstream = %upstream.name(), "handed to upstream");
                        return Ok(outcomes);
                    }
                    Err(e) => e,
                };
                let more = n + 1 < candidates.len();
                let c = &e.cause;
                if c.fault == Fault::OurConfig {
                    tracing::error!(queue_id = %env.id, upstream = %c.upstream_field(), phase = %c.phase_field(), reason = %c, fix = %c.fix_field(), "upstream refused our configuration; mail waits until it is fixed");
                } else if e.at == FailedAt::Connect {
                    let next = if more {
                        "failing over to the next"
                    } else {
                        "mail waits for the next attempt"
                    };
                    tracing::warn!(queue_id = %env.id, upstream = %c.upstream_field(), phase = %c.phase_field(), reason = %c, fix = %c.fix_field(), next, "upstream unavailable");
                }
                match e.at {
                    FailedAt::Connect if more => last = e.cause,
                    FailedAt::Connect | FailedAt::Transaction => return Err(e.cause),
                }
            }
            Err(last)
        }
    }
}
