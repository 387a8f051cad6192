//! Stage 1 of the pipeline: inbound SMTP. A tokio listener ([`server`]) and one session
//! state machine per connection ([`session`]), built on smtp-proto's command parser. A
//! message leaves this stage as an [`crate::spool::Envelope`] plus bytes stored in the
//! spool, and only then does the client get 250.

mod auth;
pub mod connection;
pub mod context;
pub mod data;
mod data_command;
mod mail_rcpt;
pub mod outsiders;
pub mod pace;
mod receive;
mod repair;
pub mod reply;
pub mod server;
mod session;
mod starttls;
pub mod tls;
mod wire;

pub use context::{ClientInfo, InboundError, SmtpContext, Snapshot};
pub use server::serve;
