//! The relay as a child process while its upstream is down for a while and then back:
//! everything queued is delivered, and the log tells the story, one line per event keyed
//! by queue id (accepted, deferred with the reason, delivered, done). The retry is asked
//! for with `queue flush`, not waited for.

mod common;

use common::child::{queue_cmd, spawn_relay, write_config};
use common::upstream::FakeUpstream;
use common::Client;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn wait_for_log(log: &Mutex<Vec<String>>, what: &str, pred: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    while !pred(&log.lock().unwrap()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; log:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines_with(log: &[String], id: &str, event: &str) -> usize {
    log.iter()
        .filter(|l| l.contains(id) && l.contains(event))
        .count()
}

#[tokio::test]
async fn an_outage_then_recovery_is_in_the_log_and_everything_is_delivered() {
    let upstream = FakeUpstream::start().await;
    upstream.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream.addr);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (child, addr) = spawn_relay(&config, log.clone());

    let mut client = Client::greeted(addr).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = client
            .send(
                "app@example.com",
                &["u@example.net"],
                &common::message("app@example.com", &format!("outage-{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        ids.push(r.rsplit(' ').next().unwrap().to_string());
    }
    wait_for_log(&log, "three deferrals", |l| {
        ids.iter().all(|id| lines_with(l, id, " deferred") >= 1)
    })
    .await;
    assert!(upstream.received().is_empty());

    upstream.set_down(false);
    let (ok, out) = queue_cmd(&config, &["flush"]);
    assert!(ok, "{out}");
    wait_for_log(&log, "three deliveries", |l| {
        ids.iter().all(|id| lines_with(l, id, " done") >= 1)
    })
    .await;
    assert_eq!(upstream.received().len(), 3);
    let log = log.lock().unwrap().clone();
    for id in &ids {
        let accepted = lines_with(&log, id, "message accepted");
        let deferred = lines_with(&log, id, " deferred");
        let delivered = lines_with(&log, id, " delivered");
        assert_eq!((accepted, delivered), (1, 1), "{id}:\n{}", log.join("\n"));
        assert!(deferred >= 1);
        let reason = log
            .iter()
            .find(|l| l.contains(id.as_str()) && l.contains(" deferred"))
            .unwrap();
        assert!(reason.contains("reason="), "{reason}");
    }
    child.stop();
}
