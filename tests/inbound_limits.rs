//! Limits against hostile or broken clients, with short configured limits rather than
//! long sleeps: a trickling client is cut off by the DATA deadline, a session has a
//! maximum age and message count, header blocks and command lines are bounded (AUTH gets
//! 12288), and 500 idle connections leave the relay serving or refusing with 421.

mod common;

use common::inbound::*;
use common::*;
use dkim_relay::config::{ByteSize, HumanDuration};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

#[tokio::test]
async fn a_client_trickling_data_is_cut_off_by_the_minimum_rate() {
    let (relay, upstream, dir) = relay_with(|c| {
        c.smtp.command_timeout = secs(1);
        c.smtp.data_timeout = secs(60);
        c.smtp.min_data_rate = 500;
    })
    .await;
    let stream = tokio::net::TcpStream::connect(relay.smtp_addr())
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    w.write_all(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<u@example.net>\r\nDATA\r\n")
        .await
        .unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line.starts_with("354") {
            break;
        }
    }
    let t0 = Instant::now();
    // Ten bytes a second, for up to 30 s: far below 500 B/s.
    let trickle = tokio::spawn(async move {
        for b in b"From: a@example.com\r\n\r\n".iter().cycle().take(300) {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .expect("the relay never cut the slow client off")
        .unwrap();
    assert_eq!(line.trim_end(), "421 4.4.2 Timeout; closing connection");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    trickle.abort();
    assert!(upstream.received().is_empty());
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_command_line_times_out_as_a_whole() {
    let (relay, _upstream, _dir) = relay_with(|c| c.smtp.command_timeout = secs(1)).await;
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    let t0 = Instant::now();
    // One byte every 300 ms never completes a line before the 1 s request deadline.
    for b in b"NOOP" {
        smtp.send_raw(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(smtp.reply().await, "421 4.4.2 Timeout; closing connection");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(smtp.closed().await);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_age_however_busy() {
    let (relay, _upstream, _dir) = relay_with(|c| {
        c.smtp.command_timeout = secs(1);
        c.smtp.max_session_age = secs(2);
    })
    .await;
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    let t0 = Instant::now();
    let last = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = smtp.cmd("NOOP").await;
        if !r.starts_with("250") || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
    };
    assert_eq!(last, "421 4.4.2 Session too long; closing connection");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    relay.shutdown().await;
}

#[tokio::test]
async fn messages_per_session_header_size_and_line_lengths_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "l");
    let users = users_file(dir.path(), &[("u", "p", &["example.com"])]);
    let (relay, upstream, root) = relay_with(|c| {
        c.smtp.max_messages_per_session = 1;
        c.smtp.max_header_size = ByteSize(2048);
        with_tls_and_auth(c, &pki, Some(users));
    })
    .await;
    let mut events = relay.subscribe();
    let mut smtp = Smtp::connect(relay.smtp_addr()).await;
    smtp.ehlo().await;
    // A header block over 2048 octets, in lines well under 998.
    let mut big = String::from("From: a@example.com\r\n");
    for i in 0..40 {
        big.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(60)));
    }
    big.push_str("\r\nbody\r\n");
    assert_eq!(
        smtp.send("a@example.com", "u@example.net", &big).await,
        "552 5.3.4 Message header too big; stay within smtp.max_header_size"
    );
    // A command line over 512 is refused; an AUTH line of 5000 is read as AUTH (538:
    // no TLS yet), and one over 12288 is too long.
    assert_eq!(
        smtp.cmd(&format!("NOOP {}", "x".repeat(600))).await,
        "500 5.5.2 Line too long; send commands within smtp.max_command_length octets"
    );
    assert!(smtp
        .cmd(&format!("AUTH PLAIN {}", "A".repeat(5000)))
        .await
        .starts_with("538 5.7.11"));
    assert_eq!(
        smtp.cmd(&format!("AUTH PLAIN {}", "A".repeat(13_000)))
            .await,
        "500 5.5.2 Line too long; send commands within smtp.max_command_length octets"
    );
    // One message per session: the second MAIL gets 421 and the connection closes.
    let r = smtp
        .send(
            "a@example.com",
            "u@example.net",
            &message("a@example.com", "one"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        smtp.cmd("MAIL FROM:<a@example.com>").await,
        "421 4.7.0 Too many messages in this session; reconnect"
    );
    assert!(smtp.closed().await);
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(queued(root.path()), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn five_hundred_idle_connections_stay_within_the_limit_and_the_relay_keeps_serving() {
    let (relay, upstream, _dir) = relay_with(|c| {
        c.smtp.max_connections = 100;
        c.smtp.max_connections_per_client = 1000;
    })
    .await;
    let mut events = relay.subscribe();
    let addr = relay.smtp_addr();
    let mut idle = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for _ in 0..500 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        if line.starts_with("220 ") {
            greeted += 1;
        } else {
            assert_eq!(
                line.trim_end(),
                "421 4.7.0 Too many connections; try again later"
            );
            refused += 1;
        }
        idle.push(reader);
    }
    assert_eq!((greeted, refused), (100, 400));
    // An honest client now is told 421 at once rather than left hanging.
    let mut honest = Smtp::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(honest.reply().await.starts_with("421 4.7.0"));
    // When the idle ones go, it is served.
    drop(idle);
    let mut served = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut smtp = Smtp::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        if smtp.reply().await.starts_with("220") {
            served = Some(smtp);
            break;
        }
    }
    let mut smtp = served.expect("never served after the idle connections closed");
    smtp.ehlo().await;
    let r = smtp
        .send(
            "a@example.com",
            "u@example.net",
            &message("a@example.com", "after-flood"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    relay.shutdown().await;
}
