//! Rotation that cannot be wedged by its publish hook (issue 15, items 2-6): a hook that
//! exits 0 but published the wrong value runs again; hooks have a timeout, run without the
//! key store lock, per domain at once, and never delay the SMTP listener; a grace of 0
//! never signs with a retired key; stuck rotations show in the state, /metrics, `keys
//! status`, `keys check`; `keys rotate --emergency` acts through the running relay.

mod common;

use common::child::cli;
use common::dns::TestDns;
use common::*;
use dkim_relay::config::{Config, HumanDuration};
use dkim_relay::keys::{KeyStore, SlotState};
use dkim_relay::rotation::{Ask, Rotator};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T0: u64 = 1_800_000_000;

/// A hook script: `body` runs after the call is appended to `hook.log` as
/// "action|domain|selector|algorithm|name|value".
fn hook(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("hook.log");
    let path = dir.join("hook.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$DKIM_RELAY_ACTION|$DKIM_RELAY_DOMAIN|$DKIM_RELAY_SELECTOR|$DKIM_RELAY_ALGORITHM|$DKIM_RELAY_RECORD_NAME|$DKIM_RELAY_RECORD_VALUE\" >> {}\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, log)
}

fn hook_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A config with a fresh key store making first keys for `domains`, and `hook`.
fn fresh(dir: &Path, domains: &[&str], hook: &Path) -> Config {
    let mut config = config(dir, None);
    config.keys.dir = dir.join("fresh-keys");
    config.keys.generate_missing = true;
    config.domains = domains.iter().map(|d| domain(d)).collect();
    config.rotation.publish_hook = Some(hook.to_path_buf());
    config.rotation.hook_timeout = HumanDuration(Duration::from_secs(20));
    config.validate().unwrap();
    config
}

/// Polls (bounded) until `done` holds; these wait for a hook process, not a schedule.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_hook_that_exits_0_but_publishes_a_wrong_value_runs_again_and_on_request() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, log) = hook(dir.path(), "exit 0");
    let mut config = fresh(dir.path(), &["wedge.example"], &hook);
    config.domains[0].ed25519 = false;
    config.rotation.dns_check = true;
    config.rotation.resolver = Some(dns.addr);
    config.rotation.dns_recheck = HumanDuration(Duration::from_secs(60));
    // DNS keeps serving some other key at the new key's name: the hook "succeeded" wrongly.
    dns.set_txt(
        "s1._domainkey.wedge.example",
        "v=DKIM1; k=rsa; p=AAAAAAAAAAAAAAAA",
    );
    let rotator = Rotator::new(&config).unwrap();
    let report = rotator
        .run_domain("wedge.example", T0, false)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 1, "{report:?}");

    // Before dns_recheck has passed: not again.
    rotator
        .run_domain("wedge.example", T0 + 59, false)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 1);
    // Then again, with backoff: after 60 s, then not before 120 s more.
    rotator
        .run_domain("wedge.example", T0 + 61, false)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 2, "the hook was not run again");
    rotator
        .run_domain("wedge.example", T0 + 61 + 119, false)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 2, "no backoff");
    rotator
        .run_domain("wedge.example", T0 + 61 + 121, false)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 3);

    // `keys rotate --now` and `keys publish` run it at once.
    rotator
        .run_domain("wedge.example", T0 + 183, true)
        .await
        .unwrap();
    assert_eq!(
        hook_lines(&log).len(),
        4,
        "rotate --now did not run the hook"
    );
    rotator
        .run("wedge.example", T0 + 184, Ask::Publish)
        .await
        .unwrap();
    assert_eq!(hook_lines(&log).len(), 5, "publish did not run the hook");

    // The state says what happened, for `keys status`; the key stays pending.
    let store = KeyStore::new(&config.keys.dir);
    let state = store.load("wedge.example").unwrap().unwrap();
    let s1 = state.slot("s1").unwrap();
    assert_eq!(s1.state, SlotState::Pending);
    let run = s1.last_hook.as_ref().unwrap();
    assert!(run.ok && run.runs == 5, "{run:?}");
    let now = s1.created + 3600;
    let text = dkim_relay::metrics::render(
        &config,
        &store,
        &dkim_relay::keys::DnsSeen::default(),
        &dkim_relay::spool::Spool::attach(dir.path(), false),
        now,
    );
    assert!(
        text.contains("dkim_relay_publish_hook_failures_total{domain=\"wedge.example\"}"),
        "{text}"
    );
    assert!(
        text.contains("dkim_relay_rotation_stuck_seconds{domain=\"wedge.example\"} 3600"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let (hook, _log) = hook(
        dir.path(),
        &format!("sleep 30 &\necho $! > {}\nwait\n", pid.display()),
    );
    let mut config = fresh(dir.path(), &["slow.example"], &hook);
    config.rotation.hook_timeout = HumanDuration(Duration::from_secs(1));
    let report = Rotator::new(&config)
        .unwrap()
        .run_domain("slow.example", T0, false)
        .await
        .unwrap();
    assert!(
        report
            .waiting
            .iter()
            .any(|w| w.contains("timed out after 1s")),
        "{report:?}"
    );
    let sleeper: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    until("the hook's child to be killed", || unsafe {
        libc::kill(sleeper, 0) != 0
    })
    .await;
    let state = KeyStore::new(&config.keys.dir)
        .load("slow.example")
        .unwrap()
        .unwrap();
    let run = state.slot("s1").unwrap().last_hook.clone().unwrap();
    assert!(!run.ok && run.result.contains("timed out"), "{run:?}");
}

#[tokio::test]
async fn each_change_is_stamped_when_it_is_applied_not_when_the_run_began() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, _log) = hook(dir.path(), "sleep 2");
    let config = fresh(dir.path(), &["stamp.example"], &hook); // DNS checks off, wait 0
    Rotator::new(&config)
        .unwrap()
        .run_domain("stamp.example", T0, false)
        .await
        .unwrap();
    let state = KeyStore::new(&config.keys.dir)
        .load("stamp.example")
        .unwrap()
        .unwrap();
    let s1 = state.slot("s1").unwrap();
    assert_eq!(s1.state, SlotState::Active);
    assert!(
        s1.hook_published.unwrap() >= T0 + 2 && s1.active_since.unwrap() >= T0 + 2,
        "stamped with the time before the hooks ran: {s1:?}"
    );
}

/// One domain's hook hangs: the other domain rotates meanwhile, and the key store lock is
/// free while the hook runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_holds_neither_other_domains_nor_the_store_lock() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let (hook, _log) = hook(
        dir.path(),
        &format!(
            "[ \"$DKIM_RELAY_DOMAIN\" = a-slow.example ] || exit 0\nfor i in $(seq 150); do [ -e {} ] && exit 0; sleep 0.1; done\nexit 1",
            go.display()
        ),
    );
    let config = fresh(dir.path(), &["a-slow.example", "b-fast.example"], &hook);
    let rotator = Rotator::new(&config).unwrap();
    let run = tokio::spawn(async move { rotator.run_all(T0, false).await });
    let store = KeyStore::new(&config.keys.dir);
    until("b-fast.example to get active keys", || {
        store
            .load("b-fast.example")
            .ok()
            .flatten()
            .is_some_and(|s| s.active().len() == 2)
    })
    .await;
    assert!(!go.exists() && !run.is_finished());
    let lock = std::fs::File::open(config.keys.dir.join(".lock")).unwrap();
    assert!(
        lock.try_lock().is_ok(),
        "the key store lock is held while a hook runs"
    );
    drop(lock);
    std::fs::write(&go, "").unwrap();
    assert!(run.await.unwrap());
    assert_eq!(
        store
            .load("a-slow.example")
            .unwrap()
            .unwrap()
            .active()
            .len(),
        2
    );
}

#[tokio::test]
async fn serve_accepts_smtp_while_a_slow_hook_runs_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (started, go, done) = (
        dir.path().join("started"),
        dir.path().join("go"),
        dir.path().join("done"),
    );
    let (hook, _log) = hook(
        dir.path(),
        &format!(
            "touch {started}\nfor i in $(seq 150); do [ -e {go} ] && break; sleep 0.1; done\ntouch {done}",
            started = started.display(),
            go = go.display(),
            done = done.display()
        ),
    );
    let config = fresh(dir.path(), &["start.example"], &hook);
    let relay = start(config).await;
    until("the hook to start", || started.exists()).await;
    let mut client = Client::greeted(relay.smtp_addr()).await; // 220, then EHLO 250
    assert!(client.cmd("NOOP").await.starts_with("250"));
    assert!(!done.exists(), "the listener waited for the hook");
    std::fs::write(&go, "").unwrap();
    until("the hook to finish", || done.exists()).await;
    relay.shutdown().await;
}

/// A hook that logs each call; a revoke waits (bounded) until `go` exists, after touching
/// `revoking`, so the test can send mail while a retired key is being revoked.
fn revoke_blocks(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (revoking, go) = (dir.join("revoking"), dir.join("go"));
    let (hook, log) = hook(
        dir,
        &format!(
            "[ \"$DKIM_RELAY_ACTION\" = revoke ] || exit 0\ntouch {revoking}\nfor i in $(seq 150); do [ -e {go} ] && exit 0; sleep 0.1; done",
            revoking = revoking.display(),
            go = go.display()
        ),
    );
    (hook, log, revoking, go)
}

/// A relay (test keys s1/e1 active, DNS checks off, outbox) with `hook`.
fn relay_config(dir: &Path, hook: &Path) -> Config {
    let mut config = config(dir, None);
    config.domains.truncate(1); // example.com
    config.rotation.publish_hook = Some(hook.to_path_buf());
    config.rotation.hook_timeout = HumanDuration(Duration::from_secs(20));
    config.validate().unwrap();
    config
}

/// With a grace of 0 (refused by `config check`, but the executor must still be safe),
/// the signing keys are swapped before the old ones are retired and revoked: mail sent
/// while the revoke hook runs is signed with the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_grace_0_no_mail_is_signed_with_a_key_being_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, log, revoking, go) = revoke_blocks(dir.path());
    let mut config = relay_config(dir.path(), &hook);
    config.rotation.grace = HumanDuration(Duration::ZERO);
    config.rotation.upstream_retry_window = HumanDuration(Duration::ZERO);
    let relay = start(config.clone()).await;
    let mut events = relay.subscribe();
    let for_cli = config.clone();
    let rotation = tokio::task::spawn_blocking(move || {
        dkim_relay::control::cli::rotate_on_relay(&for_cli, DOMAIN, Ask::RotateNow)
    });
    until("the revoke hook to run", || revoking.exists()).await;
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let reply = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "during"),
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    wait_done(&mut events, 1).await;
    let id = reply.rsplit(' ').next().unwrap();
    let sent = std::fs::read(dir.path().join("outbox").join(format!("{id}.eml"))).unwrap();
    assert_eq!(
        common::verify::tag_values(&sent, "s"),
        ["s2", "e2"],
        "signed with a key being revoked"
    );
    std::fs::write(&go, "").unwrap();
    let lines = rotation.await.unwrap().unwrap().expect("a relay runs");
    let text = lines.join("\n");
    assert!(text.contains("s1: revoked by the hook"), "{text}");
    assert!(text.contains("s2: published by the hook"), "{text}");
    assert!(hook_lines(&log)
        .iter()
        .any(|l| l.starts_with("revoke|example.com|s1|")));
    relay.shutdown().await;
}

/// `keys rotate --emergency` next to a running relay: the relay publishes the new keys
/// and revokes the compromised ones through the hook at once, and the command says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_acts_at_once_through_the_running_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, log) = hook(dir.path(), "exit 0");
    let config = relay_config(dir.path(), &hook);
    let relay = start(config.clone()).await;
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[spool]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\n[[domains]]\nname = \"example.com\"\ned25519 = true\n[rotation]\npublish_hook = \"{}\"\ndns_check = false\n",
            config.spool.dir.display(),
            config.keys.dir.display(),
            hook.display()
        ),
    )
    .unwrap();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        cli(
            &path,
            &["keys", "rotate", "--emergency", "--domain", DOMAIN],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    for expected in [
        "s2: published by the hook",
        "e2: published by the hook",
        "s1: revoked by the hook",
        "e1: revoked by the hook",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let calls = hook_lines(&log);
    assert!(
        calls
            .iter()
            .any(|l| l.starts_with("revoke|example.com|s1|")),
        "{calls:?}"
    );
    // The relay signs with the new keys already.
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let reply = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "after"),
        )
        .await;
    wait_done(&mut events, 1).await;
    let id = reply.rsplit(' ').next().unwrap();
    let sent = std::fs::read(dir.path().join("outbox").join(format!("{id}.eml"))).unwrap();
    assert_eq!(common::verify::tag_values(&sent, "s"), ["s2", "e2"]);
    relay.shutdown().await;
}

/// A rotation waiting on a hook that keeps failing: `keys status` says since when and how
/// the hook's last run ended; `keys check` fails and `doctor` reports an error once it
/// waited past `stuck_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rotation_shows_in_keys_status_and_fails_keys_check() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, _log) = hook(dir.path(), "echo 'provider said 403' >&2\nexit 1");
    let keys = dir.path().join("keys");
    let path = dir.path().join("relay.toml");
    {
        std::fs::write(
            &path,
            format!(
                "[keys]\ndir = \"{}\"\n[[domains]]\nname = \"stuck.example\"\n[rotation]\npublish_hook = \"{}\"\nresolver = \"{}\"\nstuck_after = \"1d\"\n",
                keys.display(),
                hook.display(),
                dns.addr
            ),
        )
        .unwrap();
    }
    let (ok, out) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            cli(
                &path,
                &["keys", "rotate", "--now", "--domain", "stuck.example"],
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    let run = |args: &'static [&'static str]| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || cli(&path, args))
    };
    let (_, status) = run(&["keys", "status"]).await.unwrap();
    assert!(
        status.contains("waiting for DNS since") && status.contains("exit 1: provider said 403"),
        "{status}"
    );
    let (ok, out) = run(&["keys", "check"]).await.unwrap();
    assert!(ok, "not stuck yet, nothing in use: {out}");
    // `keys publish` runs the hook again at once and says how it ended.
    let (ok, out) = run(&["keys", "publish", "--domain", "stuck.example"])
        .await
        .unwrap();
    assert!(
        ok && out.contains("s1: publish hook failed (exit 1: provider said 403)"),
        "{out}"
    );
    // Two days later (the key's creation moved back rather than the clock forward).
    let store = KeyStore::new(&keys);
    let mut state = store.load("stuck.example").unwrap().unwrap();
    for slot in &mut state.slots {
        slot.created -= 2 * 86_400;
    }
    store.save(&state).unwrap();
    let (ok, out) = run(&["keys", "check"]).await.unwrap();
    assert!(!ok && out.contains("rotation stuck for 2d"), "{out}");
    assert!(out.contains("exit 1: provider said 403"), "{out}");
    let (ok, out) = run(&["doctor", "--domain", "stuck.example"]).await.unwrap();
    assert!(
        !ok && out
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("rotation stuck")),
        "{out}"
    );
}
