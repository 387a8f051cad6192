//! The relay's listeners: SMTP (plain, and implicit TLS when configured), /metrics, and
//! the control socket (queue commands, and rotation jobs when rotation is on). A port that cannot be bound stops the start with the address in
//! the error; the control socket is the exception (mail flows without it).

use super::StartError;
use crate::config::Config;
use crate::delivery::QueueHandle;
use crate::metrics::HttpContext;
use crate::rotation::trigger::RotateTrigger;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Binds `addr`; returns the listener and the address it got (port 0 picks one).
pub(super) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen_err = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    Ok((listener, bound))
}

/// Binds the implicit-TLS listener when one is configured.
pub(super) async fn implicit_tls(
    config: &Config,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    match config.smtp.tls.as_ref().and_then(|t| t.implicit_listen) {
        Some(addr) => {
            let (listener, bound) = bind(addr).await?;
            Ok((Some(listener), Some(bound)))
        }
        None => Ok((None, None)),
    }
}

/// Serves /metrics, /healthz and /readyz when `metrics.listen` is set.
pub(super) async fn metrics(
    config: &Config,
    ctx: HttpContext,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>, StartError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let (listener, bound) = bind(addr).await?;
    let task = tokio::spawn(crate::metrics::serve(listener, Arc::new(ctx), shutdown));
    tracing::info!(listen = %bound, "metrics and health on http://{bound}/metrics, /healthz, /readyz");
    Ok(Some((bound, task)))
}

/// The queue commands' control socket. Without it mail still flows, so a failure to bind
/// is logged, not fatal.
pub(super) fn control(
    config: &Config,
    queue: &QueueHandle,
    rotation: Option<RotateTrigger>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let path = crate::control::socket_path(&config.spool.dir);
    match crate::control::server::bind(&path) {
        Ok(listener) => Some(tokio::spawn(crate::control::server::serve(
            listener,
            crate::control::server::Handlers {
                queue: queue.clone(),
                rotation,
                rotation_timeout: crate::control::rotation_request_timeout(config),
            },
            shutdown,
        ))),
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot open the control socket; queue commands will not reach this relay");
            None
        }
    }
}
