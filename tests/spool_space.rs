//! The relay (the real binary) with its spool on a 1 MiB tmpfs, mounted in a private
//! mount namespace (`unshare --user --map-root-user --mount`, no privileges needed): the
//! files kept for reuse after delivery must not make it refuse mail once the queue is
//! empty.

mod common;

use common::upstream::FakeUpstream;
use common::*;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The relay child inside its own mount namespace; killed when dropped.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mounts a `size` tmpfs on `spool` for the child only, then execs `serve`.
fn spawn_on_tmpfs(
    config: &std::path::Path,
    spool: &std::path::Path,
    size: &str,
) -> (Relay, std::net::SocketAddr) {
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("mount -t tmpfs -o size=\"$0\" tmpfs \"$1\" && exec \"$2\" --config \"$3\" serve")
        .arg(size)
        .arg(spool)
        .arg(env!("CARGO_BIN_EXE_dkim-relay"))
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) is needed for this test");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(dkim_relay::relay::ACCEPTING) {
                let _ = tx.send(dkim_relay::relay::listen_addr_in_log(&line));
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("relay did not start (are user namespaces allowed?)")
        .expect("listen address in the log");
    (Relay(child), addr)
}

/// Queued messages, seen through the child's own mount namespace.
fn queued(relay: &Relay, spool: &std::path::Path) -> usize {
    let spool = format!("/proc/{}/root{}", relay.0.id(), spool.display());
    spooled_ids(std::path::Path::new(&spool)).len()
}

fn sized_message(subject: &str, kib: usize) -> String {
    let mut m = message("a@example.com", subject);
    let line = format!("{}\r\n", "x".repeat(510));
    for _ in 0..kib * 2 {
        m.push_str(&line);
    }
    m
}

#[tokio::test]
async fn files_kept_for_reuse_are_given_back_when_the_spool_runs_out_of_space() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = child::write_config(dir.path(), upstream.addr);
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (relay, addr) = spawn_on_tmpfs(&config, &spool, "1m");

    // Fourteen 56 KiB messages in the queue at once (the upstream holds each DATA), so
    // that after delivery fourteen files (~800 KiB of the 1 MiB) wait for reuse.
    upstream.set_data_delay(Duration::from_secs(3));
    let mut client = Client::greeted(addr).await;
    for i in 0..14 {
        let r = client
            .send(
                "a@host",
                &["u@example.net"],
                &sized_message(&format!("fill{i}"), 56),
            )
            .await;
        assert!(r.starts_with("250"), "message {i}: {r}");
    }
    upstream.set_data_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(60);
    while upstream.received().len() < 14 || queued(&relay, &spool) > 0 {
        assert!(
            Instant::now() < deadline,
            "the fill messages were not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The queue is empty: a 600 KiB message must be taken, not refused with 452.
    let r = client
        .send("a@host", &["u@example.net"], &sized_message("big", 600))
        .await;
    assert!(
        r.starts_with("250"),
        "an empty queue refused a message: {r}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.received().len() < 15 {
        assert!(
            Instant::now() < deadline,
            "the big message was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(relay);
}
