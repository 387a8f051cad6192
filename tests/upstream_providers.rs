//! Known providers (src/config/providers.rs): an SES-like fake upstream on 127.0.0.1 that
//! refuses a second DKIM-Signature as Amazon SES does gets every message with one
//! signature although `profile` is not set and the domain has `ed25519 = true`; and
//! `config check` says which profile each upstream gets and refuses a config that would
//! send SES two signatures.

mod common;

use common::child::cli;
use common::upstream::{dkim_signatures, FakeUpstream};
use common::verify::{verify, TxtCache};
use common::*;
use dkim_relay::config::ProviderId;
use mail_auth::DkimResult;

/// The test's messages, not a bounce the relay may have sent after a refusal.
fn ours(ses: &FakeUpstream) -> Vec<common::upstream::Received> {
    ses.received()
        .into_iter()
        .filter(|m| m.mail_from == "app@host")
        .collect()
}

async fn send_to_ses_like(provider: Option<ProviderId>, messages: usize) -> FakeUpstream {
    let ses = FakeUpstream::start().await;
    ses.refuse_second_signature();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(ses.addr));
    assert!(config.domains.iter().all(|d| d.ed25519));
    let upstream = config.upstream.as_mut().unwrap();
    upstream.provider = provider;
    assert_eq!(upstream.profile, None);
    config.validate().unwrap();
    let relay = start(config).await;
    let mut events = relay.subscribe();
    for i in 0..messages {
        let mut client = Client::greeted(relay.smtp_addr()).await;
        let r = client
            .send(
                "app@host",
                &["u@example.net"],
                &message("app@example.com", &format!("ses-{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    wait_done(&mut events, messages).await;
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    for m in ours(&ses) {
        let results = verify(&m.data, &cache).await;
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0].0, "rsa-sha256");
        assert_eq!(results[0].3, DkimResult::Pass, "{results:?}");
    }
    relay.shutdown().await;
    ses
}

#[tokio::test]
async fn an_ses_upstream_gets_one_signature_without_the_profile_set() {
    let ses = send_to_ses_like(Some(ProviderId::Ses), 3).await;
    assert_eq!(ses.duplicate_refused(), 0);
    let received = ours(&ses);
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|m| dkim_signatures(&m.data) == 1));
}

/// The same upstream not known as SES: the fake refuses each message, so the test above
/// can fail.
#[tokio::test]
async fn without_the_provider_the_fake_refuses_two_signatures() {
    let ses = send_to_ses_like(None, 1).await;
    assert_eq!(ses.duplicate_refused(), 1);
    assert!(ours(&ses).is_empty());
}

fn write(dir: &std::path::Path, upstream: &str) -> std::path::PathBuf {
    let _ = common::config(dir, None);
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"relay.test\"\n[spool]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\ngenerate_missing = false\n[[domains]]\nname = \"example.com\"\ned25519 = true\n[upstream]\n{upstream}",
            dir.join("spool").display(),
            dir.join("keys").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn config_check_names_the_profile_an_ses_host_gets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "host = \"email-smtp.eu-west-1.amazonaws.com\"\n",
    );
    let (ok, out) = cli(&path, &["config", "check"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("email-smtp.eu-west-1.amazonaws.com:587) is Amazon SES (from its host name): signing profile \"ses\""),
        "{out}"
    );
}

#[test]
fn config_check_refuses_two_signatures_to_ses() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "host = \"email-smtp.eu-west-1.amazonaws.com\"\nprofile = \"standard\"\n",
    );
    let (ok, out) = cli(&path, &["config", "check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Amazon SES takes at most 1 DKIM-Signature per message"),
        "{out}"
    );
    assert!(out.contains("Ed25519"), "{out}");
}

#[test]
fn config_check_refuses_plain_text_to_a_remote_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "host = \"192.0.2.25\"\nport = 25\ntls = \"none\"\n",
    );
    let (ok, out) = cli(&path, &["config", "check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("allow_plaintext = true"), "{out}");
    let path = write(
        dir.path(),
        "host = \"192.0.2.25\"\nport = 25\ntls = \"none\"\nallow_plaintext = true\n",
    );
    let (ok, out) = cli(&path, &["config", "check"]);
    assert!(ok, "{out}");
}
