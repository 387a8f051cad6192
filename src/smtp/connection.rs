//! One client connection from accept to close: a plain session that may end in STARTTLS,
//! or TLS from the first byte on the implicit-TLS listener.
//!
//! STARTTLS is where the smuggling-style attacks of CVE-2011-0411 live (commands
//! pipelined after STARTTLS in clear text, answered inside TLS). The plain session hands
//! back only the socket: its read buffer, its state and its counters are dropped with it,
//! and the TLS session starts from a fresh [`Session`], so nothing said before the
//! handshake can carry over.

use super::context::{ClientInfo, SmtpContext};
use super::session::{End, Phase, Session};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

pub(super) async fn run(
    stream: TcpStream,
    client: ClientInfo,
    ctx: Arc<SmtpContext>,
    shutdown: watch::Receiver<bool>,
    implicit_tls: bool,
) {
    if implicit_tls {
        if let Some(tls) = handshake(stream, &ctx).await {
            Session::new(tls, client, ctx, shutdown, Phase::ImplicitTls)
                .run()
                .await;
        }
        return;
    }
    let end = Session::new(
        stream,
        client.clone(),
        ctx.clone(),
        shutdown.clone(),
        Phase::Plain,
    )
    .run()
    .await;
    match end {
        End::Closed => {}
        End::StartTls(stream) => {
            if let Some(tls) = handshake(stream, &ctx).await {
                // A TLS session cannot ask for STARTTLS again (503), so its end is Closed.
                let _ = Session::new(tls, client, ctx, shutdown, Phase::AfterStartTls)
                    .run()
                    .await;
            }
        }
    }
}

/// A plain-text session on any stream: the seam the fuzz target drives in memory. A
/// STARTTLS request ends it (there is no socket to hand over).
pub async fn serve_stream<S>(
    stream: S,
    client: ClientInfo,
    ctx: Arc<SmtpContext>,
    shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = Session::new(stream, client, ctx, shutdown, Phase::Plain)
        .run()
        .await;
}

async fn handshake(stream: TcpStream, ctx: &SmtpContext) -> Option<TlsStream<TcpStream>> {
    let (Some(store), Some(config)) = (&ctx.tls, &ctx.started.smtp.tls) else {
        tracing::error!("TLS requested but [smtp.tls] is not configured");
        return None;
    };
    let accept = store.acceptor().accept(stream);
    match tokio::time::timeout(config.handshake_timeout.0, accept).await {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            tracing::info!(
                version = ?conn.protocol_version(),
                cipher = ?conn.negotiated_cipher_suite().map(|c| c.suite()),
                "TLS established"
            );
            Some(tls)
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}
