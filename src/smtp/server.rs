//! The inbound listener: accepts connections, enforces the connection limits, decides
//! whether the client may relay, and runs one session task per connection.

use super::reply::Refusal;
use super::session::Session;
use crate::config::Config;
use crate::delivery::QueueHandle;
use crate::dkim::SharedKeyRing;
use crate::spool::Spool;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// What every session shares.
pub struct SmtpContext {
    pub config: Arc<Config>,
    /// Keys in force, to refuse at DATA time a From domain the relay cannot sign for.
    pub keys: Arc<SharedKeyRing>,
    pub spool: Spool,
    /// Where accepted messages go for delivery.
    pub queue: QueueHandle,
}

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

/// Accepts connections until `shutdown` turns true, then stops accepting and ends the
/// sessions still open.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SmtpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let total = Arc::new(Semaphore::new(ctx.config.smtp.max_connections));
    let per_client = Arc::new(PerClient::default());
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        // Reap finished sessions so the set does not grow.
        while sessions.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: log and keep serving after a pause.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = normalise(peer.ip());
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(client = %ip, "connection refused: smtp.max_connections reached");
            refuse(stream).await;
            continue;
        };
        let Some(slot) = per_client.take(ip, ctx.config.smtp.max_connections_per_client) else {
            tracing::warn!(client = %ip, "connection refused: smtp.max_connections_per_client reached");
            refuse(stream).await;
            continue;
        };
        let allowed = ctx
            .config
            .smtp
            .allowed_networks
            .iter()
            .any(|n| n.contains(&ip));
        if allowed {
            tracing::info!(client = %peer, "connection accepted");
        } else {
            tracing::warn!(client = %peer, "connection from a client outside smtp.allowed_networks; it may not relay");
        }
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let span = tracing::info_span!("smtp", client = %SocketAddr::new(ip, peer.port()));
        sessions.spawn(
            async move {
                Session::new(stream, ip, allowed, ctx).run().await;
                drop(slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracing::info!(open = sessions.len(), "SMTP listener stopped");
    sessions.shutdown().await;
}

async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    Refusal::TooManyConnections.reply().write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
