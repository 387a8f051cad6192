//! The inbound listener: accepts connections, enforces the connection limits, decides
//! whether the client may relay, and runs one session task per connection.

use super::connection;
use super::context::{ClientInfo, SmtpContext};
use super::outsiders::OutsiderSlot;
use super::reply::Refusal;
use crate::config::Config;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Open connections per client address, to enforce `max_connections_per_client`.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// Decrements the client's count when the session ends, however it ends.
struct ClientSlot {
    counts: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// `::ffff:a.b.c.d` is an IPv4 client on a dual-stack socket: match it as IPv4.
pub fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Accepts on `implicit` when there is one; never returns otherwise.
async fn accept_opt(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections (plain, and implicit TLS on `implicit`) until `shutdown` turns
/// true, then stops accepting and lets the sessions still open finish within
/// `smtp.shutdown_grace` (each answers 421 when it runs out).
pub async fn serve(
    listener: TcpListener,
    implicit: Option<TcpListener>,
    ctx: Arc<SmtpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let total = Arc::new(Semaphore::new(ctx.started.smtp.max_connections));
    let outsiders = Arc::new(Semaphore::new(ctx.started.smtp.outsider_budget()));
    let per_client = Arc::new(PerClient::default());
    let mut sessions = JoinSet::new();
    if let (Some(store), Some(tls)) = (&ctx.tls, &ctx.started.smtp.tls) {
        tokio::spawn(store.clone().watch(tls.reload_interval.0, shutdown.clone()));
    }
    loop {
        let (accepted, implicit_tls) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = accept_opt(implicit.as_ref()) => (accepted, true),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        // Reap finished sessions so the set does not grow.
        while sessions.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                crate::listener::accept_failed("smtp", &e).await;
                continue;
            }
        };
        let ip = normalise(peer.ip());
        // The config in force now decides who may relay; the connection keeps this
        // snapshot to its end, so a reload never changes the rules in the middle of one.
        let snapshot = ctx.snapshot();
        let grant = snapshot.grants.for_client(ip).cloned();
        if grant.is_none() && ctx.users.is_none() {
            // No AUTH to offer: nothing this client could send would be accepted.
            tracing::warn!(client = %ip, "connection refused: outside smtp.allowed_networks and AUTH is not configured");
            refuse_with(stream, Refusal::ClientNotAllowed, &snapshot.config).await;
            continue;
        }
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(client = %ip, "connection refused: smtp.max_connections reached");
            refuse_with(stream, Refusal::TooManyConnections, &snapshot.config).await;
            continue;
        };
        let Some(slot) = per_client.take(ip, ctx.started.smtp.max_connections_per_client) else {
            tracing::warn!(client = %ip, "connection refused: smtp.max_connections_per_client reached");
            refuse_with(stream, Refusal::TooManyConnections, &snapshot.config).await;
            continue;
        };
        let outsider = match &grant {
            Some(_) => None,
            None => match OutsiderSlot::take(&outsiders) {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(client = %ip, "connection refused: smtp.max_outsider_connections reached by clients outside the allowed networks");
                    refuse_with(stream, Refusal::TooManyOutsiders, &snapshot.config).await;
                    continue;
                }
            },
        };
        match &grant {
            Some(g) => {
                tracing::info!(client = %peer, tls = implicit_tls, domains = %g.describe(), "connection accepted")
            }
            None => {
                tracing::warn!(client = %peer, tls = implicit_tls, "connection from a client outside the allowed networks; it may relay only after AUTH")
            }
        }
        let _ = stream.set_nodelay(true);
        let client = ClientInfo {
            ip,
            config: snapshot.config,
            grant,
            started: tokio::time::Instant::now(),
            outsider,
        };
        let session_ctx = ctx.clone();
        let stop = shutdown.clone();
        let span = tracing::info_span!("smtp", client = %SocketAddr::new(ip, peer.port()));
        sessions.spawn(
            async move {
                connection::run(stream, client, session_ctx, stop, implicit_tls).await;
                drop(slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Close the sockets now: new clients are refused by the kernel, not left waiting in
    // the backlog while the open sessions drain.
    drop(listener);
    drop(implicit);
    // Sessions see the same signal: idle ones answer 421 at once, a transaction in
    // progress gets `shutdown_grace` to finish. The margin covers the final spool write.
    // Sessions that ended since the last accept are not open.
    while sessions.try_join_next().is_some() {}
    let open = sessions.len();
    tracing::info!(open, "SMTP listener stopped; waiting for open sessions");
    let wait = ctx.started.smtp.shutdown_grace.0 + std::time::Duration::from_secs(5);
    let drained = tokio::time::timeout(wait, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "sessions still open after the shutdown grace; closing them"
        );
        sessions.shutdown().await;
    }
}

/// Answers `refusal` in place of the greeting and closes, within `smtp.write_timeout`.
/// It runs in the accept loop: one short line into a fresh socket's empty send buffer
/// does not wait, and the deadline makes sure no client can hold the loop if it did.
async fn refuse_with(mut stream: TcpStream, refusal: Refusal, config: &Config) {
    let mut out = Vec::new();
    refusal.reply().write_to(&mut out);
    // `write_timeout` is live: the snapshot this connection was accepted under.
    let _ = tokio::time::timeout(config.smtp.write_timeout.0, async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
