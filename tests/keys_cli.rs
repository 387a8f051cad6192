//! The `keys` commands run as processes on a temp store, as an operator would.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dkim-relay")
}

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\ndir = \"{}\"\n[[domains]]\nname = \"example.net\"\ned25519 = true\n[rotation]\ndns_check = false\npropagation_wait = \"0s\"\n",
            dir.path().join("keys").display()
        ),
    )
    .unwrap();
    (dir, config)
}

fn states(config: &Path) -> Vec<(String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&ok(config, &["keys", "status", "--json"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["selector"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn generate_status_dns_rotate_and_activate() {
    let (_dir, config) = setup();
    let out = ok(
        &config,
        &[
            "keys",
            "generate",
            "--domain",
            "example.net",
            "--algorithms",
            "rsa,ed25519",
        ],
    );
    assert!(
        out.contains("s1._domainkey.example.net. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=MIIBIj"),
        "{out}"
    );
    assert_eq!(
        states(&config),
        [
            ("s1".into(), "pending".into()),
            ("e1".into(), "pending".into())
        ]
    );

    // Without --force, activation is refused; with it, the keys sign.
    assert!(
        !run(&config, &["keys", "activate", "--domain", "example.net"])
            .status
            .success()
    );
    ok(
        &config,
        &["keys", "activate", "--force", "--domain", "example.net"],
    );
    assert_eq!(
        states(&config),
        [
            ("s1".into(), "active".into()),
            ("e1".into(), "active".into())
        ]
    );

    // Nothing is due yet; --now rotates to s2/e2 (DNS checks are off in this config).
    assert!(ok(&config, &["keys", "rotate", "--due"]).contains("nothing to do"));
    ok(&config, &["keys", "rotate", "--now"]);
    let s = states(&config);
    assert!(
        s.contains(&("s1".into(), "retiring".into()))
            && s.contains(&("s2".into(), "active".into())),
        "{s:?}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&config, &["keys", "dns", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);

    // Emergency: every key goes, the new ones are pending, revocations are printed.
    let out = ok(
        &config,
        &["keys", "rotate", "--emergency", "--domain", "example.net"],
    );
    assert!(
        out.contains("s2._domainkey.example.net. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=\" )"),
        "{out}"
    );
    let s = states(&config);
    assert!(
        s.contains(&("s2".into(), "retired".into()))
            && s.contains(&("s1".into(), "pending".into())),
        "{s:?}"
    );
    let dns = ok(&config, &["keys", "dns"]);
    assert!(
        dns.contains("s2._domainkey.example.net. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=\" )"),
        "{dns}"
    );
}

#[test]
fn two_concurrent_rotations_rotate_once() {
    let (_dir, config) = setup();
    ok(
        &config,
        &[
            "keys",
            "generate",
            "--domain",
            "example.net",
            "--algorithms",
            "rsa,ed25519",
        ],
    );
    ok(
        &config,
        &["keys", "activate", "--force", "--domain", "example.net"],
    );
    let spawn = || {
        Command::new(bin())
            .arg("--config")
            .arg(&config)
            .args(["keys", "rotate", "--now"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success());
    let s = states(&config);
    let active: Vec<_> = s.iter().filter(|(_, st)| st == "active").collect();
    assert_eq!(active.len(), 2, "{s:?}");
    assert_eq!(s.len(), 4, "exactly one rotation: {s:?}");
    assert_eq!(
        s.iter().filter(|(_, st)| st == "retiring").count(),
        2,
        "{s:?}"
    );
}

#[test]
fn import_from_opendkim_tables() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let (dir, config) = setup();
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let pem_path = dir.path().join("mail.private");
    std::fs::write(
        &pem_path,
        key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let key_table = dir.path().join("KeyTable");
    std::fs::write(
        &key_table,
        format!(
            "mail._domainkey.example.org example.org:mail:{}\n",
            pem_path.display()
        ),
    )
    .unwrap();
    let signing_table = dir.path().join("SigningTable");
    std::fs::write(
        &signing_table,
        "*@example.org mail._domainkey.example.org\n",
    )
    .unwrap();
    let out = ok(
        &config,
        &[
            "keys",
            "import-opendkim",
            "--key-table",
            key_table.to_str().unwrap(),
            "--signing-table",
            signing_table.to_str().unwrap(),
        ],
    );
    assert!(out.contains("1 key(s) imported"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(
        &config,
        &["keys", "status", "--json", "--domain", "example.org"],
    ))
    .unwrap();
    assert_eq!(json[0]["selector"], "mail");
    assert_eq!(json[0]["state"], "active");
    assert_eq!(json[0]["bits"], 2048);
    // The published record is the one OpenDKIM's key already has in DNS.
    let dns = ok(&config, &["keys", "dns", "--domain", "example.org"]);
    assert!(dns.starts_with("mail._domainkey.example.org."), "{dns}");
}

#[test]
fn bad_input_exits_non_zero_with_a_reason() {
    let (_dir, config) = setup();
    let out = run(&config, &["keys", "generate", "--domain", "not a domain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a domain name"));
    let out = run(&config, &["keys", "rotate"]);
    assert!(!out.status.success());
    let bad = config.with_file_name("bad.toml");
    std::fs::write(&bad, "[rotation]\ngrace = \"1d\"\n").unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rotation.grace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
