//! The spool under one message per connection (issue 18): many clients each connect, send
//! one message and quit, so many commits (each fsyncing its data, renaming, and sharing
//! the directory fsync with the commits running at the same time) are in flight at once.
//! - SIGKILL part-way: every message that got a 250 reaches the upstream after the
//!   restart; duplicates are at most the messages being handed over at the kill.
//! - A clean stop (SIGTERM) after everything was delivered, and a restart: nothing is
//!   delivered a second time (the files kept for reuse are not messages), and the queue
//!   folder holds no message.

mod common;

use common::crash::{queue_id_of, spooled_ids, tag_of, wait_until};

use common::child::{spawn_relay, write_config, WORKERS};
use common::upstream::FakeUpstream;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 20;

/// Connects, sends one message tagged `tag`, quits. Ok(true) when it got 250.
async fn send_one(addr: SocketAddr, tag: &str) -> std::io::Result<bool> {
    let (r, mut w) = TcpStream::connect(addr).await?.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    }
    reply(&mut r).await?;
    for line in [
        "EHLO pc.test",
        "MAIL FROM:<app@example.com>",
        "RCPT TO:<u@example.net>",
        "DATA",
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).await?;
        reply(&mut r).await?;
    }
    let body = format!(
        "From: <app@example.com>\r\nTo: <u@example.net>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@pc.test>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nmessage {tag}\r\n.\r\n"
    );
    w.write_all(body.as_bytes()).await?;
    let ok = reply(&mut r).await?.starts_with("250");
    w.write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut r).await;
    Ok(ok)
}

fn tag_counts(upstream: &FakeUpstream) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in upstream.received() {
        *counts
            .entry(tag_of(&m.data).unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_connection_survives_sigkill_and_a_clean_restart_delivers_nothing_twice() {
    let upstream = FakeUpstream::start().await;
    upstream.set_data_delay(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    let spool = dir.path().join("spool");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut child, addr) = spawn_relay(&config, log.clone());

    // Clients send until the relay dies under them, then wait for the new address.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let ack_count = Arc::new(AtomicUsize::new(0));
    let (relay_addr, addr_rx) = tokio::sync::watch::channel(addr);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (acked, ack_count, mut addr_rx) = (acked.clone(), ack_count.clone(), addr_rx.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..PER_CLIENT {
                let tag = format!("p{c}x{i}");
                let addr = *addr_rx.borrow_and_update();
                match send_one(addr, &tag).await {
                    Ok(true) => {
                        acked.lock().unwrap().insert(tag);
                        ack_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    // Killed mid-message: that one may or may not be stored; not resent.
                    Err(_) => {
                        if *addr_rx.borrow() == addr {
                            addr_rx.changed().await.unwrap();
                        }
                    }
                }
            }
        }));
    }
    let total = CLIENTS * PER_CLIENT;
    wait_until("the kill point", Duration::from_secs(120), || {
        ack_count.load(Ordering::SeqCst) >= total / 2
    })
    .await;
    child.kill9();
    wait_until(
        "upstream connections close",
        Duration::from_secs(30),
        || upstream.open() == 0,
    )
    .await;
    let still_spooled = spooled_ids(&spool);
    let in_flight_at_kill = upstream
        .received()
        .iter()
        .filter_map(|m| queue_id_of(&m.data))
        .filter(|id| still_spooled.contains(id))
        .count();

    let (child, addr) = spawn_relay(&config, log.clone());
    relay_addr.send(addr).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= total - CLIENTS,
        "acknowledged {}",
        acked.len()
    );
    wait_until(
        "every acknowledged message is delivered",
        Duration::from_secs(120),
        || {
            let got = tag_counts(&upstream);
            acked.iter().all(|t| got.contains_key(t)) && spooled_ids(&spool).is_empty()
        },
    )
    .await;
    let duplicates: usize = tag_counts(&upstream).values().map(|n| n - 1).sum();
    assert!(
        duplicates <= in_flight_at_kill,
        "{duplicates} > {in_flight_at_kill}"
    );
    assert!(in_flight_at_kill <= WORKERS);

    // A clean stop with everything delivered, a restart, and one more message: when it is
    // through, nothing before it came out again.
    child.stop();
    let before = upstream.received().len();
    let (child, addr) = spawn_relay(&config, log.clone());
    assert!(send_one(addr, "after-restart").await.unwrap());
    wait_until(
        "the message after the restart",
        Duration::from_secs(60),
        || tag_counts(&upstream).contains_key("after-restart"),
    )
    .await;
    child.stop();
    assert_eq!(
        upstream.received().len(),
        before + 1,
        "redelivered after a clean restart"
    );
    assert!(spooled_ids(&spool).is_empty());
}
