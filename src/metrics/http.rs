//! A deliberately small HTTP/1.1 server for three GET paths; one request per connection.

use super::render::{readiness, render};
use crate::config::LiveConfig;
use crate::dkim::SharedKeyRing;
use crate::keys::KeyStore;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections served at once; more are closed unanswered (a scraper retries). Prometheus
/// and a kubelet's probes need a few.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest one request may take, reading and answering.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct HttpContext {
    pub live: Arc<LiveConfig>,
    pub keys: Arc<SharedKeyRing>,
    pub store: KeyStore,
    /// The DNS watch's last results: per-selector metrics and a readiness reason.
    pub dns: Arc<crate::keys::DnsSeen>,
    pub spool_dir: PathBuf,
    /// For the readiness probe (a test write into the queue, as a message would be stored)
    /// and the queue gauges.
    pub spool: crate::spool::Spool,
}

pub async fn serve(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::listener::accept_failed("metrics", &e).await;
                continue;
            }
        };
        // A scraper or probe that opens connections and never sends would otherwise
        // hold a task and a socket each until its timeout, without bound.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("metrics connection dropped: {MAX_CONNECTIONS} already open");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &ctx)).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, ctx: &HttpContext) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let now = crate::clock::now_unix();
    let config = ctx.live.current();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match readiness(&config, &ctx.keys, &ctx.dns, &ctx.spool, now) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(problems) => (
                "503 Service Unavailable",
                "text/plain",
                problems.join("\n") + "\n",
            ),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            render(&config, &ctx.store, &ctx.dns, &ctx.spool, now),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
