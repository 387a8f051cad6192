//! The relay's side of the control socket: one JSON request line in, one JSON reply line
//! out, handed to the queue runner. Bounded: a request line longer than 4 KiB or slower
//! than 10 s is dropped, and at most 8 requests are served at once.

use super::{Request, Response};
use crate::delivery::QueueHandle;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

const MAX_REQUEST: u64 = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket (replacing a stale one: the caller holds the spool lock, so no other
/// relay can be using it) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    queue: QueueHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(8));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::listener::accept_failed("control", &e).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropped: the command sees a closed connection and can retry
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, queue))
                .await
                .is_err()
            {
                tracing::info!("control request timed out");
            }
            drop(permit);
        });
    }
}

async fn answer(stream: UnixStream, queue: QueueHandle) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            tracing::info!(request = %request, "queue command");
            queue.control(request).await
        }
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let Ok(mut out) = serde_json::to_vec(&response) else {
        return;
    };
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}
