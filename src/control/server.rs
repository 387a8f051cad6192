//! The relay's side of the control socket: one JSON request line in, one JSON reply line
//! out, handed to the queue runner or the rotation scheduler. Bounded: a request line
//! longer than 4 KiB or slower than 10 s to arrive is dropped, a queue command gets 10 s
//! and a rotation run its hooks' timeouts, and at most 8 requests are served at once.

use super::{ControlRequest, Response, RotationRequest};
use crate::delivery::QueueHandle;
use crate::rotation::trigger::RotateTrigger;
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

/// Who answers what.
#[derive(Clone)]
pub struct Handlers {
    pub queue: QueueHandle,
    /// None when rotation does not run in this relay (`rotation.enabled = false`).
    pub rotation: Option<RotateTrigger>,
    /// How long a rotation run may take before the request is answered with an error.
    pub rotation_timeout: Duration,
}

pub async fn serve(
    listener: UnixListener,
    handlers: Handlers,
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
        let handlers = handlers.clone();
        tokio::spawn(async move {
            answer(stream, handlers).await;
            drop(permit);
        });
    }
}

async fn answer(stream: UnixStream, handlers: Handlers) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!("control request timed out");
            return;
        }
    }
    let response = match serde_json::from_str::<ControlRequest>(line.trim()) {
        Ok(ControlRequest::Queue(request)) => {
            tracing::info!(request = %request, "queue command");
            match tokio::time::timeout(REQUEST_TIMEOUT, handlers.queue.control(request)).await {
                Ok(response) => response,
                Err(_) => Response::Error("the queue runner did not answer in time".into()),
            }
        }
        Ok(ControlRequest::Rotation(RotationRequest::Rotate { domain, ask })) => {
            tracing::info!(domain = %domain, ask = ask.as_str(), "rotation requested on the control socket");
            match &handlers.rotation {
                None => Response::Error(
                    "rotation does not run in this relay (rotation.enabled = false)".into(),
                ),
                Some(trigger) => match tokio::time::timeout(
                    handlers.rotation_timeout,
                    trigger.run(domain, ask),
                )
                .await
                {
                    Ok(Ok(lines)) => Response::Done(lines.join("\n")),
                    Ok(Err(e)) => Response::Error(e),
                    Err(_) => Response::Error(format!(
                        "the rotation run took longer than {}s; it goes on in the relay (see its log and `keys status`)",
                        handlers.rotation_timeout.as_secs()
                    )),
                },
            }
        }
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let Ok(mut out) = serde_json::to_vec(&response) else {
        return;
    };
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}
