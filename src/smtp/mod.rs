//! Stage 1 of the pipeline: inbound SMTP. A tokio listener ([`server`]) and one session
//! state machine per connection ([`session`]), built on smtp-proto's command parser. A
//! message leaves this stage as an [`crate::spool::Envelope`] plus bytes stored in the
//! spool, and only then does the client get 250.

mod accept;
mod conn;
pub mod data;
pub mod reply;
pub mod server;
mod session;

pub use server::{serve, SmtpContext};
