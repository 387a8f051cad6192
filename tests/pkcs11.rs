//! Keys in a PKCS#11 token, for real: SoftHSM 2 from Debian (`softhsm2`, installed by
//! .ci/run). Each test makes its own token directory and token (`softhsm2-util
//! --init-token --free`). Without the module the tests say so loudly and pass, except in
//! CI (`CI` set), where a missing module fails them.
//!
//! The in-process test is the only one here that loads SoftHSM into the test process
//! (SoftHSM reads SOFTHSM2_CONF once per process); the others run the relay and the CLI
//! as child processes, each with its own SOFTHSM2_CONF.

mod common;

use common::dns::TestDns;
use common::upstream::{dkim_signatures, FakeUpstream};
use common::verify::{assert_signed, tag_values, TxtCache};
use common::*;
use dkim_relay::config::{Config, KeyBackend};
use dkim_relay::keys::{id_from_hex, KeyStore, SlotState};
use dkim_relay::rotation::Rotator;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DAY: u64 = 86_400;
const PIN: &str = "246810";

const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

fn module() -> Option<PathBuf> {
    let found = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "SoftHSM 2 is not installed ({MODULES:?}), but CI must run the PKCS#11 tests: add softhsm2 to .ci/run's apt-get line"
        );
        eprintln!(
            "\n\n######## SKIPPED: SoftHSM 2 is not installed (apt-get install softhsm2); the PKCS#11 tests did NOT run ########\n\n"
        );
    }
    found
}

/// A SoftHSM token directory with one initialised token, and its PIN file.
struct SoftHsm {
    module: PathBuf,
    conf: PathBuf,
    label: String,
    pin_file: PathBuf,
    tokens: PathBuf,
}

impl SoftHsm {
    fn new(root: &Path, label: &str) -> Option<SoftHsm> {
        let module = module()?;
        let tokens = root.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = root.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "13579", "--pin", PIN])
            .output()
            .expect("softhsm2-util runs");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = root.join("token.pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        Some(SoftHsm {
            module,
            conf,
            label: label.into(),
            pin_file,
            tokens,
        })
    }

    fn configure(&self, config: &mut Config) {
        config.keys.backend = KeyBackend::Pkcs11;
        config.keys.module = Some(self.module.clone());
        config.keys.token_label = Some(self.label.clone());
        config.keys.pin_file = Some(self.pin_file.clone());
    }

    fn toml(&self) -> String {
        format!(
            "backend = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
            self.module.display(),
            self.label,
            self.pin_file.display()
        )
    }

    /// The objects in the token as pkcs11-tool lists them (labels and ids, no values).
    fn objects(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--module", &self.module.display().to_string()])
            .args(["--token-label", &self.label, "--login", "--pin", PIN, "-O"])
            .output()
            .expect("pkcs11-tool runs (opensc)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The DNS records of every slot of the store (read from the token's public keys).
fn cache_of(store: &KeyStore) -> TxtCache {
    let cache = TxtCache::default();
    for domain in store.domains().unwrap() {
        let state = store.load(&domain).unwrap().unwrap();
        for slot in state.slots.iter().filter(|s| s.state != SlotState::Retired) {
            let record = store.record(&domain, slot).unwrap();
            cache.add(&record.name, &record.value);
        }
    }
    cache
}

fn publish(dns: &TestDns, store: &KeyStore, selectors: &[&str]) {
    let state = store.load(DOMAIN).unwrap().unwrap();
    for sel in selectors {
        let record = store.record(DOMAIN, state.slot(sel).unwrap()).unwrap();
        dns.set_txt(&record.name, &record.value);
    }
}

/// RSA and Ed25519 signed through the token over real SMTP to the fake upstream, every
/// signature verified; then two rotations on the test schedule (an advanced clock), each
/// new key pair made in the token and the retired ones destroyed there after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_signs_through_softhsm_and_rotates_twice_inside_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path(), "dkim-inprocess") else {
        return;
    };
    // The only test in this binary that loads SoftHSM in-process, before it is loaded.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let dns = TestDns::start().await;
    let upstream = FakeUpstream::start().await;
    let mut config = config(dir.path(), Some(upstream.addr));
    config.keys.dir = dir.path().join("token-keys");
    config.domains = vec![domain(DOMAIN)];
    config.rotation.dns_check = true;
    config.rotation.resolver = Some(dns.addr);
    hsm.configure(&mut config);
    config.validate().unwrap();
    let store = KeyStore::for_config(&config.keys);
    dkim_relay::relay::bootstrap_keys(&store, &config.domains).unwrap();

    // The state file names token objects; no private key is on disk or in the state.
    let state_text =
        std::fs::read_to_string(config.keys.dir.join("example.com/state.json")).unwrap();
    assert!(state_text.contains("\"token_id\""), "{state_text}");
    assert!(!state_text.contains("PRIVATE"), "{state_text}");
    let files: Vec<String> = std::fs::read_dir(config.keys.dir.join("example.com"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| !f.ends_with(".pem")), "{files:?}");
    let objects = hsm.objects();
    assert!(objects.contains("dkim-relay example.com s1"), "{objects}");
    assert!(objects.contains("dkim-relay example.com e1"), "{objects}");
    publish(&dns, &store, &["s1", "e1"]);

    let relay = start(config.clone()).await;
    let mut events = relay.subscribe();
    let mut client = Client::greeted(relay.smtp_addr()).await;
    let mut sent = 0;
    let mut send_and_check = async |expect: [&str; 2]| {
        sent += 1;
        let reply = client
            .send(
                "app@host",
                &["u@example.net"],
                &message("app@example.com", &format!("m{sent}")),
            )
            .await;
        assert!(reply.starts_with("250"), "{reply}");
        wait_done(&mut events, 1).await;
        let received = upstream.received();
        let data = &received.last().unwrap().data;
        assert_eq!(tag_values(data, "s"), expect);
        assert_signed(data, &cache_of(&store), DOMAIN).await;
    };
    send_and_check(["s1", "e1"]).await;

    let rotator = Rotator::new(&config).unwrap();
    let t0 = dkim_relay::clock::now_unix();
    let mut retired_ids = Vec::new();
    for (round, (new, old)) in [(["s2", "e2"], ["s1", "e1"]), (["s1", "e1"], ["s2", "e2"])]
        .into_iter()
        .enumerate()
    {
        let start_at = t0 + (round as u64 + 1) * 91 * DAY;
        let old_ids: Vec<String> = {
            let state = store.load(DOMAIN).unwrap().unwrap();
            old.iter()
                .map(|s| state.slot(s).unwrap().token_id.clone().unwrap())
                .collect()
        };
        let report = rotator.run_domain(DOMAIN, start_at, false).await.unwrap();
        assert_eq!(report.to_publish.len(), 2, "{report:?}");
        publish(&dns, &store, &new);
        let report = rotator
            .run_domain(DOMAIN, start_at + 600, false)
            .await
            .unwrap();
        assert!(
            report
                .transitions
                .iter()
                .any(|t| t.selector == new[0] && t.to == SlotState::Active),
            "{report:?}"
        );
        relay.reload_keys();
        send_and_check(new).await;
        // After the grace the old pair is retired and destroyed in the token.
        rotator
            .run_domain(DOMAIN, start_at + 600 + 8 * DAY, false)
            .await
            .unwrap();
        let state = store.load(DOMAIN).unwrap().unwrap();
        assert_eq!(state.slot(old[0]).unwrap().state, SlotState::Retired);
        let token = store.token().unwrap();
        for id in &old_ids {
            let err = token
                .public_key(&id_from_hex(id).unwrap(), dkim_relay::keys::Algorithm::Rsa)
                .expect_err("the retired key is gone from the token");
            assert!(err.to_string().contains("no public key"), "{err}");
        }
        retired_ids.extend(old_ids);
        relay.reload_keys();
        send_and_check(new).await;
    }
    assert_eq!(retired_ids.len(), 4);
    relay.shutdown().await;
}

/// The relay as a child process with its own SOFTHSM2_CONF; returns it and its address.
fn spawn_relay(
    config: &Path,
    conf: &Path,
    log: Arc<Mutex<Vec<String>>>,
) -> (common::child::ChildRelay, SocketAddr) {
    common::child::spawn_relay_with_env(config, log, &[("SOFTHSM2_CONF", conf)])
}

fn cli(config: &Path, conf: &Path, args: &[&str]) -> (bool, String) {
    common::child::cli_with_env(config, args, &[("SOFTHSM2_CONF", conf)])
}

fn write_config(root: &Path, hsm: &SoftHsm, upstream: SocketAddr) -> PathBuf {
    let text = format!(
        "hostname = \"relay.test\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{spool}\"\n\
         [keys]\ndir = \"{keys}\"\ngenerate_missing = false\n{token}\
         [[domains]]\nname = \"example.com\"\ned25519 = true\n\
         [rotation]\ndns_check = false\n\
         [delivery]\nworkers = 2\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n",
        spool = root.join("spool").display(),
        keys = root.join("keys").display(),
        token = hsm.toml(),
        port = upstream.port(),
    );
    let path = root.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_until(what: &str, log: &Arc<Mutex<Vec<String>>>, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}; relay log:\n{}",
        log.lock().unwrap().join("\n")
    );
}

/// Keys made by `keys generate` in the token; the token taken away mid-run and then put
/// back with a wrong PIN in the PIN file: mail is deferred (never sent unsigned), the log
/// names the token and the return code, and it goes out signed once the PIN is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_token_or_a_wrong_pin_defers_mail_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path(), "dkim-child") else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    let config = write_config(dir.path(), &hsm, upstream.addr);
    let (ok, out) = cli(
        &config,
        &hsm.conf,
        &[
            "keys",
            "generate",
            "--domain",
            "example.com",
            "--algorithms",
            "rsa,ed25519",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("p=MIIB"), "the RSA record is SPKI: {out}");
    let (ok, out) = cli(
        &config,
        &hsm.conf,
        &["keys", "activate", "--force", "--domain", "example.com"],
    );
    assert!(ok, "{out}");
    let objects = hsm.objects();
    assert!(objects.contains("dkim-relay example.com s1"), "{objects}");
    assert!(objects.contains("dkim-relay example.com e1"), "{objects}");
    // pkcs11-tool prints each private key's flags: sensitive, never extractable, and
    // usable for signing only.
    assert_eq!(
        objects
            .matches("Access:     sensitive, always sensitive, never extractable")
            .count(),
        2,
        "{objects}"
    );
    assert_eq!(
        objects.matches("Usage:      sign\n").count(),
        2,
        "{objects}"
    );

    let log = Arc::new(Mutex::new(Vec::new()));
    let (_relay, addr) = spawn_relay(&config, &hsm.conf, log.clone());
    let mut client = Client::greeted(addr).await;
    let send = async |client: &mut Client, n: usize| {
        let reply = client
            .send(
                "app@host",
                &["u@example.net"],
                &message("app@example.com", &format!("m{n}")),
            )
            .await;
        assert!(reply.starts_with("250"), "{reply}");
    };
    send(&mut client, 1).await;
    wait_until("the first message", &log, || upstream.received().len() == 1).await;
    assert_eq!(dkim_signatures(&upstream.received()[0].data), 2);

    // The token goes away (its directory moved out of SoftHSM's token dir).
    let away = dir.path().join("away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    std::fs::create_dir(&hsm.tokens).unwrap();
    send(&mut client, 2).await;
    wait_until("a deferral naming the token", &log, || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("deferred") && l.contains("dkim-child"))
    })
    .await;
    assert_eq!(
        upstream.received().len(),
        1,
        "sent while the token was gone"
    );
    for line in log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("dkim-child"))
    {
        eprintln!("token gone: {line}");
    }

    // Back, but the PIN file is wrong now: still deferred, with the return code.
    std::fs::write(&hsm.pin_file, "000000\n").unwrap();
    std::fs::remove_dir(&hsm.tokens).unwrap();
    std::fs::rename(&away, &hsm.tokens).unwrap();
    let (ok, out) = cli(&config, &hsm.conf, &["queue", "flush"]);
    assert!(ok, "{out}");
    wait_until("CKR_PIN_INCORRECT in the log", &log, || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("CKR_PIN_INCORRECT") && l.contains("dkim-child"))
    })
    .await;
    assert_eq!(upstream.received().len(), 1, "sent with a wrong PIN");
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|l| !l.contains("000000") && !l.contains(PIN)),
        "a PIN reached the log"
    );

    // Fixed: the next attempt logs in again and the message goes out signed.
    std::fs::write(&hsm.pin_file, format!("{PIN}\n")).unwrap();
    let (ok, out) = cli(&config, &hsm.conf, &["queue", "flush"]);
    assert!(ok, "{out}");
    wait_until("the deferred message", &log, || {
        upstream.received().len() == 2
    })
    .await;
    assert_eq!(dkim_signatures(&upstream.received()[1].data), 2);
}

/// `keys import-opendkim` moves OpenDKIM's PEM keys (PKCS#1 RSA, PKCS#8 Ed25519) into the
/// token; the relay then signs with them there and the signatures verify against the
/// records OpenDKIM published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_keys_are_imported_into_the_token_and_sign_there() {
    use dkim_relay::keys::{generate, Algorithm, DnsRecord};
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path(), "dkim-import") else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    let config = write_config(dir.path(), &hsm, upstream.addr);
    let cache = TxtCache::default();
    let mut key_table = String::new();
    for (selector, algorithm) in [("mail", Algorithm::Rsa), ("ed", Algorithm::Ed25519)] {
        let key = generate(algorithm, 2048).unwrap();
        let path = dir.path().join(format!("{selector}.private"));
        let pem = match algorithm {
            // What opendkim-genkey writes: PKCS#1.
            Algorithm::Rsa => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::DecodePrivateKey;
                rsa::PrivateKey::from_pkcs8_pem(&key.private_pem)
                    .unwrap()
                    .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                    .unwrap()
                    .to_string()
            }
            Algorithm::Ed25519 => key.private_pem.to_string(),
        };
        std::fs::write(&path, pem).unwrap();
        let record = DnsRecord::new(DOMAIN, selector, algorithm, &key.public_key);
        cache.add(&record.name, &record.value);
        key_table.push_str(&format!(
            "{selector}._domainkey.example.com example.com:{selector}:{}\n",
            path.display()
        ));
    }
    std::fs::write(dir.path().join("KeyTable"), key_table).unwrap();
    std::fs::write(
        dir.path().join("SigningTable"),
        "*@example.com mail._domainkey.example.com\n*@example.com ed._domainkey.example.com\n",
    )
    .unwrap();
    let (ok, out) = cli(
        &config,
        &hsm.conf,
        &[
            "keys",
            "import-opendkim",
            "--key-table",
            &dir.path().join("KeyTable").display().to_string(),
            "--signing-table",
            &dir.path().join("SigningTable").display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("into PKCS#11 token \"dkim-import\""), "{out}");
    let state = std::fs::read_to_string(dir.path().join("keys/example.com/state.json")).unwrap();
    assert_eq!(state.matches("\"token_id\"").count(), 2, "{state}");
    let objects = hsm.objects();
    assert_eq!(
        objects.matches("Access:     sensitive").count(),
        2,
        "{objects}"
    );

    let log = Arc::new(Mutex::new(Vec::new()));
    let (_relay, addr) = spawn_relay(&config, &hsm.conf, log.clone());
    let mut client = Client::greeted(addr).await;
    let reply = client
        .send(
            "app@host",
            &["u@example.net"],
            &message("app@example.com", "imported"),
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    wait_until("the message", &log, || upstream.received().len() == 1).await;
    let data = &upstream.received()[0].data;
    assert_eq!(tag_values(data, "s"), ["mail", "ed"]);
    assert_signed(data, &cache, DOMAIN).await;
}
