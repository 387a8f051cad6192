//! /readyz over HTTP on 127.0.0.1: unready while the queue cannot store mail, and not
//! unready at the first deferral after start. (Its own test binary: the delivery
//! counters behind readiness are process-wide.)

mod common;

use common::upstream::FakeUpstream;
use common::*;
use dkim_relay::delivery::DeliveryEvent;

async fn readyz(addr: std::net::SocketAddr) -> (u16, String) {
    common::http::get(addr, "/readyz").await
}

#[tokio::test]
async fn a_first_deferral_after_start_keeps_the_relay_ready() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_to_data("451 4.3.0 try again later");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let relay = start(config).await;
    let http = relay.metrics_addr().unwrap();
    let mut events = relay.subscribe();
    assert_eq!(readyz(http).await.0, 200);

    // The first deferral since start is no reason to take the relay out of service.
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "defer"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_for(&mut events, |e| matches!(e, DeliveryEvent::Deferred { .. })).await;
    let (code, body) = readyz(http).await;
    assert_eq!(code, 200, "{body}");

    relay.shutdown().await;
}

#[tokio::test]
async fn readiness_is_lost_while_the_queue_cannot_store_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let queue = config.spool.dir.join("queue");
    let relay = start(config).await;
    let http = relay.metrics_addr().unwrap();
    assert_eq!(readyz(http).await.0, 200);

    // A full disk (the spool's fault switch, as the store path sees it).
    let full = relay.spool_disk_full();
    full.set(true);
    let (code, body) = readyz(http).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("queue"), "{body}");
    full.set(false);
    assert_eq!(readyz(http).await.0, 200);

    // queue/ unusable while spool/ itself is writable (tests run as root, where a mode
    // bit would not stop a write: put a file where the folder was).
    let moved = queue.with_extension("moved");
    std::fs::rename(&queue, &moved).unwrap();
    std::fs::write(&queue, "not a folder").unwrap();
    let (code, body) = readyz(http).await;
    assert_eq!(code, 503, "{body}");
    std::fs::remove_file(&queue).unwrap();
    std::fs::rename(&moved, &queue).unwrap();
    assert_eq!(readyz(http).await.0, 200);
    relay.shutdown().await;
}
