//! The envelope of a spooled message and its delivery progress.

use super::Problem;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A queue id: microseconds since the epoch and 32 random bits, in hex, so ids sort by
/// arrival and are safe as file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct QueueId(String);

impl QueueId {
    pub fn generate(now: std::time::SystemTime) -> QueueId {
        let micros = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut random = [0u8; 4];
        // Without randomness the time alone still orders ids; a clash would be caught
        // by the spool's create-and-rename, so fall back quietly.
        let _ = getrandom::fill(&mut random);
        QueueId(format!("{micros:014x}{:08x}", u32::from_be_bytes(random)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(QueueId(s))
        } else {
            Err(format!("\"{s}\" is not a queue id"))
        }
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything about a message except its bytes, fixed when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds when the 250 was given.
    pub received: u64,
    pub client: IpAddr,
    pub helo: String,
    /// Envelope sender; empty for `MAIL FROM:<>` (bounces).
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Domain of the From header: what the message is signed for.
    pub from_domain: String,
    pub size: u64,
    /// The message has bytes above 127 (sent upstream with BODY=8BITMIME).
    pub eight_bit: bool,
    /// Who made the message. Absent in files written before bounces existed: a client.
    #[serde(default)]
    pub origin: Origin,
    /// Where the message uses UTF-8 (RFC 6531/6532), which decides the form each upstream
    /// gets. Absent in files written before SMTPUTF8 (and not written when nothing is
    /// UTF-8): all ASCII.
    #[serde(default, skip_serializing_if = "Utf8Use::is_none")]
    pub utf8: Utf8Use,
}

/// Where a message uses UTF-8, fixed with its header block (so its stored width is known
/// before the body is streamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Utf8Use {
    /// The client gave the SMTPUTF8 parameter at MAIL.
    #[serde(default)]
    pub requested: bool,
    /// A header field value holds UTF-8 (with or without the parameter, as msmtp and
    /// `mail -s` send it).
    #[serde(default)]
    pub headers: bool,
    /// The envelope sender or a recipient holds UTF-8.
    #[serde(default)]
    pub addresses: bool,
}

impl Utf8Use {
    pub fn is_none(&self) -> bool {
        *self == Utf8Use::default()
    }

    /// Something in the message is UTF-8 (the parameter alone is not).
    pub fn any(&self) -> bool {
        self.headers || self.addresses
    }
}

/// Where a spooled message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Accepted over SMTP.
    #[default]
    Client,
    /// A delivery status notification the relay wrote itself (RFC 3464).
    Bounce,
}

impl Envelope {
    /// A DSN made by this relay: never bounced again, and allowed to go unsigned when
    /// its From domain has no keys at all.
    pub fn is_bounce(&self) -> bool {
        self.origin == Origin::Bounce
    }
}

/// Where each recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    Pending,
    Delivered,
    Failed,
}

/// Delivery progress, rewritten after each attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub attempts: u32,
    /// Unix seconds of the next attempt.
    pub next_attempt: u64,
    /// Why the last attempt did not deliver the recipients still pending.
    pub last_error: Option<Problem>,
    /// One entry per envelope recipient, same order.
    pub rcpts: Vec<RcptStatus>,
    /// Why each failed recipient failed (index → reply or reason), for the DSN.
    #[serde(default)]
    pub failures: std::collections::BTreeMap<usize, Problem>,
    /// `queue hold`: not attempted until released.
    #[serde(default)]
    pub held: bool,
    /// A delay warning was sent.
    #[serde(default)]
    pub warned: bool,
}

impl DeliveryState {
    pub fn new(envelope: &Envelope) -> Self {
        DeliveryState {
            attempts: 0,
            next_attempt: envelope.received,
            last_error: None,
            rcpts: vec![RcptStatus::Pending; envelope.rcpts.len()],
            failures: Default::default(),
            held: false,
            warned: false,
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.rcpts
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == RcptStatus::Pending)
            .map(|(i, _)| i)
    }

    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }
}
