//! The load generator: C client sessions, each sending message after message over one
//! connection as smtp-source does (MAIL, RCPT and DATA pipelined, then the body). The
//! latency of a message is from writing its final ".\r\n" to reading the reply.
//!
//! With `per_connection` every message gets a connection of its own (connect, greeting,
//! EHLO, one transaction, QUIT), as cron and most hosts send; the latency still starts at
//! the end of data, so the connection set-up shows in the rate and the CPU, not in it.
//!
//! Closed loop (default): a session sends its next message as soon as the last was
//! answered. Open loop (`rate`): message i is due at start + i/rate, whichever session is
//! free takes it; latency still starts at end of data, so a saturated server shows as a
//! lower achieved rate rather than as queueing in the client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Plan {
    pub target: SocketAddr,
    pub n: usize,
    pub size: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    /// From domains; message i is from domains[i % len].
    pub domains: Arc<Vec<String>>,
    /// The message is a header block of `size` bytes of tiny fields and a short body.
    pub header_bomb: bool,
    /// A new connection for every message (QUIT after its reply).
    pub per_connection: bool,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// End-of-DATA to 250, one per accepted message, in microseconds (sorted).
    pub latencies_us: Vec<u64>,
    pub accepted: usize,
    /// Messages answered with anything but 250 (not retried).
    pub refused: usize,
    pub first_refusal: Option<String>,
    /// From the first connection to the last 250.
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct SessionResult {
    latencies_us: Vec<u64>,
    refused: usize,
    first_refusal: Option<String>,
}

pub async fn run(plan: Plan) -> std::io::Result<Outcome> {
    let plan = Arc::new(plan);
    let body = Arc::new(body_lines(plan.size, line(&plan)));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.concurrency.min(plan.n.max(1)) {
        let (plan, body, next) = (plan.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            session(&plan, &body, &next, start).await
        }));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        let result = task.await.map_err(std::io::Error::other)??;
        outcome.latencies_us.extend(result.latencies_us);
        outcome.refused += result.refused;
        if outcome.first_refusal.is_none() {
            outcome.first_refusal = result.first_refusal;
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.accepted = outcome.latencies_us.len();
    outcome.latencies_us.sort_unstable();
    Ok(outcome)
}

/// One client session; reconnects when the server ends it with 421 (a per-session cap).
async fn session(
    plan: &Plan,
    body: &[u8],
    next: &AtomicUsize,
    start: Instant,
) -> std::io::Result<SessionResult> {
    let mut result = SessionResult::default();
    let mut client: Option<Client> = None;
    let mut pending: Option<usize> = None;
    loop {
        let i = match pending.take() {
            Some(i) => i,
            None => next.fetch_add(1, Ordering::Relaxed),
        };
        if i >= plan.n {
            break;
        }
        if let Some(rate) = plan.rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let c = match client.as_mut() {
            Some(c) => c,
            None => client.insert(Client::connect(plan.target).await?),
        };
        match c.send(plan, i, body).await? {
            Sent::Accepted(latency) => {
                result.latencies_us.push(latency.as_micros() as u64);
                if plan.per_connection {
                    if let Some(mut c) = client.take() {
                        c.quit().await?;
                    }
                }
            }
            Sent::Reconnect => {
                client = None;
                pending = Some(i);
            }
            Sent::Refused(reply) => {
                result.refused += 1;
                result.first_refusal.get_or_insert(reply);
                client = None;
            }
        }
    }
    if let Some(mut c) = client {
        let _ = c.quit().await;
    }
    Ok(result)
}

enum Sent {
    Accepted(Duration),
    /// 421 before DATA: the server ended the session; send this message on a new one.
    Reconnect,
    Refused(String),
}

pub struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    /// Connects, reads the greeting, says EHLO.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            io: BufReader::new(stream),
        };
        expect(client.reply().await?, "220")?;
        client
            .io
            .get_mut()
            .write_all(b"EHLO load.bench\r\n")
            .await?;
        expect(client.reply().await?, "250")?;
        Ok(client)
    }

    async fn send(&mut self, plan: &Plan, i: usize, body: &[u8]) -> std::io::Result<Sent> {
        let domain = &plan.domains[i % plan.domains.len()];
        let envelope = format!(
            "MAIL FROM:<load{i}@{domain}>\r\nRCPT TO:<rcpt{}@sink.bench>\r\nDATA\r\n",
            i % 97
        );
        self.io.get_mut().write_all(envelope.as_bytes()).await?;
        for expected in ["250", "250", "354"] {
            let reply = self.reply().await?;
            if reply.starts_with("421") {
                return Ok(Sent::Reconnect);
            }
            if !reply.starts_with(expected) {
                // The session is dropped, so the rest of the pipelined replies do not matter.
                return Ok(Sent::Refused(reply));
            }
        }
        let headers = format!(
            "From: Load {i} <load{i}@{domain}>\r\nTo: <rcpt@sink.bench>\r\n\
             Subject: bench message {i}\r\nDate: Thu, 26 Nov 2026 00:00:00 +0000\r\n\
             Message-ID: <{i}.{}@load.bench>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n",
            std::process::id()
        );
        let w = self.io.get_mut();
        let want = plan.size.saturating_sub(headers.len()).min(body.len());
        let want = want - want % line(plan).len();
        if plan.header_bomb {
            // The fields go before the empty line that ends the header block.
            w.write_all(&headers.as_bytes()[..headers.len() - 2])
                .await?;
            w.write_all(&body[..want]).await?;
            w.write_all(b"\r\nbody\r\n").await?;
        } else {
            w.write_all(headers.as_bytes()).await?;
            w.write_all(&body[..want]).await?;
        }
        let t0 = Instant::now();
        w.write_all(b".\r\n").await?;
        let reply = self.reply().await?;
        if reply.starts_with("250") {
            Ok(Sent::Accepted(t0.elapsed()))
        } else {
            Ok(Sent::Refused(reply))
        }
    }

    async fn quit(&mut self) -> std::io::Result<()> {
        self.io.get_mut().write_all(b"QUIT\r\n").await?;
        self.reply().await.map(drop)
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    async fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }
}

fn expect(reply: String, code: &str) -> std::io::Result<()> {
    if reply.starts_with(code) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "expected {code}, got {reply}"
        )))
    }
}

/// A body of `line`s, at least `size` long; a message takes a prefix cut at a line end,
/// so the data always ends in CRLF before the final ".".
fn body_lines(size: usize, line: &[u8]) -> Vec<u8> {
    line.repeat(size / line.len() + 1)
}

/// The line a message is made of: text, or a tiny header field for a header bomb.
fn line(plan: &Plan) -> &'static [u8] {
    if plan.header_bomb {
        b"X: y\r\n"
    } else {
        LINE
    }
}

const LINE: &[u8] =
    b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs\r\n";
