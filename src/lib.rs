//! # dkim-relay
//!
//! An outbound SMTP relay for an organisation's own hosts: it accepts their mail, keeps it
//! durably, DKIM-signs it for the domain of its From header and forwards it upstream.
//!
//! # Layout
//! A message passes the stages in this order, each a module with a named type at its edge:
//! - [`smtp`]: the inbound listener and session state machine; ends in a [`spool::Envelope`]
//!   plus message bytes handed to the spool.
//! - [`spool`]: the durable queue on disk; nothing is answered 250 before it is here.
//! - [`dkim`]: signing at each delivery attempt with the keys active at that moment.
//! - [`delivery`]: the queue runner, retry schedule, upstream SMTP client and outbox.
//!
//! Around them: [`auth`] (AUTH users, who may send as which domain), [`config`] (the TOML
//! file, and the live snapshot hot reload swaps), [`clock`] (the wall clock, in one place), [`keys`] (the key store on disk), [`rotation`] (the pure rotation planner and
//! its executor: hook, DNS check, lock), [`message`] (header and From parsing),
//! [`oauth`] (OAuth 2.0 tokens for upstream AUTH XOAUTH2: fetch, cache, renew),
//! [`relay`] (wires the stages together), [`watch`] (hot reload of config and keys),
//! [`queue`] (what each queue command means: one implementation, for the running relay
//! and for the spool alone), [`control`] (how queue commands reach it: the control
//! socket), [`metrics`] (/metrics, /healthz, /readyz), [`doctor`] (SPF, DKIM and DMARC
//! checks in DNS), [`systemd`] (readiness notification), [`cli`] (the command line),
//! [`logging`].

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod doctor;
mod fsutil;
pub mod keys;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod oauth;
pub mod queue;
pub mod relay;
pub mod rotation;
pub mod smtp;
pub mod spool;
pub mod systemd;
pub mod watch;
