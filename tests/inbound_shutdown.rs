//! Graceful shutdown: stop accepting, answer idle sessions 421, let a DATA transfer in
//! progress finish within the grace period (then 421), and deliver every message that got
//! 250 after a restart. Once in-process, once with the real binary and SIGTERM.

mod common;

use common::inbound::*;
use common::upstream::FakeUpstream;
use common::*;
use dkim_relay::config::HumanDuration;
use std::time::Duration;

#[tokio::test]
async fn shutdown_during_data_gives_definite_answers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // First life: the upstream is down, so everything accepted stays in the spool.
    let mut first = config(dir.path(), Some(closed_port()));
    first.smtp.shutdown_grace = HumanDuration(Duration::from_secs(2));
    let relay = start(first).await;
    let addr = relay.smtp_addr();

    let mut done = Smtp::connect(addr).await;
    done.ehlo().await;
    let r = done
        .send(
            "a@example.com",
            "u@example.net",
            &message("a@example.com", "before"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");

    let mut finishing = Smtp::connect(addr).await;
    let mut stalled = Smtp::connect(addr).await;
    for smtp in [&mut finishing, &mut stalled] {
        smtp.ehlo().await;
        assert!(smtp
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250"));
        assert!(smtp.cmd("RCPT TO:<u@example.net>").await.starts_with("250"));
        assert!(smtp.cmd("DATA").await.starts_with("354"));
        smtp.send_raw(b"From: a@example.com\r\nSubject: during\r\n\r\nfirst half\r\n")
            .await;
    }
    let mut idle = Smtp::connect(addr).await;
    idle.ehlo().await;

    let stopping = tokio::spawn(relay.shutdown());
    // The idle session hears of it at once.
    assert_eq!(idle.reply().await, "421 4.3.2 Service shutting down");
    // No new connections.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "still accepting after shutdown");
    // A transfer that completes within the grace is accepted, then the session closes.
    finishing.send_raw(b"second half\r\n.\r\n").await;
    let r = finishing.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(finishing.reply().await, "421 4.3.2 Service shutting down");
    // One that does not gets 421 when the grace runs out, and is not stored.
    assert_eq!(stalled.reply().await, "421 4.3.2 Service shutting down");
    stopping.await.unwrap();
    assert_eq!(
        queued(dir.path()),
        2,
        "both 250'd messages are in the spool"
    );

    // Second life: the upstream is back; both messages are delivered.
    let upstream = FakeUpstream::start().await;
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    relay.flush();
    if upstream.received().len() < 2 {
        wait_done(&mut events, 2 - upstream.received().len()).await;
    }
    let mut subjects: Vec<String> = upstream
        .received()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).to_string();
            text.lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Subject: before", "Subject: during"]);
    assert_eq!(queued(dir.path()), 0);
    relay.shutdown().await;
}

/// The real binary: SIGTERM while a client is in DATA.
#[tokio::test]
async fn sigterm_to_the_binary_lets_the_transfer_finish_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Some(closed_port()));
    cfg.smtp.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let toml = format!(
        "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n[spool]\ndir = \"{}\"\nfsync = false\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[[domains]]\nname = \"example.com\"\n[delivery]\noutbox_dir = \"{}\"\n",
        cfg.spool.dir.display(),
        cfg.keys.dir.display(),
        dir.path().join("outbox").display(),
    );
    let config_file = dir.path().join("relay.toml");
    std::fs::write(&config_file, toml).unwrap();
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
            .arg("--config")
            .arg(&config_file)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut smtp = Smtp::new(stream.expect("the relay never listened"));
    assert!(smtp.reply().await.starts_with("220"));
    smtp.ehlo().await;
    assert!(smtp
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250"));
    assert!(smtp.cmd("RCPT TO:<u@example.net>").await.starts_with("250"));
    assert!(smtp.cmd("DATA").await.starts_with("354"));
    smtp.send_raw(b"From: a@example.com\r\nSubject: sigterm\r\n\r\nhalf\r\n")
        .await;
    let pid = child.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    smtp.send_raw(b"rest\r\n.\r\n").await;
    let r = smtp.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(smtp.reply().await, "421 4.3.2 Service shutting down");
    let mut exit = None;
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = exit.expect("the relay did not exit");
    assert!(exit.success(), "{exit}");
    // No upstream in this file: the message was signed into the outbox, or still waits in
    // the spool if shutdown came first. Either way it is not lost.
    let outbox = std::fs::read_dir(dir.path().join("outbox"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(queued(dir.path()) + outbox, 1);
}

/// Kills the child if the test fails before it exits.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
