//! `dkim-relay doctor` run as a process against a DNS server on 127.0.0.1, as an operator
//! would run it: exit status and the plain-words findings.

mod common;

use common::dns::TestDns;
use common::{DOMAIN, OTHER_DOMAIN};
use dkim_relay::keys::{DnsRecord, KeyStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const SES_HOST: &str = "email-smtp.eu-west-1.amazonaws.com";
const GOOD_SPF: &str = "v=spf1 include:amazonses.com -all";

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    store: KeyStore,
}

/// A key store with active keys (s1 RSA, e1 Ed25519) for DOMAIN and OTHER_DOMAIN, an SES
/// upstream, and `resolver` as `[rotation] resolver`.
fn setup(resolver: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = common::config(dir.path(), None).keys.dir;
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\ndir = \"{}\"\n[[domains]]\nname = \"{DOMAIN}\"\ned25519 = true\n[[domains]]\nname = \"{OTHER_DOMAIN}\"\ned25519 = true\n[upstream]\nhost = \"{SES_HOST}\"\nprofile = \"ses\"\n[rotation]\nresolver = \"{resolver}\"\n",
            keys.display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        store: KeyStore::new(&keys),
    }
}

/// The DKIM records the key store says to publish for `domain`.
fn dkim_records(store: &KeyStore, domain: &str) -> Vec<DnsRecord> {
    let state = store.load(domain).unwrap().unwrap();
    state
        .slots
        .iter()
        .map(|s| store.record(domain, s).unwrap())
        .collect()
}

/// The DKIM record of `selector` (s1, e1) the key store says to publish for `domain`.
fn dkim_record(store: &KeyStore, domain: &str, selector: &str) -> DnsRecord {
    let prefix = format!("{selector}.");
    dkim_records(store, domain)
        .into_iter()
        .find(|r| r.name.starts_with(&prefix))
        .unwrap()
}

/// A DNS server on 127.0.0.1 with everything right for DOMAIN, and the relay set up to
/// ask it.
async fn all_good_for_domain() -> (TestDns, Setup) {
    let dns = TestDns::start().await;
    let s = setup(dns.addr);
    publish_all_good(&dns, &s.store, DOMAIN);
    (dns, s)
}

/// Everything right for `domain`.
fn publish_all_good(dns: &TestDns, store: &KeyStore, domain: &str) {
    dns.set_txt(domain, GOOD_SPF);
    for r in dkim_records(store, domain) {
        dns.set_txt(&r.name, &r.value);
    }
    dns.set_txt(
        &format!("_dmarc.{domain}"),
        &format!("v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"),
    );
}

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

async fn doctor(config: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
        .arg("--config")
        .arg(config)
        .arg("doctor")
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The text lines of one marker (OK, WARN, ERROR) about one record type.
fn lines<'a>(out: &'a str, marker: &str, check: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(marker) && words.next() == Some(check)
        })
        .collect()
}

#[tokio::test]
async fn all_good_records_exit_0_with_ok_lines() {
    let (dns, s) = all_good_for_domain().await;
    publish_all_good(&dns, &s.store, OTHER_DOMAIN);

    let run = doctor(&s.config, &[]).await;
    assert_eq!(run.status, 0, "{}{}", run.stdout, run.stderr);
    for domain in [DOMAIN, OTHER_DOMAIN] {
        assert!(
            run.stdout.contains(&format!("{domain}\n")),
            "{}",
            run.stdout
        );
    }
    let spf = lines(&run.stdout, "OK", "SPF");
    assert_eq!(spf.len(), 2, "{}", run.stdout);
    assert!(spf[0].contains("authorises Amazon SES"), "{}", run.stdout);
    let dkim = lines(&run.stdout, "OK", "DKIM");
    assert_eq!(dkim.len(), 4, "{}", run.stdout);
    assert!(dkim
        .iter()
        .any(|l| l.contains("s1 (rsa, active)") && l.contains("serves this key")));
    assert!(dkim.iter().any(|l| l.contains("e1 (ed25519, active)")));
    assert_eq!(lines(&run.stdout, "OK", "DMARC").len(), 2, "{}", run.stdout);
    assert!(!run.stdout.contains("ERROR"), "{}", run.stdout);
    assert!(run
        .stdout
        .contains("0 error(s), 0 warning(s) in 2 domain(s)"));

    // The same, for machines.
    let run = doctor(&s.config, &["--json", "--domain", DOMAIN]).await;
    assert_eq!(run.status, 0, "{}{}", run.stdout, run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["errors"], 0);
    assert_eq!(json["domains"][0]["domain"], DOMAIN);
    assert!(json["domains"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["check"] == "dkim" && f["severity"] == "ok"));
}

#[tokio::test]
async fn missing_dmarc_and_missing_active_dkim_exit_1_in_plain_words() {
    let (dns, s) = all_good_for_domain().await;
    let rsa = dkim_record(&s.store, DOMAIN, "s1");
    dns.remove(&rsa.name);
    dns.remove(&format!("_dmarc.{DOMAIN}"));

    let run = doctor(&s.config, &["--domain", DOMAIN]).await;
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    let dkim = lines(&run.stdout, "ERROR", "DKIM").join("\n");
    assert!(
        dkim.contains("s1 (rsa, active)")
            && dkim.contains("no DKIM record at s1._domainkey.example.com"),
        "{}",
        run.stdout
    );
    assert!(dkim.contains("fails DKIM"), "{}", run.stdout);
    // The exact record to publish follows.
    assert!(run.stdout.contains(&rsa.zone_line()), "{}", run.stdout);
    let dmarc = lines(&run.stdout, "ERROR", "DMARC").join("\n");
    assert!(
        dmarc.contains("no DMARC record at _dmarc.example.com"),
        "{}",
        run.stdout
    );
    assert!(
        dmarc.contains("fails open") && dmarc.contains("spam"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("_dmarc.example.com. 3600 IN TXT \"v=DMARC1; p=none"));
    // The Ed25519 key and SPF are still fine.
    assert_eq!(lines(&run.stdout, "OK", "DKIM").len(), 1, "{}", run.stdout);
    assert_eq!(lines(&run.stdout, "OK", "SPF").len(), 1, "{}", run.stdout);
    assert!(run.stderr.contains("2 error(s)"), "{}", run.stderr);
}

#[tokio::test]
async fn a_wrong_dkim_key_and_spf_without_the_upstream_exit_1_naming_both() {
    let (dns, s) = all_good_for_domain().await;
    // e1 carries another domain's Ed25519 key; SPF authorises Google, not SES.
    let other_e1 = dkim_record(&s.store, OTHER_DOMAIN, "e1");
    dns.set_txt(&format!("e1._domainkey.{DOMAIN}"), &other_e1.value);
    dns.set_txt(DOMAIN, "v=spf1 include:_spf.google.com ~all");

    let run = doctor(&s.config, &["--domain", DOMAIN]).await;
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    let dkim = lines(&run.stdout, "ERROR", "DKIM").join("\n");
    assert!(
        dkim.contains("e1 (ed25519, active)")
            && dkim.contains("wrong key at e1._domainkey.example.com"),
        "{}",
        run.stdout
    );
    let spf = lines(&run.stdout, "ERROR", "SPF").join("\n");
    assert!(
        spf.contains("does not authorise Amazon SES") && spf.contains("include:amazonses.com"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("example.com. 3600 IN TXT \"v=spf1 include:_spf.google.com include:amazonses.com ~all\""),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn a_key_published_as_two_txt_records_is_reported_as_split() {
    let (dns, s) = all_good_for_domain().await;
    let rsa = dkim_record(&s.store, DOMAIN, "s1");
    let (head, tail) = rsa.value.split_at(255);
    dns.set_txt_records(&rsa.name, &[head, tail]);

    let run = doctor(&s.config, &["--domain", DOMAIN]).await;
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    let dkim = lines(&run.stdout, "ERROR", "DKIM").join("\n");
    assert!(
        dkim.contains("split into 2 separate TXT records"),
        "{}",
        run.stdout
    );
    assert!(
        dkim.contains("one TXT record made of several quoted strings"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn an_unanswering_resolver_is_reported_not_waited_for() {
    // A UDP socket that reads nothing and answers nothing.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = setup(silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let run = doctor(&s.config, &["--domain", DOMAIN]).await;
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("could not look up"), "{}", run.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    drop(silent);
}

#[tokio::test]
async fn a_bad_config_or_domain_exits_2() {
    let dns = TestDns::start().await;
    let s = setup(dns.addr);
    let run = doctor(&s.config, &["--domain", "not a domain"]).await;
    assert_eq!(run.status, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("is not a domain name"),
        "{}",
        run.stderr
    );
    let bad = s.config.with_file_name("bad.toml");
    std::fs::write(&bad, "[rotation]\nresolver = \"nonsense\"\n").unwrap();
    let run = doctor(&bad, &[]).await;
    assert_eq!(run.status, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("bad.toml: line 2"), "{}", run.stderr);
}
