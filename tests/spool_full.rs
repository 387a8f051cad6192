//! A spool write that fails (disk full) answers 452 4.3.1, never 250, leaves no temp file,
//! and the relay takes mail again once there is space. Once through the spool's
//! fault-injection seam (runs anywhere), once on a real tiny tmpfs (needs root).

mod common;

use common::upstream::FakeUpstream;
use common::*;
use std::path::Path;

fn queue_files(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

async fn send(client: &mut Client, subject: &str, body_kb: usize) -> String {
    let text = format!(
        "{}{}",
        message("app@example.com", subject),
        format!("{}\r\n", "x".repeat(76)).repeat(body_kb * 1024 / 78)
    );
    client
        .send("app@example.com", &["u@example.net"], &text)
        .await
}

#[tokio::test]
async fn a_full_spool_answers_452_keeps_nothing_and_recovers() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let full = relay.spool_disk_full();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    full.set(true);
    let r = send(&mut client, "while-full", 4).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert_eq!(queue_files(&dir.path().join("spool")), Vec::<String>::new());

    full.set(false);
    let r = send(&mut client, "after", 4).await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: after"));
    relay.shutdown().await;
}

/// Unmounts on drop, even when the test fails (lazily: a failed test may still hold files).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_real_full_filesystem_answers_452_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&fs)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the seam test covers the code path"
        );
        return;
    }
    let _mount = Mount(fs.clone());
    let upstream = FakeUpstream::start().await;
    let mut config = config(dir.path(), Some(upstream.addr));
    config.spool.dir = fs.join("spool");
    let relay = start(config).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;

    // Fill the filesystem, leaving a little room: less than the message needs.
    let filler = fs.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let r = send(&mut client, "no-room", 64).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert_eq!(
        queue_files(&fs.join("spool")),
        Vec::<String>::new(),
        "temp file left behind"
    );

    std::fs::remove_file(&filler).unwrap();
    let r = send(&mut client, "room-again", 64).await;
    assert!(r.starts_with("250"), "{r}");
    wait_done(&mut events, 1).await;
    assert_eq!(upstream.received().len(), 1);
    relay.shutdown().await;
}
