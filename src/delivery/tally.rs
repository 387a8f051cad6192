//! Delivery's part of /metrics: the outcome counters and the "deferring since" mark that
//! readiness reads, fed from the runner's event stream (no coupling to its internals).

use super::DeliveryEvent;
use crate::metrics::{global, Registry};
use std::sync::atomic::Ordering;

/// Counts delivery outcomes into the global registry until the stream closes.
pub async fn count_deliveries(mut events: tokio::sync::broadcast::Receiver<DeliveryEvent>) {
    use DeliveryEvent as E;
    let r = global();
    loop {
        match events.recv().await {
            Ok(E::Delivered { .. }) => {
                Registry::add(&r.delivered);
                r.last_delivered
                    .store(crate::clock::now_unix(), Ordering::Relaxed);
                r.deferring_since.store(0, Ordering::Relaxed);
            }
            Ok(E::Deferred { .. }) => {
                Registry::add(&r.deferred);
                let now = crate::clock::now_unix();
                r.last_deferred.store(now, Ordering::Relaxed);
                let _ = r.deferring_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Ok(E::Failed { .. }) => Registry::add(&r.failed),
            Ok(_) => {}
            // Missed events under load only make the counters low; keep going.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
