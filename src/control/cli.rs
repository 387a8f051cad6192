//! `dkim-relay queue …`: through the control socket when a relay runs, or directly on the
//! spool (holding its lock) when none does.

use super::{offline, try_lock_spool, ControlRequest, Entry, Request, Response, RotationRequest};
use crate::config::Config;
use crate::message::rfc5322_date;
use crate::spool::{QueueId, RcptStatus, Spool};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Queued messages: id, age, sender, recipients, attempts, next attempt, last error.
    List {
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One message: its envelope, each recipient's status, and its header.
    Show {
        /// The queue id (from `queue list` or the log).
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Retry now: one message, or every message that is not held.
    Flush {
        /// The queue id; without it, every message that is not held.
        id: Option<String>,
    },
    /// Delete a message from the queue. No bounce is sent.
    Remove {
        /// The queue id.
        id: String,
    },
    /// Stop attempting a message until it is released (kept across restarts).
    Hold {
        /// The queue id.
        id: String,
    },
    /// Attempt a held message again, at once.
    Release {
        /// The queue id.
        id: String,
    },
}

fn queue_id(text: &str) -> anyhow::Result<QueueId> {
    QueueId::try_from(text.to_string()).map_err(anyhow::Error::msg)
}

pub fn run(config: &Config, command: QueueCommand) -> anyhow::Result<()> {
    let (request, json) = match &command {
        QueueCommand::List { json } => (Request::List, *json),
        QueueCommand::Show { id, json } => (Request::Show { id: queue_id(id)? }, *json),
        QueueCommand::Flush { id } => (
            Request::Flush {
                id: id.as_deref().map(queue_id).transpose()?,
            },
            false,
        ),
        QueueCommand::Remove { id } => (Request::Remove { id: queue_id(id)? }, false),
        QueueCommand::Hold { id } => (Request::Hold { id: queue_id(id)? }, false),
        QueueCommand::Release { id } => (Request::Release { id: queue_id(id)? }, false),
    };
    let response = execute(config, &request)?;
    let entries = match response {
        Response::Error(e) => bail!("{e}"),
        Response::Done(text) => {
            println!("{text}");
            return Ok(());
        }
        Response::Entries(entries) => entries,
    };
    match (&command, json) {
        (QueueCommand::Show { .. }, true) => {
            println!("{}", serde_json::to_string_pretty(&entries.first())?)
        }
        (_, true) => println!("{}", serde_json::to_string_pretty(&entries)?),
        (QueueCommand::Show { .. }, false) => {
            for entry in &entries {
                show(config, entry);
            }
        }
        (_, false) => list(&entries),
    }
    Ok(())
}

/// Sends the request to the running relay, or runs it on the spool when none runs.
pub fn execute(config: &Config, request: &Request) -> anyhow::Result<Response> {
    let dir = &config.spool.dir;
    if let Some(_lock) = try_lock_spool(dir).with_context(|| format!("spool {}", dir.display()))? {
        let spool = Spool::open(dir, config.spool.fsync)?;
        return offline::run(&spool, request);
    }
    send(config, request, Duration::from_secs(30))
}

/// Has the running relay run `domain`'s rotation now and returns its report as lines;
/// `Ok(None)` when no relay runs on this spool (the caller then runs it itself).
pub fn rotate_on_relay(
    config: &Config,
    domain: &str,
    ask: crate::rotation::Ask,
) -> anyhow::Result<Option<Vec<String>>> {
    let dir = &config.spool.dir;
    if try_lock_spool(dir)
        .with_context(|| format!("spool {}", dir.display()))?
        .is_some()
    {
        return Ok(None);
    }
    let request = ControlRequest::Rotation(RotationRequest::Rotate {
        domain: domain.to_string(),
        ask,
    });
    let wait = super::rotation_request_timeout(config) + Duration::from_secs(10);
    match send(config, &request, wait)? {
        Response::Done(text) => Ok(Some(text.lines().map(String::from).collect())),
        Response::Error(e) => bail!("the running relay: {e}"),
        Response::Entries(_) => bail!("unexpected reply from the relay"),
    }
}

/// One request line to the running relay's control socket, one reply line back.
fn send(
    config: &Config,
    request: &impl serde::Serialize,
    wait: Duration,
) -> anyhow::Result<Response> {
    let path = super::socket_path(&config.spool.dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "a relay holds the spool lock but its control socket {} does not answer",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).context("unreadable reply from the relay")
}

fn age(received: u64, now: u64) -> String {
    let s = now.saturating_sub(received);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn list(entries: &[Entry]) {
    let now = crate::clock::now_unix();
    println!(
        "{:<22} {:>5} {:<28} {:>5} {:>8} {:<10} LAST ERROR",
        "ID", "AGE", "SENDER", "RCPTS", "ATTEMPTS", "NEXT"
    );
    for e in entries {
        let next = if e.held {
            "held".to_string()
        } else if e.active {
            "active".to_string()
        } else if e.next_attempt <= now {
            "now".to_string()
        } else {
            format!("in {}", age(now, e.next_attempt))
        };
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        println!(
            "{:<22} {:>5} {:<28} {:>5} {:>8} {:<10} {}",
            e.id,
            age(e.received, now),
            sender,
            e.recipients.len(),
            e.attempts,
            next,
            e.last_error.as_deref().unwrap_or("-")
        );
    }
    println!("{} message(s)", entries.len());
}

fn show(config: &Config, e: &Entry) {
    println!("id:           {}", e.id);
    println!("received:     {}", rfc5322_date(e.received));
    println!("sender:       <{}>", e.sender);
    println!("attempts:     {}", e.attempts);
    println!("next attempt: {}", rfc5322_date(e.next_attempt));
    println!("held:         {}", e.held);
    println!("active:       {}", e.active);
    println!("bounce:       {}", e.bounce);
    println!("last error:   {}", e.last_error.as_deref().unwrap_or("-"));
    for r in &e.recipients {
        let status = match r.status {
            RcptStatus::Pending => "pending",
            RcptStatus::Delivered => "delivered",
            RcptStatus::Failed => "failed",
        };
        match &r.reason {
            Some(reason) => println!("recipient:    {} {status} ({reason})", r.address),
            None => println!("recipient:    {} {status}", r.address),
        }
    }
    // Read-only: attaching never cleans up temp files a running relay is writing.
    let spool = Spool::attach(&config.spool.dir, false);
    if let Ok(message) = spool.read(&e.id) {
        let bytes = message.message();
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |p| p + 2);
        println!("\n{}", String::from_utf8_lossy(&bytes[..end]).trim_end());
    }
}
