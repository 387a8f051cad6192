//! Key rotation against a real DNS server on 127.0.0.1: the DNS check itself, then a full
//! rotation of a running relay on an advanced clock, with mail signed before, during and
//! after the switch verified.

mod common;

use common::dns::TestDns;
use common::verify::{verify, TxtCache};
use common::*;
use dkim_relay::keys::{public_key_bytes, Algorithm, DnsOutcome, KeyStore, SlotState};
use dkim_relay::rotation::dns::DnsChecker;
use dkim_relay::rotation::Rotator;
use mail_auth::DkimResult;

const DAY: u64 = 86_400;

#[tokio::test]
async fn dns_check_sees_match_old_key_missing_split_strings_and_cname() {
    let dns = TestDns::start().await;
    let checker = DnsChecker::new(Some(dns.addr)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let (rsa, rsa_record) = store
        .generate_key(
            "example.com",
            "s1",
            Algorithm::Rsa,
            2048,
            SlotState::Active,
            1,
        )
        .unwrap();
    let (_, old_record) = store
        .generate_key(
            "example.com",
            "s2",
            Algorithm::Rsa,
            2048,
            SlotState::Pending,
            1,
        )
        .unwrap();
    let expected = public_key_bytes(&rsa_record).unwrap();
    let name = &rsa_record.name;
    assert!(
        rsa_record.value.len() > 255,
        "the RSA record must need several strings"
    );

    let outcome = |c: dkim_relay::keys::DnsCheck| (c.outcome, c.detail);
    assert_eq!(
        outcome(checker.check(name, rsa.algorithm, &expected, 0).await).0,
        DnsOutcome::Missing
    );
    dns.set_txt(name, &rsa_record.value); // split into 255-octet strings by the server
    assert_eq!(
        checker
            .check(name, rsa.algorithm, &expected, 0)
            .await
            .outcome,
        DnsOutcome::Match
    );
    dns.set_txt(name, &old_record.value);
    let (o, detail) = outcome(checker.check(name, rsa.algorithm, &expected, 0).await);
    assert_eq!(o, DnsOutcome::Mismatch, "{detail}");
    dns.set_txt(name, "v=DKIM1; k=rsa; p=");
    assert_eq!(
        checker
            .check(name, rsa.algorithm, &expected, 0)
            .await
            .outcome,
        DnsOutcome::Mismatch
    );
    // CNAME delegation (as with hosted DNS providers) is followed.
    dns.set_cname(name, "s1.example.com.dkim.provider.test");
    dns.set_txt("s1.example.com.dkim.provider.test", &rsa_record.value);
    assert_eq!(
        checker
            .check(name, rsa.algorithm, &expected, 0)
            .await
            .outcome,
        DnsOutcome::Match
    );
}

/// The records the key store says to publish, put into the test DNS server.
fn publish(dns: &TestDns, store: &KeyStore, domain: &str, selectors: &[&str]) {
    let state = store.load(domain).unwrap().unwrap();
    for sel in selectors {
        let record = store.record(domain, state.slot(sel).unwrap()).unwrap();
        dns.set_txt(&record.name, &record.value);
    }
}

fn selectors_of(message: &[u8]) -> Vec<String> {
    common::verify::tag_values(message, "s")
}

#[tokio::test]
async fn a_running_relay_rotates_only_to_keys_dns_serves_and_old_mail_still_verifies() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.rotation.dns_check = true;
    config.rotation.resolver = Some(dns.addr);
    config.domains.truncate(1); // example.com
    let store = KeyStore::new(dir.path().join("keys"));
    publish(&dns, &store, DOMAIN, &["s1", "e1"]);
    let relay = start(config.clone()).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let outbox = dir.path().join("outbox");
    let send = |n: usize| message("app@example.com", &format!("m{n}"));
    let read_outbox = |id: &str| std::fs::read(outbox.join(format!("{id}.eml"))).unwrap();
    let queued_id = |reply: &str| reply.rsplit(' ').next().unwrap().to_string();

    // Before rotation: signed with s1/e1.
    let a = queued_id(&client.send("app@host", &["u@example.net"], &send(1)).await);
    wait_done(&mut events, 1).await;
    let msg_a = read_outbox(&a);
    assert_eq!(selectors_of(&msg_a), ["s1", "e1"]);

    // 91 days later rotation starts, but DNS does not serve s2/e2 yet: nothing switches.
    let rotator = Rotator::new(&config).unwrap();
    let t0 = dkim_relay::clock::now_unix();
    let report = rotator
        .run_domain(DOMAIN, t0 + 91 * DAY, false)
        .await
        .unwrap();
    assert_eq!(report.to_publish.len(), 2, "{report:?}");
    assert!(
        report.waiting.iter().any(|w| w.contains("no TXT record")),
        "{:?}",
        report.waiting
    );
    relay.reload_keys();
    let b = queued_id(&client.send("app@host", &["u@example.net"], &send(2)).await);
    wait_done(&mut events, 1).await;
    assert_eq!(
        selectors_of(&read_outbox(&b)),
        ["s1", "e1"],
        "switched before DNS served the new keys"
    );

    // DNS now serves them: the next run activates s2/e2 and s1/e1 start their grace period.
    publish(&dns, &store, DOMAIN, &["s2", "e2"]);
    let report = rotator
        .run_domain(DOMAIN, t0 + 91 * DAY + 600, false)
        .await
        .unwrap();
    assert!(
        report
            .transitions
            .iter()
            .any(|t| t.selector == "s2" && t.to == SlotState::Active),
        "{report:?}"
    );
    relay.reload_keys();
    let c = queued_id(&client.send("app@host", &["u@example.net"], &send(3)).await);
    wait_done(&mut events, 1).await;
    let msg_c = read_outbox(&c);
    assert_eq!(selectors_of(&msg_c), ["s2", "e2"]);

    // During the grace period both the new mail and the mail signed before the switch
    // verify against what DNS publishes.
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    for m in [&msg_a, &msg_c] {
        let results = verify(m, &cache).await;
        assert_eq!(results.len(), 2);
        assert!(
            results.iter().all(|r| r.3 == DkimResult::Pass),
            "{results:?}"
        );
    }
    let state = store.load(DOMAIN).unwrap().unwrap();
    assert_eq!(state.slot("s1").unwrap().state, SlotState::Retiring);
    assert!(
        dir.path().join("keys/example.com/s1.pem").exists(),
        "deleted inside the grace period"
    );

    // After the grace period s1/e1 are retired and their key files deleted.
    let report = rotator
        .run_domain(DOMAIN, t0 + 91 * DAY + 600 + 7 * DAY, false)
        .await
        .unwrap();
    assert_eq!(
        report
            .transitions
            .iter()
            .filter(|t| t.to == SlotState::Retired)
            .count(),
        2
    );
    assert!(!dir.path().join("keys/example.com/s1.pem").exists());
    relay.shutdown().await;
}

#[tokio::test]
async fn mail_for_a_domain_without_an_active_key_waits_and_goes_once_dns_serves_it() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.rotation.dns_check = true;
    config.rotation.resolver = Some(dns.addr);
    config.keys.generate_missing = true;
    // Look again at every run instead of every 5 minutes: the test drives the runs.
    config.rotation.dns_recheck = dkim_relay::config::HumanDuration(std::time::Duration::ZERO);
    config.domains.push(domain("fresh.example"));
    let relay = start(config.clone()).await;
    let mut events = relay.subscribe();
    let store = KeyStore::new(dir.path().join("keys"));
    let state = store
        .load("fresh.example")
        .unwrap()
        .expect("first keys generated at start");
    assert!(
        state.slots.iter().all(|s| s.state == SlotState::Pending),
        "{state:?}"
    );

    let mut client = Client::greeted(relay.smtp_addr()).await;
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@fresh.example", "early"),
        )
        .await;
    assert!(
        r.starts_with("250"),
        "accepted even before the key is active: {r}"
    );
    let deferred = wait_for(&mut events, |e| {
        matches!(e, dkim_relay::delivery::DeliveryEvent::Deferred { .. })
    })
    .await;
    assert!(
        format!("{deferred:?}").contains("no active key yet"),
        "{deferred:?}"
    );

    publish(&dns, &store, "fresh.example", &["s1", "e1"]);
    relay.rotate_now();
    wait_done(&mut events, 1).await;
    relay.shutdown().await;
}

/// A hook that appends its environment to a file; it fails while `fail` exists.
fn write_hook(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("hook.log");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ -e {fail} ]; then echo 'provider API down' >&2; exit 1; fi\necho \"$DKIM_RELAY_ACTION|$DKIM_RELAY_DOMAIN|$DKIM_RELAY_SELECTOR|$DKIM_RELAY_ALGORITHM|$DKIM_RELAY_RECORD_NAME|$DKIM_RELAY_RECORD_VALUE\" >> {log}\n",
            fail = dir.join("fail").display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    (hook, log)
}

/// Applies what the hook logged to the test DNS server, like a DNS provider's API would.
fn sync_hook_to_dns(log: &std::path::Path, dns: &TestDns) {
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let f: Vec<&str> = line.splitn(6, '|').collect();
        dns.set_txt(f[4], f[5]);
    }
}

/// DESIGN §6 "done when": a year of simulated time with rotation every 90 days, records
/// published through the hook, DNS checked by the real resolver code against a DNS server
/// on 127.0.0.1. Every day, the keys that sign are served by DNS, and a key that signed
/// stays served for the whole grace period after it stopped.
#[tokio::test]
async fn a_year_of_rotation_through_the_hook_always_signs_with_served_keys() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, log) = write_hook(dir.path());
    let mut config = config(dir.path(), None);
    config.keys.dir = dir.path().join("fresh-keys");
    config.keys.generate_missing = true;
    config.domains = vec![domain("year.example")];
    config.rotation.dns_check = true;
    config.rotation.resolver = Some(dns.addr);
    config.rotation.publish_hook = Some(hook);
    config.validate().unwrap();
    let rotator = Rotator::new(&config).unwrap();
    let store = KeyStore::new(&config.keys.dir);

    // The provider API is down at first: the rotation waits, nothing is active.
    std::fs::write(dir.path().join("fail"), "").unwrap();
    let t0 = 1_800_000_000;
    let report = rotator.run_domain("year.example", t0, false).await.unwrap();
    assert!(
        report
            .waiting
            .iter()
            .any(|w| w.contains("provider API down")),
        "{report:?}"
    );
    assert!(store
        .load("year.example")
        .unwrap()
        .unwrap()
        .active()
        .is_empty());
    std::fs::remove_file(dir.path().join("fail")).unwrap();

    let mut last_signed: std::collections::HashMap<String, u64> = Default::default();
    let mut activations = 0;
    for day in 0..=365u64 {
        for minute in [0u64, 10] {
            let now = t0 + day * DAY + minute * 60;
            let report = rotator
                .run_domain("year.example", now, false)
                .await
                .unwrap();
            activations += report
                .transitions
                .iter()
                .filter(|t| t.to == SlotState::Active)
                .count();
            sync_hook_to_dns(&log, &dns);
            let state = store.load("year.example").unwrap().unwrap();
            for slot in state.active() {
                let record = store.record("year.example", slot).unwrap();
                let check = DnsChecker::new(Some(dns.addr))
                    .unwrap()
                    .check(
                        &record.name,
                        slot.algorithm,
                        &public_key_bytes(&record).unwrap(),
                        now,
                    )
                    .await;
                assert_eq!(
                    check.outcome,
                    DnsOutcome::Match,
                    "day {day}: {} signs but DNS says {}",
                    slot.selector,
                    check.detail
                );
                last_signed.insert(format!("{}:{}", slot.selector, slot.created), now);
            }
            // A key that signed within the grace period is still in the store and in DNS.
            for slot in &state.slots {
                if let Some(&t) = last_signed.get(&format!("{}:{}", slot.selector, slot.created)) {
                    if now < t + 7 * DAY {
                        assert_ne!(
                            slot.state,
                            SlotState::Retired,
                            "day {day}: {} retired inside its grace period",
                            slot.selector
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        activations,
        2 * 5,
        "bootstrap and four rotations, RSA and Ed25519 together"
    );
    let hook_log = std::fs::read_to_string(&log).unwrap();
    assert!(hook_log.lines().any(|l| l.starts_with(
        "publish|year.example|s2|rsa|s2._domainkey.year.example|v=DKIM1; k=rsa; p=MIIB"
    )));
    assert!(
        hook_log
            .lines()
            .any(|l| l.starts_with("revoke|year.example|") && l.ends_with("p=")),
        "{hook_log}"
    );
}

/// `keys check` as a process against the test DNS server: match, missing and wrong keys,
/// and a non-zero exit only when a key in use is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_reports_each_selector_and_fails_for_keys_in_use() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("relay.toml");
    let keys = dir.path().join("keys");
    std::fs::write(
        &config_path,
        format!(
            "[keys]\ndir = \"{}\"\n[rotation]\nresolver = \"{}\"\n",
            keys.display(),
            dns.addr
        ),
    )
    .unwrap();
    let store = KeyStore::new(&keys);
    store
        .generate_key(
            "check.example",
            "s1",
            Algorithm::Rsa,
            2048,
            SlotState::Active,
            1,
        )
        .unwrap();
    store
        .generate_key(
            "check.example",
            "s2",
            Algorithm::Rsa,
            2048,
            SlotState::Pending,
            // Pending since now: a key waiting since 1970 would be a stuck rotation.
            dkim_relay::clock::now_unix(),
        )
        .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
            .arg("--config")
            .arg(&config_path)
            .args(["keys", "check"])
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "active key missing from DNS must fail: {text}"
    );
    assert!(
        text.contains("s1") && text.contains("missing") && text.contains("not yet published"),
        "{text}"
    );

    publish(&dns, &store, "check.example", &["s1"]);
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("match"), "{text}");

    // The pending s2's record holding s1's key is reported, and does not fail the check.
    let s1 = store
        .record(
            "check.example",
            store
                .load("check.example")
                .unwrap()
                .unwrap()
                .slot("s1")
                .unwrap(),
        )
        .unwrap();
    dns.set_txt("s2._domainkey.check.example", &s1.value);
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("mismatch"), "{text}");
}
