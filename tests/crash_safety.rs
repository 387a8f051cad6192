//! Crash safety (RFC 5321 §6.1): the relay runs as a child process, several clients send
//! 500 messages at once, and the relay is killed with SIGKILL part-way, at several points;
//! the clients carry on with their remaining messages once it is restarted.
//! Every message that got a 250 must reach the upstream at least once,
//! and the duplicates may not exceed the messages that were being handed to the upstream
//! at the kill (accepted by the upstream, still in the spool).
//!
//! Figures per kill point are printed; see them with
//! `cargo test --test crash_safety -- --nocapture`.

mod common;

use common::crash::{queue_id_of, spooled_ids, tag_of, wait_until};

use common::child::{spawn_relay, write_config};
use common::upstream::FakeUpstream;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MESSAGES: usize = 500;
const CLIENTS: usize = 5;
use common::child::WORKERS;

/// A client that reports errors instead of panicking: the relay dies under it.
struct Smtp {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Smtp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Smtp> {
        let (r, w) = TcpStream::connect(addr).await?.into_split();
        let mut s = Smtp {
            r: BufReader::new(r),
            w,
        };
        s.reply().await?;
        s.cmd("EHLO crash.test").await?;
        Ok(s)
    }

    async fn reply(&mut self) -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Sends one message; Ok(true) when the relay answered 250 at the end of DATA.
    async fn send(&mut self, tag: &str) -> std::io::Result<bool> {
        self.cmd("MAIL FROM:<app@example.com>").await?;
        self.cmd("RCPT TO:<u@example.net>").await?;
        self.cmd("DATA").await?;
        let body = format!(
            "From: <app@example.com>\r\nTo: <u@example.net>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@crash.test>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nmessage {tag}\r\n.\r\n"
        );
        self.w.write_all(body.as_bytes()).await?;
        Ok(self.reply().await?.starts_with("250"))
    }
}

#[derive(Debug)]
struct Figures {
    kill_after_acks: usize,
    sent: usize,
    acknowledged_at_kill: usize,
    acknowledged: usize,
    delivered_at_kill: usize,
    in_flight_at_kill: usize,
    delivered: usize,
    duplicates: usize,
}

async fn run_kill_point(kill_after_acks: usize) -> Figures {
    let upstream = FakeUpstream::start().await;
    // A slow reply to DATA widens the window in which the upstream has a message the
    // relay has not yet removed from its spool: the kill then lands in it, as it would
    // with a real provider's latency.
    upstream.set_data_delay(Duration::from_millis(15));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut child, addr) = spawn_relay(&config, log.clone());

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let ack_count = Arc::new(AtomicUsize::new(0));
    // Where the relay listens; changes when it is restarted. Clients whose connection
    // dies wait for the new address and go on with their next message. The message they
    // were sending is not sent again (it may or may not have been stored), so every
    // duplicate the upstream sees is the relay's own doing.
    let (relay_addr, addr_rx) = tokio::sync::watch::channel(addr);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (acked, sent, ack_count) = (acked.clone(), sent.clone(), ack_count.clone());
        let mut addr_rx = addr_rx.clone();
        clients.push(tokio::spawn(async move {
            let mut smtp = None;
            for i in 0..MESSAGES / CLIENTS {
                if smtp.is_none() {
                    loop {
                        let addr = *addr_rx.borrow_and_update();
                        if let Ok(s) = Smtp::connect(addr).await {
                            smtp = Some(s);
                            break;
                        }
                        addr_rx.changed().await.unwrap();
                    }
                }
                let Some(conn) = smtp.as_mut() else { continue };
                let tag = format!("m{c}x{i}");
                sent.fetch_add(1, Ordering::SeqCst);
                match conn.send(&tag).await {
                    Ok(true) => {
                        acked.lock().unwrap().insert(tag);
                        ack_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    Err(_) => {
                        // The relay was killed: wait for the next one.
                        smtp = None;
                        addr_rx.changed().await.unwrap();
                    }
                }
            }
        }));
    }
    wait_until("the kill point", Duration::from_secs(120), || {
        ack_count.load(Ordering::SeqCst) >= kill_after_acks
    })
    .await;
    child.kill9();
    // Let the upstream read what the relay wrote before it died.
    wait_until(
        "upstream connections close",
        Duration::from_secs(30),
        || upstream.open() == 0,
    )
    .await;

    let spool = dir.path().join("spool");
    let still_spooled = spooled_ids(&spool);
    let at_kill = upstream.received();
    let in_flight_at_kill = at_kill
        .iter()
        .filter_map(|m| queue_id_of(&m.data))
        .filter(|id| still_spooled.contains(id))
        .count();
    let acked_at_kill = acked.lock().unwrap().len();

    let (child, addr) = spawn_relay(&config, log.clone());
    relay_addr.send(addr).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    wait_until(
        "every acknowledged message is delivered",
        Duration::from_secs(120),
        || {
            let got: HashSet<String> = upstream
                .received()
                .iter()
                .filter_map(|m| tag_of(&m.data))
                .collect();
            acked.iter().all(|t| got.contains(t)) && spooled_ids(&spool).is_empty()
        },
    )
    .await;
    child.stop();

    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in upstream.received() {
        *counts.entry(tag_of(&m.data).unwrap()).or_default() += 1;
    }
    let duplicates = counts.values().map(|n| n - 1).sum();
    Figures {
        kill_after_acks,
        sent: sent.load(Ordering::SeqCst),
        acknowledged_at_kill: acked_at_kill,
        acknowledged: acked.len(),
        delivered_at_kill: at_kill.len(),
        in_flight_at_kill,
        delivered: counts.len(),
        duplicates,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_loses_no_acknowledged_message() {
    let mut all = Vec::new();
    for kill_after_acks in [25, 250, 475] {
        let f = run_kill_point(kill_after_acks).await;
        println!(
            "kill after {:>3} acks: sent {}, acknowledged {} ({} before the kill), delivered before the kill {:>3}, in flight at the kill {}, delivered {}, duplicates {}",
            f.kill_after_acks, f.sent, f.acknowledged, f.acknowledged_at_kill, f.delivered_at_kill, f.in_flight_at_kill, f.delivered, f.duplicates
        );
        assert_eq!(f.sent, MESSAGES, "{f:?}");
        // At most one message per client was cut off by the kill.
        assert!(f.acknowledged >= MESSAGES - CLIENTS, "{f:?}");
        assert!(f.acknowledged_at_kill >= kill_after_acks, "{f:?}");
        assert!(f.delivered >= f.acknowledged, "{f:?}");
        assert!(f.duplicates <= f.in_flight_at_kill, "{f:?}");
        assert!(f.in_flight_at_kill <= WORKERS, "{f:?}");
        all.push(f);
    }
}
