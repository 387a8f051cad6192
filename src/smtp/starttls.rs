//! The STARTTLS verb (RFC 3207). The handshake itself happens in `connection.rs`, on the
//! bare socket the session hands back, so no byte or state from before TLS survives.

use super::reply::{Refusal, Reply};
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn starttls(&mut self) -> Flow {
        if self.ctx.tls.is_none() {
            return self.answer(Err(Refusal::NotImplemented));
        }
        if self.phase.tls() {
            return self.answer(Err(Refusal::BadSequence("TLS is already active")));
        }
        if self.conn.has_buffered_input() {
            // RFC 3207 §4.2 forbids pipelining after STARTTLS; what follows is dropped
            // with the plain-text buffer and never answered.
            tracing::info!("client pipelined input after STARTTLS; discarded");
        }
        self.conn
            .queue_reply(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        Flow::StartTls
    }
}
