//! The DNS watch while the relay serves (issue 15 item 1). Against a real BIND 9 server
//! changed with `nsupdate`: the relay as a child process (its log is read), mail flowing,
//! the active RSA record deleted and restored. And the watch's state transitions, one
//! pass at a time with an injected `now`, against the in-process TestDns.

mod common;

use common::http::get;

use common::bind::Bind;
use common::child::{queue_cmd, spawn_relay};
use common::dns::TestDns;
use common::upstream::FakeUpstream;
use common::{Client, DOMAIN};
use dkim_relay::config::OnDnsMismatch;
use dkim_relay::keys::{DnsSeen, KeyStore, Served};
use dkim_relay::rotation::dns::DnsChecker;
use dkim_relay::rotation::dns_watch::{pass, Change};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const S1: &str = "s1._domainkey.example.com";

fn series(page: &str, name: &str) -> Option<String> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Polls `probe` every 20 ms until it returns Some, for at most 30 s.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    log: &Mutex<Vec<String>>,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; relay log:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys for example.com only (the template also has example.org, which this zone
/// does not serve), their records published in `bind`.
fn keys_published_in(root: &Path, bind: &Bind) -> KeyStore {
    let _ = common::config(root, None);
    std::fs::remove_dir_all(root.join("keys").join(common::OTHER_DOMAIN)).unwrap();
    let store = KeyStore::new(root.join("keys"));
    let state = store.load(DOMAIN).unwrap().unwrap();
    for slot in state.active() {
        let record = store.record(DOMAIN, slot).unwrap();
        bind.set_txt(&record.name, &record.value);
    }
    store
}

fn write_config(
    root: &Path,
    upstream: SocketAddr,
    resolver: SocketAddr,
    mode: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"hostname = "relay.test"
[smtp]
listen = "127.0.0.1:0"
[spool]
dir = "{spool}"
[keys]
dir = "{keys}"
generate_missing = false
[[domains]]
name = "example.com"
ed25519 = true
[upstream]
host = "127.0.0.1"
port = {port}
tls = "none"
[rotation]
dns_check = true
resolver = "{resolver}"
dns_watch = "1s"
on_dns_mismatch = "{mode}"
[metrics]
listen = "127.0.0.1:0"
"#,
        spool = root.join("spool").display(),
        keys = root.join("keys").display(),
        port = upstream.port(),
    );
    let path = root.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// DKIM results of `message` verified against what `bind` serves now (fetched through
/// the relay's own lookup code, then given to mail-auth's verifier).
async fn verify_with(bind: &Bind, message: &[u8]) -> Vec<(String, mail_auth::DkimResult)> {
    let checker = DnsChecker::new(Some(bind.addr)).unwrap();
    let cache = common::verify::TxtCache::default();
    for s in common::verify::tag_values(message, "s") {
        let name = format!("{s}._domainkey.{DOMAIN}");
        if let Ok(records) = checker.txt_records(&name).await {
            cache.add(&name, &records[0].concat());
        }
    }
    common::verify::verify(message, &cache)
        .await
        .into_iter()
        .map(|(_, _, s, result)| (s, result))
        .collect()
}

/// The /metrics address, from the child relay's log.
async fn metrics_addr(log: &Mutex<Vec<String>>) -> SocketAddr {
    until("the metrics address", log, || async {
        log.lock().unwrap().iter().find_map(|l| {
            l.contains("metrics and health on")
                .then(|| {
                    l.split("listen=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
    })
    .await
}

/// Sends one message; returns its queue id.
async fn send(client: &mut Client, n: usize) -> String {
    let subject = format!("watch-{n}");
    let r = client
        .send(
            "app@example.com",
            &["u@example.net"],
            &common::message("app@example.com", &subject),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    r.rsplit(' ').next().unwrap().to_string()
}

fn selectors(message: &[u8]) -> Vec<String> {
    common::verify::tag_values(message, "s")
}

#[tokio::test]
async fn a_deleted_record_is_noticed_and_with_defer_no_mail_goes_out_signed_with_it() {
    let bind = Bind::start(DOMAIN);
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    keys_published_in(dir.path(), &bind);
    let config = write_config(dir.path(), upstream.addr, bind.addr, "defer");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_relay, smtp) = spawn_relay(&config, log.clone());
    let http = metrics_addr(&log).await;
    let ok_series =
        r#"dkim_relay_selector_dns_ok{domain="example.com",selector="s1",algorithm="rsa"}"#;
    let metric = |want: &'static str| {
        let log = log.clone();
        async move {
            let _ = &log;
            let page = get(http, "/metrics").await.1;
            (series(&page, ok_series).as_deref() == Some(want)).then_some(())
        }
    };
    until("the first watch pass: s1 served", &log, || metric("1")).await;
    assert_eq!(get(http, "/readyz").await.0, 200);
    let page = get(http, "/metrics").await.1;
    assert!(
        series(
            &page,
            &ok_series.replace("s1", "e1").replace("rsa", "ed25519")
        )
        .as_deref()
            == Some("1"),
        "{page}"
    );
    assert!(page.contains("dkim_relay_selector_dns_checked_timestamp_seconds{domain=\"example.com\",selector=\"s1\",algorithm=\"rsa\"}"));

    // Mail flows, signed with s1, verifying against BIND.
    let mut client = Client::greeted(smtp).await;
    send(&mut client, 0).await;
    until("the first message upstream", &log, || async {
        (upstream.received().len() == 1).then_some(())
    })
    .await;
    let first = upstream.received()[0].data.clone();
    assert_eq!(selectors(&first), ["s1", "e1"]);
    for (s, result) in verify_with(&bind, &first).await {
        assert_eq!(result, mail_auth::DkimResult::Pass, "{s}");
    }

    // The active RSA record is deleted from DNS.
    let t0 = Instant::now();
    let t0_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let wall = |t: Instant| format!("+{:.2}s", t.duration_since(t0).as_secs_f64());
    bind.delete_txt(S1);
    let warn = until("the WARN", &log, || async {
        log.lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("WARN") && l.contains("DNS no longer serves") && l.contains("s1"))
            .cloned()
    })
    .await;
    let t_warn = Instant::now();
    assert!(warn.contains("domain=example.com"), "{warn}");
    assert!(warn.contains("algorithm=rsa"), "{warn}");
    assert!(warn.contains("no record"), "{warn}");
    until("the metric at 0", &log, || metric("0")).await;
    let t_metric = Instant::now();
    let (code, body) = until("/readyz unready", &log, || async {
        let (code, body) = get(http, "/readyz").await;
        (code != 200).then_some((code, body))
    })
    .await;
    let t_unready = Instant::now();
    // The older per-key gauge follows the watch too (it used to keep activation's result).
    let page = get(http, "/metrics").await.1;
    assert_eq!(
        series(
            &page,
            r#"dkim_relay_key_dns_check_ok{domain="example.com",selector="s1",algorithm="rsa"}"#
        )
        .as_deref(),
        Some("0"),
        "{page}"
    );
    assert_eq!(code, 503);
    assert!(
        body.contains("DNS does not serve the active rsa key s1 of example.com"),
        "{body}"
    );

    // With defer, mail accepted now waits in the queue with the reason.
    let held = [send(&mut client, 1).await, send(&mut client, 2).await];
    let listing = until("both held in `queue list`", &log, || async {
        let (ok, out) = queue_cmd(&config, &["list"]);
        assert!(ok, "{out}");
        let reasons = out
            .lines()
            .filter(|l| held.iter().any(|id| l.contains(id.as_str())))
            .filter(|l| l.contains("DNS does not serve"))
            .count();
        (reasons == 2).then_some(out)
    })
    .await;
    let t_deferred = Instant::now();
    assert!(listing.contains("rotation.on_dns_mismatch"), "{listing}");
    assert_eq!(
        upstream.received().len(),
        1,
        "nothing sent with the dead selector"
    );
    // Another pass or two, and still nothing went out.
    let checked = |page: &str| {
        series(
            page,
            r#"dkim_relay_selector_dns_checked_timestamp_seconds{domain="example.com",selector="s1",algorithm="rsa"}"#,
        )
    };
    let before = checked(&get(http, "/metrics").await.1);
    until("another watch pass", &log, || async {
        (checked(&get(http, "/metrics").await.1) != before).then_some(())
    })
    .await;
    let (ok, out) = queue_cmd(&config, &["flush"]);
    assert!(ok, "{out}");
    until("the flushed attempts deferred again", &log, || async {
        let l = log.lock().unwrap();
        let deferred = held
            .iter()
            .filter(|id| {
                l.iter()
                    .filter(|x| {
                        x.contains(id.as_str()) && x.contains(" deferred") && x.contains("our-dns")
                    })
                    .count()
                    >= 2
            })
            .count();
        (deferred == 2).then_some(())
    })
    .await;
    assert_eq!(
        upstream.received().len(),
        1,
        "nothing sent with the dead selector"
    );

    // The record comes back: an INFO, and the held mail goes at once, signed with s1.
    let store = KeyStore::new(dir.path().join("keys"));
    let state = store.load(DOMAIN).unwrap().unwrap();
    let s1 = store.record(DOMAIN, state.slot("s1").unwrap()).unwrap();
    let t_restore = Instant::now();
    bind.set_txt(&s1.name, &s1.value);
    let info = until("the recovery line", &log, || async {
        log.lock()
            .unwrap()
            .iter()
            .find(|l| {
                l.contains("INFO")
                    && l.contains("DNS serves the DKIM key again")
                    && l.contains("s1")
            })
            .cloned()
    })
    .await;
    let t_info = Instant::now();
    assert!(info.contains("domain=example.com"), "{info}");
    until("the held mail upstream", &log, || async {
        (upstream.received().len() == 3).then_some(())
    })
    .await;
    let t_released = Instant::now();
    for received in &upstream.received()[1..] {
        assert_eq!(selectors(&received.data), ["s1", "e1"]);
        for (s, result) in verify_with(&bind, &received.data).await {
            assert_eq!(result, mail_auth::DkimResult::Pass, "{s}");
        }
    }
    until("the metric back at 1", &log, || metric("1")).await;
    assert_eq!(get(http, "/readyz").await.0, 200);
    let listed = listing
        .lines()
        .find(|l| l.contains(held[0].as_str()))
        .unwrap_or_default()
        .to_string();
    eprintln!("timeline: delete at unix {t0_unix:.3}\n  {warn}\n  {info}\n  queue list: {listed}");
    eprintln!(
        "timeline: delete +0.00s, WARN {}, metric 0 {}, /readyz 503 {}, both held in queue list {}, restore {}, INFO recovery {}, held mail delivered {}",
        wall(t_warn),
        wall(t_metric),
        wall(t_unready),
        wall(t_deferred),
        wall(t_restore),
        wall(t_info),
        wall(t_released),
    );
}

#[tokio::test]
async fn with_alert_an_edited_record_is_reported_and_mail_keeps_flowing() {
    let bind = Bind::start(DOMAIN);
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = keys_published_in(dir.path(), &bind);
    let config = write_config(dir.path(), upstream.addr, bind.addr, "alert");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_relay, smtp) = spawn_relay(&config, log.clone());
    let http = metrics_addr(&log).await;
    let ok_series =
        r#"dkim_relay_selector_dns_ok{domain="example.com",selector="s1",algorithm="rsa"}"#;
    until("the first watch pass", &log, || async {
        (series(&get(http, "/metrics").await.1, ok_series).as_deref() == Some("1")).then_some(())
    })
    .await;

    // s1 edited to hold another key (e1's bytes under k=rsa), as a wrong hook run would.
    let state = store.load(DOMAIN).unwrap().unwrap();
    let e1 = store.record(DOMAIN, state.slot("e1").unwrap()).unwrap();
    let p = e1.value.split("p=").nth(1).unwrap();
    bind.set_txt(S1, &format!("v=DKIM1; k=rsa; p={p}"));
    let warn = until("the WARN", &log, || async {
        log.lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("WARN") && l.contains("DNS no longer serves"))
            .cloned()
    })
    .await;
    assert!(warn.contains("dns=another key"), "{warn}");
    assert!(warn.contains("DNS serves a different key"), "{warn}");
    assert!(warn.contains("mail is still sent"), "{warn}");
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        series(&get(http, "/metrics").await.1, ok_series).as_deref(),
        Some("0")
    );

    // Alert only: mail goes, and its s1 signature fails against what BIND serves.
    let mut client = Client::greeted(smtp).await;
    send(&mut client, 9).await;
    until("the message upstream", &log, || async {
        (upstream.received().len() == 1).then_some(())
    })
    .await;
    let results = verify_with(&bind, &upstream.received()[0].data).await;
    let s1 = results.iter().find(|(s, _)| s == "s1").unwrap();
    assert_ne!(s1.1, mail_auth::DkimResult::Pass, "{results:?}");
}

/// One watch pass against TestDns at `now`; the change of example.com's s1.
async fn s1_after_pass(
    store: &KeyStore,
    checker: &DnsChecker,
    board: &DnsSeen,
    now: u64,
) -> Change {
    let looked = pass(store, checker, board, OnDnsMismatch::Defer, now).await;
    looked
        .iter()
        .find(|l| l.seen.domain == DOMAIN && l.seen.selector == "s1")
        .expect("s1 looked up")
        .change
}

#[tokio::test]
async fn the_watch_walks_served_missing_recovered_and_another_key() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _ = common::config(dir.path(), None);
    let store = KeyStore::new(dir.path().join("keys"));
    for domain in [DOMAIN, common::OTHER_DOMAIN] {
        let state = store.load(domain).unwrap().unwrap();
        for slot in state.active() {
            let record = store.record(domain, slot).unwrap();
            dns.set_txt(&record.name, &record.value);
        }
    }
    let s1 = store
        .record(
            DOMAIN,
            store.load(DOMAIN).unwrap().unwrap().slot("s1").unwrap(),
        )
        .unwrap();
    let checker = DnsChecker::new(Some(dns.addr)).unwrap();
    let board = DnsSeen::default();
    let signing = ["s1", "e1"];

    assert_eq!(
        s1_after_pass(&store, &checker, &board, 1000).await,
        Change::Steady
    );
    let seen = board.get(DOMAIN, "s1").unwrap();
    assert_eq!(
        (seen.last.at, Served::of(seen.last.outcome)),
        (1000, Served::Ours)
    );
    assert_eq!(board.hold(DOMAIN, signing), None);
    assert_eq!(board.all().len(), 4, "active selectors of both domains");

    // Deleted: lost once, then steady while it stays gone; the domain is held.
    dns.remove(S1);
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 1600).await,
        Change::Lost
    );
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 2200).await,
        Change::Steady
    );
    let seen = board.get(DOMAIN, "s1").unwrap();
    assert_eq!(
        (seen.last.at, Served::of(seen.last.outcome)),
        (2200, Served::Missing)
    );
    let why = board.hold(DOMAIN, signing).expect("held");
    assert!(why.contains(&format!("no TXT record at {S1}")), "{why}");
    assert_eq!(board.hold(common::OTHER_DOMAIN, signing), None);

    // Back: recovered, released.
    dns.set_txt(&s1.name, &s1.value);
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 2800).await,
        Change::Recovered
    );
    assert_eq!(board.hold(DOMAIN, signing), None);

    // Edited to another key (example.org's s1 record pasted at example.com's s1).
    let other = store
        .record(
            common::OTHER_DOMAIN,
            store
                .load(common::OTHER_DOMAIN)
                .unwrap()
                .unwrap()
                .slot("s1")
                .unwrap(),
        )
        .unwrap()
        .value;
    dns.set_txt(&s1.name, &other);
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 3400).await,
        Change::Lost
    );
    let seen = board.get(DOMAIN, "s1").unwrap();
    assert_eq!(Served::of(seen.last.outcome), Served::Other);
    assert!(board.hold(DOMAIN, signing).is_some());
    // Then deleted as well: news again.
    dns.remove(S1);
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 4000).await,
        Change::Lost
    );
    dns.set_txt(&s1.name, &s1.value);
    assert_eq!(
        s1_after_pass(&store, &checker, &board, 4600).await,
        Change::Recovered
    );

    // In alert mode the same loss is reported but holds nothing.
    dns.remove(S1);
    pass(&store, &checker, &board, OnDnsMismatch::Alert, 5200).await;
    assert!(board.get(DOMAIN, "s1").unwrap().unserved().is_some());
    assert_eq!(board.hold(DOMAIN, signing), None);
}

/// In-process relay: the hold is a typed deferral (`Fault::OurDns`), and a reload from
/// `defer` to `alert` lets the held mail go at once, with no record restored.
#[tokio::test]
async fn held_mail_is_a_typed_our_dns_deferral_and_a_reload_to_alert_releases_it() {
    use dkim_relay::delivery::{DeliveryEvent, Fault};
    let dns = TestDns::start().await;
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _ = common::config(dir.path(), None);
    let store = KeyStore::new(dir.path().join("keys"));
    let state = store.load(DOMAIN).unwrap().unwrap();
    for slot in state.active() {
        let record = store.record(DOMAIN, slot).unwrap();
        dns.set_txt(&record.name, &record.value);
    }
    let path = dir.path().join("relay.toml");
    let toml = |mode: &str| {
        format!(
            "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[[domains]]\nname = \"example.com\"\ned25519 = true\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n[rotation]\nresolver = \"{}\"\ndns_watch = \"1h\"\non_dns_mismatch = \"{mode}\"\n",
            dir.path().join("spool").display(),
            dir.path().join("keys").display(),
            upstream.addr.port(),
            dns.addr,
        )
    };
    // Deleted while the relay was down: its first pass, at start, finds it lost. The
    // next pass is an hour away, so only the reload can release the mail.
    dns.remove(S1);
    std::fs::write(&path, toml("defer")).unwrap();
    let mut relay = common::start(dkim_relay::config::Config::from_file(&path).unwrap()).await;
    relay.watch(Some(path.clone())).unwrap();
    let mut events = relay.subscribe();

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let id = send(&mut client, 20).await;
    let cause = loop {
        // Sent before the first pass was done, it may go; then try another.
        match common::wait_for(&mut events, |e| {
            matches!(
                e,
                DeliveryEvent::Deferred { .. } | DeliveryEvent::Done { .. }
            )
        })
        .await
        {
            DeliveryEvent::Deferred { cause, .. } => break cause,
            _ => {
                send(&mut client, 21).await;
            }
        }
    };
    let _ = id;
    assert_eq!(cause.fault, Fault::OurDns, "{cause}");
    assert!(cause.to_string().contains("no TXT record at"), "{cause}");
    let delivered_before = upstream.received().len();

    std::fs::write(&path, toml("alert")).unwrap();
    relay.reload();
    common::wait_for(&mut events, |e| matches!(e, DeliveryEvent::Done { .. })).await;
    assert_eq!(upstream.received().len(), delivered_before + 1);
    relay.shutdown().await;
}

/// An RSA-only route (the SES profile) is not held for a lost Ed25519 record: the hold
/// counts only the selectors the message would be signed with.
#[tokio::test]
async fn a_lost_ed25519_record_does_not_hold_mail_on_an_rsa_only_route() {
    use dkim_relay::delivery::DeliveryEvent;
    let dns = TestDns::start().await;
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _ = common::config(dir.path(), None);
    let store = KeyStore::new(dir.path().join("keys"));
    let state = store.load(DOMAIN).unwrap().unwrap();
    for slot in state.active() {
        let record = store.record(DOMAIN, slot).unwrap();
        dns.set_txt(&record.name, &record.value);
    }
    dns.remove("e1._domainkey.example.com");
    let text = format!(
        "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[[domains]]\nname = \"example.com\"\ned25519 = true\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nprofile = \"ses\"\n[rotation]\nresolver = \"{}\"\ndns_watch = \"1h\"\non_dns_mismatch = \"defer\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("spool").display(),
        dir.path().join("keys").display(),
        upstream.addr.port(),
        dns.addr,
    );
    let relay = common::start(dkim_relay::config::Config::from_toml(&text).unwrap()).await;
    let http = relay.metrics_addr().unwrap();
    let log = Mutex::new(Vec::new());
    let e1 =
        r#"dkim_relay_selector_dns_ok{domain="example.com",selector="e1",algorithm="ed25519"}"#;
    until("the first pass: e1 lost", &log, || async {
        (series(&get(http, "/metrics").await.1, e1).as_deref() == Some("0")).then_some(())
    })
    .await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    send(&mut client, 30).await;
    match common::wait_for(&mut events, |e| {
        matches!(
            e,
            DeliveryEvent::Deferred { .. } | DeliveryEvent::Done { .. }
        )
    })
    .await
    {
        DeliveryEvent::Done { .. } => {}
        other => panic!("held: {other:?}"),
    }
    assert_eq!(selectors(&upstream.received()[0].data), ["s1"]);
    relay.shutdown().await;
}
