//! One delivery attempt of one message: read it from the spool, sign it with the keys in
//! force now, hand it to the transport, and record what happened to each recipient.

use super::outcome::RcptOutcome;
use super::schedule::NextStep;
use super::upstream::{FailedAt, SigningProfile};
use super::{DeliveryContext, DeliveryEvent, Transport};
use crate::dkim::{sign, KeyLookup};
use crate::spool::{QueuedMessage, RcptStatus};

/// Runs one attempt at time `now` (Unix seconds). Returns the message if it stays queued.
pub async fn attempt(
    ctx: &DeliveryContext,
    mut item: QueuedMessage,
    now: u64,
) -> Option<QueuedMessage> {
    let id = item.envelope.id.clone();
    item.state.attempts += 1;
    let pending: Vec<usize> = item.state.pending().collect();
    let outcomes = match prepare_and_send(ctx, &item, &pending).await {
        Ok(outcomes) => outcomes,
        Err(reason) => pending
            .iter()
            .map(|&i| (i, RcptOutcome::Deferred(reason.clone())))
            .collect(),
    };

    let mut deferred_reason = None;
    for (i, outcome) in outcomes {
        let rcpt = &item.envelope.rcpts[i];
        match outcome {
            RcptOutcome::Delivered(reply) => {
                item.state.rcpts[i] = RcptStatus::Delivered;
                tracing::info!(queue_id = %id, rcpt = %rcpt, reply = %reply, "delivered");
                ctx.emit(DeliveryEvent::Delivered {
                    id: id.clone(),
                    rcpt: rcpt.clone(),
                });
            }
            RcptOutcome::Failed(reason) => {
                item.state.rcpts[i] = RcptStatus::Failed;
                tracing::warn!(queue_id = %id, rcpt = %rcpt, reason = %reason, "failed permanently");
                ctx.emit(DeliveryEvent::Failed {
                    id: id.clone(),
                    rcpt: rcpt.clone(),
                    reason,
                });
            }
            RcptOutcome::Deferred(reason) => deferred_reason = Some(reason),
        }
    }

    if item.state.is_finished() {
        return finish(ctx, item);
    }
    let reason = deferred_reason.unwrap_or_else(|| "no result".into());
    match ctx
        .retry
        .next(item.envelope.received, item.state.attempts, now)
    {
        NextStep::Expired => {
            for i in item.state.pending().collect::<Vec<_>>() {
                item.state.rcpts[i] = RcptStatus::Failed;
                let rcpt = item.envelope.rcpts[i].clone();
                let why = format!(
                    "expired after {} attempts; last error: {reason}",
                    item.state.attempts
                );
                tracing::warn!(queue_id = %id, rcpt = %rcpt, reason = %why, "failed permanently");
                ctx.emit(DeliveryEvent::Failed {
                    id: id.clone(),
                    rcpt,
                    reason: why,
                });
            }
            finish(ctx, item)
        }
        NextStep::RetryAt(at) => {
            item.state.next_attempt = at;
            item.state.last_error = Some(reason.clone());
            if let Err(e) = ctx.spool.save_state(&id, &item.state) {
                // The message itself is safe in the spool; only progress may be repeated.
                tracing::error!(queue_id = %id, error = %e, "cannot save delivery state");
            }
            tracing::info!(queue_id = %id, attempts = item.state.attempts, reason = %reason, retry_in_s = at.saturating_sub(now), "deferred");
            ctx.emit(DeliveryEvent::Deferred { id, reason });
            Some(item)
        }
    }
}

fn finish(ctx: &DeliveryContext, item: QueuedMessage) -> Option<QueuedMessage> {
    let id = &item.envelope.id;
    if let Err(e) = ctx.spool.remove(id) {
        tracing::error!(queue_id = %id, error = %e, "cannot remove a finished message from the spool");
    }
    tracing::info!(queue_id = %id, attempts = item.state.attempts, "done");
    ctx.emit(DeliveryEvent::Done { id: id.clone() });
    None
}

/// Reads, signs and sends; an Err is a reason to defer every pending recipient.
async fn prepare_and_send(
    ctx: &DeliveryContext,
    item: &QueuedMessage,
    pending: &[usize],
) -> Result<Vec<(usize, RcptOutcome)>, String> {
    let env = &item.envelope;
    let keys = match ctx.keys.current().lookup(&env.from_domain) {
        KeyLookup::Ready(keys) => Some(keys),
        // Only the relay's own bounces may go unsigned, and only when their domain has
        // no keys at all (DESIGN: never unsigned for a domain that has keys).
        KeyLookup::Unknown if env.is_bounce() => None,
        KeyLookup::Unusable(reason) => {
            return Err(format!("no usable key for {}: {reason}", env.from_domain))
        }
        KeyLookup::Unknown => return Err(format!("no key configured for {}", env.from_domain)),
    };
    let spool = ctx.spool.clone();
    let id = env.id.clone();
    let spooled = tokio::task::spawn_blocking(move || spool.read(&id))
        .await
        .map_err(|e| format!("spool read task failed: {e}"))?
        .map_err(|e| format!("cannot read the spooled message: {e}"))?;
    let message = spooled.message();
    let sign_for = |profile: &SigningProfile| -> Result<String, String> {
        let Some(keys) = &keys else {
            tracing::info!(queue_id = %env.id, from_domain = %env.from_domain, "bounce sent unsigned: no keys exist for its domain");
            return Ok(String::new());
        };
        let leave_out: Vec<&str> = profile.leave_out.iter().map(String::as_str).collect();
        let signatures =
            sign(keys, message, &leave_out, profile.rsa_only).map_err(|e| e.to_string())?;
        let mut headers = String::new();
        for s in &signatures {
            tracing::info!(queue_id = %env.id, d = %keys.domain, s = %s.selector, a = s.algorithm.dkim_a(), "signed");
            headers.push_str(&s.header);
        }
        Ok(headers)
    };
    match &ctx.transport {
        Transport::Outbox(outbox) => {
            let headers = sign_for(&SigningProfile::standard())?;
            let outbox = outbox.clone();
            let id = env.id.to_string();
            let bytes = [headers.as_bytes(), message].concat();
            let path = tokio::task::spawn_blocking(move || outbox.write(&id, &bytes))
                .await
                .map_err(|e| format!("outbox task failed: {e}"))?
                .map_err(|e| format!("cannot write to the outbox: {e}"))?;
            let said = format!("written to {}", path.display());
            Ok(pending
                .iter()
                .map(|&i| (i, RcptOutcome::Delivered(said.clone())))
                .collect())
        }
        Transport::Upstreams(router) => {
            let candidates = router.candidates(env);
            let mut last = String::from("no upstream for this message");
            for (n, upstream) in candidates.iter().enumerate() {
                let headers = sign_for(upstream.profile())?;
                let parts: [&[u8]; 2] = [headers.as_bytes(), message];
                let e = match upstream.send(env, pending, &parts).await {
                    Ok(outcomes) => {
                        tracing::info!(queue_id = %env.id, upstream = %upstream.name(), "handed to upstream");
                        return Ok(outcomes);
                    }
                    Err(e) => e,
                };
                if e.error.config_fault {
                    tracing::error!(queue_id = %env.id, upstream = %upstream.describe(), reason = %e.error.reason, "upstream refused our configuration; mail waits until it is fixed");
                }
                let more = n + 1 < candidates.len();
                match e.at {
                    FailedAt::Connect if more => {
                        tracing::warn!(queue_id = %env.id, upstream = %upstream.describe(), reason = %e.error.reason, "upstream unavailable; failing over to the next");
                        last = e.error.reason;
                    }
                    FailedAt::Connect | FailedAt::Transaction => {
                        return Err(format!("{}: {}", upstream.name(), e.error.reason))
                    }
                }
            }
            Err(last)
        }
    }
}
