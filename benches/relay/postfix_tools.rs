//! Postfix's own test tools as load and upstream (`--postfix-tools`): `smtp-source` sends
//! the messages (by default one per connection, as cron and most hosts send; `-d` keeps
//! each session for all its messages) and `smtp-sink -M N` takes them and exits after the
//! Nth, which marks the end of delivery. smtp-source reports no per-message times, so this
//! mode has rates and CPU but no latency figures.

use crate::load::Outcome;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = "smtp-source";
const SINK: &str = "smtp-sink";

/// smtp-sink as the upstream; killed when dropped.
pub struct Sink {
    child: Child,
    pub port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `smtp-sink -M n` on 127.0.0.1:`port` (0: a port the OS picks, found by binding
/// and releasing it) and waits until it accepts connections.
pub fn start_sink(port: u16, n: usize) -> Result<Sink, String> {
    let port = match port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port(),
        p => p,
    };
    let mut cmd = Command::new(SINK);
    // As root it must be told whom to run as.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .args(["-M", &n.to_string(), &format!("127.0.0.1:{port}"), "256"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{SINK} (apt-get install postfix): {e}"))?;
    let mut sink = Sink { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || sink.child.try_wait().ok().flatten().is_some() {
            return Err(format!("{SINK} does not listen on 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(sink)
}

impl Sink {
    /// Waits until smtp-sink has exited (it got its N messages) or `deadline` passed;
    /// returns when it exited, measured from `start`.
    pub async fn delivered(&mut self, start: Instant, deadline: Duration) -> Option<Duration> {
        while start.elapsed() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Some(start.elapsed()),
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        None
    }
}

/// Runs smtp-source against `target` and waits for it; every message is accepted or it
/// fails (smtp-source stops at the first refusal).
pub async fn run_source(
    target: SocketAddr,
    n: usize,
    size: usize,
    concurrency: usize,
    per_connection: bool,
) -> Result<Outcome, String> {
    let mut cmd = tokio::process::Command::new(SOURCE);
    cmd.args(["-s", &concurrency.to_string()])
        .args(["-l", &size.to_string()])
        .args(["-m", &n.to_string()])
        .args(["-f", "load@bench.test", "-t", "rcpt@sink.bench"])
        .args(["-M", "load.bench"]);
    if !per_connection {
        cmd.arg("-d");
    }
    cmd.arg(target.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("{SOURCE} (apt-get install postfix): {e}"))?;
    let elapsed = start.elapsed();
    let mut outcome = Outcome {
        elapsed,
        ..Outcome::default()
    };
    if out.status.success() {
        outcome.accepted = n;
    } else {
        outcome.refused = n;
        outcome.first_refusal = Some(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(outcome)
}
