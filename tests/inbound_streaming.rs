//! DATA streams to the spool (issue "Hostile clients" 5): the header block is bounded while
//! it is read, the body goes to the spool's temp file as it arrives, a disconnect leaves
//! nothing, and concurrent transfers share one memory budget (`smtp.max_data_memory`).

mod common;

use common::child::{spawn_relay, write_config};
use common::upstream::FakeUpstream;
use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::config::{ByteSize, HumanDuration};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Files in the spool's queue folder (temp files start with a dot).
fn queue_files(spool: &Path) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(spool.join("queue")) else {
        return Vec::new();
    };
    let mut files: Vec<(String, u64)> = dir
        .map(|e| e.unwrap())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    files.sort();
    files
}

/// Polls (bounded: 20 s) until `pred` holds for the queue folder; returns its files.
async fn until_queue(spool: &Path, pred: impl Fn(&[(String, u64)]) -> bool) -> Vec<(String, u64)> {
    for _ in 0..2000 {
        let files = queue_files(spool);
        if pred(&files) {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("queue never got there: {:?}", queue_files(spool));
}

fn kib_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25mb_header_block_is_refused_with_552_without_being_buffered() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    let (relay, addr) = spawn_relay(&config, Arc::new(Mutex::new(Vec::new())));
    let before = kib_field(relay.pid(), "VmHWM:");

    let mut client = Client::greeted(addr).await;
    assert!(client
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(client
        .cmd("RCPT TO:<b@example.net>")
        .await
        .starts_with("250"));
    assert!(client.cmd("DATA").await.starts_with("354"));
    // Just under 25 MB of tiny fields: within max_message_size (25 MB by default), far
    // over the header limit (100 KiB).
    client.send_raw(b"From: a@example.com\r\n").await;
    client.send_raw(&b"X: y\r\n".repeat(4_166_000)).await;
    client.send_raw(b"\r\nbody\r\n.\r\n").await;
    assert_eq!(
        client.reply().await,
        "552 5.3.4 Message header too big; stay within smtp.max_header_size"
    );
    assert!(client.cmd("NOOP").await.starts_with("250"));

    // Peak RSS: the relay grew by far less than the header block (it used to hold all of it).
    let grew_kib = kib_field(relay.pid(), "VmHWM:").saturating_sub(before);
    assert!(grew_kib < 16 * 1024, "peak RSS grew by {grew_kib} KiB");
    assert!(queue_files(&dir.path().join("spool")).is_empty());
    assert_eq!(upstream.transactions(), 0);
    relay.stop();
}

#[tokio::test]
async fn the_body_streams_to_a_temp_file_as_it_arrives_and_a_disconnect_removes_it() {
    let (relay, upstream, root) = relay_with(|_| {}).await;
    let spool = root.path().join("spool");
    let mut client = Client::greeted(relay.smtp_addr()).await;
    assert!(client
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(client
        .cmd("RCPT TO:<b@example.net>")
        .await
        .starts_with("250"));
    assert!(client.cmd("DATA").await.starts_with("354"));
    client
        .send_raw(message("a@example.com", "streamed").as_bytes())
        .await;
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    let body = line.repeat(2_000_000 / line.len());
    client.send_raw(&body).await;

    // The end of data has not been sent, yet most of the message is on disk already.
    let files = until_queue(&spool, |f| {
        f.iter()
            .any(|(name, len)| name.starts_with('.') && *len > 1_500_000)
    })
    .await;
    assert_eq!(files.len(), 1, "{files:?}");

    drop(client);
    until_queue(&spool, |f| f.is_empty()).await;
    // And the relay still serves.
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "a@example.com",
            &["b@example.net"],
            &message("a@example.com", "after"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    relay.shutdown().await;
    assert!(upstream
        .received()
        .iter()
        .all(|m| !String::from_utf8_lossy(&m.data).contains("Subject: streamed")));
}

#[tokio::test]
async fn a_message_written_in_tiny_pieces_arrives_byte_for_byte_and_signed() {
    let (relay, upstream, root) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    let cache = TxtCache::from_store(&root.path().join("keys"));
    let mut message = message("a@example.com", "pieces").into_bytes();
    for i in 0..4000 {
        // Lines with a leading dot (stuffed on the wire) among plain ones.
        let line = if i % 7 == 0 {
            format!(".dot line {i} {}\r\n", "d".repeat(50))
        } else {
            format!("line {i} {}\r\n", "x".repeat(60))
        };
        message.extend_from_slice(line.as_bytes());
    }
    let mut wire = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");

    let stream = tokio::net::TcpStream::connect(relay.smtp_addr())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let say = async |w: &mut tokio::net::tcp::OwnedWriteHalf, r: &mut _, line: &str| {
        w.write_all(line.as_bytes()).await.unwrap();
        read_reply_lines(r).await.pop().unwrap()
    };
    assert!(read_reply_lines(&mut r).await[0].starts_with("220"));
    assert!(say(&mut w, &mut r, "EHLO client.test\r\n")
        .await
        .starts_with("250"));
    assert!(say(&mut w, &mut r, "MAIL FROM:<a@example.com>\r\n")
        .await
        .starts_with("250"));
    assert!(say(&mut w, &mut r, "RCPT TO:<b@example.net>\r\n")
        .await
        .starts_with("250"));
    assert!(say(&mut w, &mut r, "DATA\r\n").await.starts_with("354"));
    // Pieces of 1 to 13 bytes, so every boundary (CRLF, the empty line, a stuffed dot, the
    // final dot) falls inside a piece somewhere.
    let mut at = 0;
    for size in (1..=13).cycle() {
        if at >= wire.len() {
            break;
        }
        let end = (at + size).min(wire.len());
        w.write_all(&wire[at..end]).await.unwrap();
        at = end;
    }
    let reply = read_reply_lines(&mut r).await.pop().unwrap();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    wait_done(&mut events, 1).await;

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let data = &received[0].data;
    assert!(data.ends_with(&message), "the message changed on its way");
    assert_signed(data, &cache, DOMAIN).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn data_waits_for_its_share_of_the_memory_budget_then_gets_452() {
    let (relay, _upstream, _root) = relay_with(|c| {
        c.smtp.max_header_size = ByteSize(1024);
        // Exactly one transfer with the largest header block.
        c.smtp.max_data_memory = ByteSize(dkim_relay::spool::largest_transfer(1024));
        c.smtp.data_memory_wait = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let mut first = Client::greeted(relay.smtp_addr()).await;
    assert!(first
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(first
        .cmd("RCPT TO:<b@example.net>")
        .await
        .starts_with("250"));
    assert!(first.cmd("DATA").await.starts_with("354"));

    let mut second = Client::greeted(relay.smtp_addr()).await;
    assert!(second
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(second
        .cmd("RCPT TO:<b@example.net>")
        .await
        .starts_with("250"));
    assert_eq!(
        second.cmd("DATA").await,
        "452 4.3.1 Too many messages in transfer at once; try again later"
    );

    first
        .send_raw(format!("{}.\r\n", message("a@example.com", "one")).as_bytes())
        .await;
    assert!(first.reply().await.starts_with("250 2.0.0"));
    // The transaction survived the 452: DATA again, now with memory to spare.
    assert!(second.cmd("DATA").await.starts_with("354"));
    second
        .send_raw(format!("{}.\r\n", message("a@example.com", "two")).as_bytes())
        .await;
    assert!(second.reply().await.starts_with("250 2.0.0"));
    relay.shutdown().await;
}

#[test]
fn a_budget_too_small_for_one_message_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.smtp.max_data_memory = ByteSize(100 * 1024);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("smtp.max_data_memory"), "{err}");
}
