//! `dkim-relay queue …` run as the real binary against a relay that is running (through
//! its control socket), and against a spool with no relay (through the spool lock).

mod common;

use common::upstream::FakeUpstream;
use common::*;
use dkim_relay::delivery::DeliveryEvent;
use serde_json::Value;
use std::path::Path;

/// Runs the binary with a config naming only the spool; returns (success, stdout).
async fn queue(root: &Path, args: &[&str]) -> (bool, String) {
    let config = root.join("queue-cli.toml");
    let spool = root.join("spool");
    std::fs::write(
        &config,
        format!("[spool]\ndir = \"{}\"\nfsync = false\n", spool.display()),
    )
    .unwrap();
    let mut all = vec![
        "--config".to_string(),
        config.display().to_string(),
        "queue".into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
            .args(&all)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), format!("{stdout}{stderr}"))
}

async fn list(root: &Path) -> Vec<Value> {
    let (ok, out) = queue(root, &["list", "--json"]).await;
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn submit(addr: std::net::SocketAddr, subject: &str) -> String {
    let mut client = Client::greeted(addr).await;
    let r = client
        .send(
            "app@example.com",
            &["u@example.net"],
            &message("app@example.com", subject),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    r.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn queue_commands_work_against_a_running_relay() {
    let upstream = FakeUpstream::start().await;
    upstream.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let mut events = relay.subscribe();
    let a = submit(relay.smtp_addr(), "msg-a").await;
    let b = submit(relay.smtp_addr(), "msg-b").await;
    let c = submit(relay.smtp_addr(), "msg-c").await;
    for _ in 0..3 {
        wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    }

    let entries = list(dir.path()).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    let first = entries.iter().find(|e| e["id"] == a.as_str()).unwrap();
    assert_eq!(first["sender"], "app@example.com");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["recipients"][0]["address"], "u@example.net");
    assert!(
        first["last_error"].as_str().unwrap().contains("upstream"),
        "{first}"
    );
    let (ok, text) = queue(dir.path(), &["list"]).await;
    assert!(
        ok && text.contains(&a) && text.contains("3 message(s)"),
        "{text}"
    );

    let (ok, out) = queue(dir.path(), &["hold", &a]).await;
    assert!(ok, "{out}");
    let (ok, out) = queue(dir.path(), &["show", &a]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("held:         true") && out.contains("Subject: msg-a"),
        "{out}"
    );
    let (ok, out) = queue(dir.path(), &["remove", &c]).await;
    assert!(ok, "{out}");
    assert!(!spooled_ids(&dir.path().join("spool")).contains(&c));
    let (ok, out) = queue(dir.path(), &["show", &c]).await;
    assert!(!ok && out.contains("no message"), "{out}");

    // Upstream back: flush sends b; a stays held until released.
    upstream.set_down(false);
    let (ok, out) = queue(dir.path(), &["flush"]).await;
    assert!(ok, "{out}");
    let done = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Done { .. })).await;
    assert_eq!(
        done,
        DeliveryEvent::Done {
            id: b.clone().try_into().unwrap()
        }
    );
    let entries = list(dir.path()).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["held"], true);
    let (ok, out) = queue(dir.path(), &["release", &a]).await;
    assert!(ok, "{out}");
    let done = wait_for(&mut events, |e| matches!(e, DeliveryEvent::Done { .. })).await;
    assert_eq!(
        done,
        DeliveryEvent::Done {
            id: a.clone().try_into().unwrap()
        }
    );
    assert_eq!(upstream.received().len(), 2);
    assert!(list(dir.path()).await.is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn with_no_relay_running_the_commands_work_on_the_spool_and_a_hold_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(closed_port()))).await;
    let mut events = relay.subscribe();
    let a = submit(relay.smtp_addr(), "offline-a").await;
    wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    relay.shutdown().await;

    let entries = list(dir.path()).await;
    assert_eq!(entries.len(), 1);
    let (ok, out) = queue(dir.path(), &["hold", &a]).await;
    assert!(ok, "{out}");

    let upstream = FakeUpstream::start().await;
    let relay = start(config(dir.path(), Some(upstream.addr))).await;
    let entries = list(dir.path()).await;
    assert_eq!(entries[0]["held"], true, "{entries:?}");
    let (ok, out) = queue(dir.path(), &["flush", &a]).await;
    assert!(!ok && out.contains("held"), "{out}");
    assert!(upstream.received().is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_second_relay_on_the_same_spool_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config(dir.path(), None)).await;
    let second = dkim_relay::relay::start(config(dir.path(), None)).await;
    assert!(matches!(
        second,
        Err(dkim_relay::relay::StartError::SpoolLocked(_))
    ));
    first.shutdown().await;
}

/// Issue 13 item 5: one implementation of each queue command. With no relay running,
/// `flush ID` on a held message used to say "no message"; it now answers what the running
/// relay answers: it is held, release it first.
#[tokio::test]
async fn with_no_relay_running_flush_of_a_held_message_says_it_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path(), Some(closed_port()))).await;
    let mut events = relay.subscribe();
    let a = submit(relay.smtp_addr(), "held-offline").await;
    wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    relay.shutdown().await;

    let (ok, out) = queue(dir.path(), &["hold", &a]).await;
    assert!(ok, "{out}");
    let (ok, out) = queue(dir.path(), &["flush", &a]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{a} is held; release it first")),
        "{out}"
    );
    let (ok, out) = queue(dir.path(), &["release", &a]).await;
    assert!(ok && out.contains("released"), "{out}");
    let (ok, out) = queue(dir.path(), &["release", &a]).await;
    assert!(!ok && out.contains("is not held"), "{out}");
}
