//! # dkim-relay
//!
//! An outbound SMTP relay for an organisation's own hosts: it accepts their mail, keeps it
//! durably, DKIM-signs it for the domain of its From header and forwards it upstream.
//!
//! # Layout
//! A message passes the stages in this order, each a module with a named type at its edge:
//! - [`smtp`]: the inbound listener and session state machine; ends in a [`spool::Envelope`]
//!   plus message bytes handed to the spool. Before the commit `smtp/repair.rs` makes what
//!   real hosts send sign-safe (long lines, missing empty line, bare sender names, private
//!   From), with the pure rules in `message::repair`.
//! - [`spool`]: the durable queue on disk; nothing is answered 250 before it is here. Small
//!   messages are appended to a segment log with group commit (`segment`, its records in
//!   `record`, where each message is in `index`, read back at start by `recover`), larger
//!   ones get a file each (`incoming`, `file`); both share the group fsync of `dirsync`.
//! - [`dkim`]: signing at each delivery attempt with the keys active at that moment, of the
//!   message in the form the upstream's connection takes (`message::transport_form`).
//! - [`delivery`]: the queue runner, retry schedule, upstream SMTP client (also behind
//!   `upstream check`) and outbox; failures typed with their phase and fix in `verdict`.
//!
//! Around them: [`auth`] (AUTH users, who may send as which domain), [`config`] (the TOML
//! file, the live snapshot hot reload swaps, and the table of known providers), [`domain`] (how domain names are spelled
//! and checked), [`clock`] (the wall clock, in one place), [`keys`] (the key store on disk,
//! its keys in PEM files or in a PKCS#11 token, and what the DNS watch last saw of each selector), [`rotation`] (the pure rotation
//! planner and its executor: hooks with a timeout, DNS checks, the store lock held only to
//! record; the trigger the control socket uses; the DNS watch while serving), [`message`] (header and From parsing;
//! `transport_form`, the form each upstream gets: SMTPUTF8, RFC 2047 encoded-words,
//! quoted-printable; `repair`: the sign-safe repairs before the spool),
//! [`oauth`] (OAuth 2.0 tokens for upstream AUTH XOAUTH2: fetch, cache, renew),
//! [`relay`] (wires the stages together), [`watch`] (hot reload of config and keys),
//! [`queue`] (what each queue command means: one implementation, for the running relay
//! and for the spool alone), [`control`] (how queue commands and `keys rotate
//! --emergency` / `keys publish` reach it: the control socket), [`metrics`] (/metrics, /healthz, /readyz), [`doctor`] (SPF, DKIM and DMARC
//! checks in DNS), [`dmarc`] (DMARC aggregate reports: read from mail, gzip or zip without
//! expanding XML entities, stored once each in the spool folder, summed per domain, source
//! and selector for `dmarc report`, `doctor` and /metrics), [`systemd`] (readiness notification), [`cli`] (the command line),
//! [`listener`] (what every listener does when accept fails), [`resolver`] (how a DNS resolver is built), [`logging`].

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dmarc;
pub mod doctor;
pub mod domain;
mod fsutil;
pub mod keys;
pub mod listener;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod oauth;
pub mod queue;
pub mod relay;
pub mod resolver;
pub mod rotation;
pub mod smtp;
pub mod spool;
pub mod systemd;
pub mod watch;
