//! /metrics, /healthz and /readyz over HTTP on 127.0.0.1, after real SMTP traffic.
//! (Its own test binary: the counters are process-wide, like a Prometheus registry.)

mod common;

use common::http::get;
use common::upstream::FakeUpstream;
use common::*;
use std::os::unix::fs::PermissionsExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn value(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn counters_move_by_the_traffic_and_readiness_follows_the_keys() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let relay = start(config).await;
    let http = relay.metrics_addr().unwrap();
    let mut events = relay.subscribe();

    assert_eq!(get(http, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(http, "/readyz").await.0, 200);

    let mut client = Client::greeted(relay.smtp_addr()).await;
    for i in 0..2 {
        let r = client
            .send(
                "a@host",
                &["u@example.net"],
                &message("a@example.com", &format!("m{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            "Subject: no from\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    wait_done(&mut events, 2).await;

    let (code, page) = get(http, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        value(&page, "dkim_relay_messages_accepted_total"),
        Some(2),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "dkim_relay_smtp_refusals_total{code=\"550\",status=\"5.6.0\"}"
        ),
        Some(1),
        "{page}"
    );
    assert_eq!(
        value(&page, "dkim_relay_deliveries_total{result=\"delivered\"}"),
        Some(2),
        "{page}"
    );
    assert_eq!(
        value(&page, "dkim_relay_signatures_total{domain=\"example.com\",selector=\"s1\",algorithm=\"rsa-sha256\"}"),
        Some(2),
        "{page}"
    );
    // Latency histograms: one observation per message at each stage.
    for name in [
        "dkim_relay_signing_seconds",
        "dkim_relay_upstream_seconds",
        "dkim_relay_accept_seconds",
    ] {
        assert_eq!(value(&page, &format!("{name}_count")), Some(2), "{page}");
        assert_eq!(
            value(&page, &format!("{name}_bucket{{le=\"+Inf\"}}")),
            Some(2),
            "{page}"
        );
    }
    assert_eq!(value(&page, "dkim_relay_queue_messages"), Some(0), "{page}");
    assert_eq!(
        value(&page, "dkim_relay_key_state{domain=\"example.com\",selector=\"s1\",algorithm=\"rsa\",state=\"active\"}"),
        Some(1),
        "{page}"
    );
    assert!(
        page.contains(
            "dkim_relay_key_next_transition_seconds{domain=\"example.com\",selector=\"e1\""
        ),
        "{page}"
    );
    // Labels stay bounded: no queue ids or addresses.
    assert!(!page.contains("@") && !page.contains("queue_id"), "{page}");

    // A configured domain whose key cannot be used makes the relay unready, with the reason.
    let key = dir.path().join("keys/example.org/s1.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    relay.reload_keys();
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("example.org") && body.contains("readable by group or others"),
        "{body}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    relay.reload_keys();
    assert_eq!(get(http, "/readyz").await.0, 200);
    assert_eq!(get(http, "/nope").await.0, 404);
    relay.shutdown().await;
}

/// Issue 13: the /metrics listener has the connection limit the control socket has.
/// Clients that connect and never send hold at most `MAX_CONNECTIONS` slots; one more is
/// closed unanswered at once, and /healthz answers again when they go.
#[tokio::test]
async fn idle_connections_cannot_take_more_than_the_listener_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let relay = start(config).await;
    let http = relay.metrics_addr().unwrap();
    let limit = dkim_relay::metrics::MAX_CONNECTIONS;
    let mut idle = Vec::new();
    for _ in 0..limit {
        idle.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    // The listener takes them in order: once the one after the limit is closed, all
    // `limit` are held.
    let mut extra = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection over the limit was kept open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "answered over the limit: {read:?}"
    );
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    relay.shutdown().await;
}
