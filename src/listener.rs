//! What every listener of the relay (SMTP, the control socket, /metrics) does when
//! `accept` fails: log it and pause. The usual cause is running out of file descriptors
//! (EMFILE), which the next accept would hit again at once: without the pause the loop
//! spins a core and floods the log while the sessions that would free descriptors starve.

use std::time::Duration;

/// The pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Logs a failed accept on `listener` (a word: "smtp", "control", "metrics") and waits
/// [`ACCEPT_BACKOFF`].
pub async fn accept_failed(listener: &'static str, error: &std::io::Error) {
    tracing::error!(listener, error = %error, "accept failed; pausing before the next one");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}
