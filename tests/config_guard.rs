//! `config check` and `serve` as processes, on configs an operator could write by mistake:
//! networks that add up to an open relay, a hostname that would inject header fields, and
//! files that `serve` cannot load. `config check` must refuse everything `serve` refuses.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dkim-relay")
}

/// A config with nothing to sign and no upstream, with `extra` appended to its top level
/// (`top`) and to its `[smtp]` table.
fn write(dir: &Path, top: &str, smtp: &str, rest: &str) -> std::path::PathBuf {
    let text = format!(
        "{top}\n[smtp]\nlisten = \"127.0.0.1:0\"\n{smtp}\n[spool]\ndir = \"{spool}\"\nfsync = false\n\
         [keys]\ndir = \"{keys}\"\ngenerate_missing = false\n[delivery]\noutbox_dir = \"{outbox}\"\n\
         [rotation]\ndns_check = false\npropagation_wait = \"0s\"\n{rest}",
        spool = dir.join("spool").display(),
        keys = dir.join("keys").display(),
        outbox = dir.join("outbox").display(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `config check`: (exit status 0, stdout + stderr).
fn check(config: &Path) -> (bool, String) {
    common::child::cli(config, &["config", "check"])
}

/// Whether `serve` exits with an error by itself (instead of starting to accept mail).
fn serve_refuses(config: &Path) -> bool {
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return !status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn networks_that_add_up_to_an_open_relay_are_refused_by_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let senders =
        |nets: &str| format!("[[smtp.senders]]\nnetworks = {nets}\nfrom_domains = [\"*\"]\n");
    let cases: Vec<(String, String)> = vec![
        (
            "allowed_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]".into(),
            String::new(),
        ),
        (
            "allowed_networks = [\"::/1\", \"8000::/1\"]".into(),
            String::new(),
        ),
        (String::new(), senders("[\"0.0.0.0/1\", \"128.0.0.0/1\"]")),
        (
            "allowed_networks = [\"0.0.0.0/1\"]".into(),
            senders("[\"128.0.0.0/1\"]"),
        ),
        (String::new(), senders("[\"::/0\"]")),
        (
            "allowed_networks = [\"::ffff:0:0/96\"]".into(),
            String::new(),
        ),
        (
            "allowed_networks = [\"64:ff9b::/96\"]".into(),
            String::new(),
        ),
        (
            "allowed_networks = [\"11.0.0.0/8\", \"12.0.0.0/8\"]".into(),
            String::new(),
        ),
    ];
    for (smtp, senders) in &cases {
        // [[smtp.senders]] must come after the [smtp] keys: append it to that table.
        let config = write(dir.path(), "", &format!("{smtp}\n{senders}"), "");
        let (ok, out) = check(&config);
        assert!(!ok, "config check passed: {smtp} {senders}\n{out}");
        assert!(out.contains("open relay"), "{out}");
        assert!(serve_refuses(&config), "serve started: {smtp} {senders}");
    }

    // Every private network, and one public /24, are fine.
    let config = write(
        dir.path(),
        "",
        "allowed_networks = [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.0/8\", \"172.16.0.0/12\", \
         \"192.168.0.0/16\", \"100.64.0.0/10\", \"169.254.0.0/16\", \"fc00::/7\", \"fe80::/10\", \
         \"198.51.100.0/24\"]",
        "",
    );
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
}

#[test]
fn a_hostname_with_a_line_break_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "hostname = \"relay.test\\r\\nBcc: everyone@example.net\"",
        "",
        "",
    );
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    assert!(out.contains("hostname"), "{out}");
    assert!(serve_refuses(&config));
}

#[test]
fn check_refuses_tls_files_and_users_files_that_serve_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::inbound::make_pki(dir.path(), "srv");
    let tls = |cert: &Path, key: &Path| {
        format!(
            "[smtp.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let users = dir.path().join("users.toml");
    let auth = format!("[smtp.auth]\nusers_file = \"{}\"\n", users.display());
    let good_hash = dkim_relay::auth::hash_password(b"pw").unwrap();
    let user = |hash: &str| {
        format!("[[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\nfrom_domains = [\"*\"]\n")
    };

    // The good pair and users file pass both.
    std::fs::write(&users, user(&good_hash)).unwrap();
    let good = write(
        dir.path(),
        "",
        &format!("{}{auth}", tls(&pki.cert_file, &pki.key_file)),
        "",
    );
    let (ok, out) = check(&good);
    assert!(ok, "{out}");

    // A key file that is not a key; a certificate file that holds the key.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem file\n").unwrap();
    for (cert, key) in [(&pki.cert_file, &junk), (&pki.key_file, &pki.key_file)] {
        let config = write(dir.path(), "", &tls(cert, key), "");
        let (ok, out) = check(&config);
        assert!(
            !ok,
            "config check passed a TLS pair serve cannot load\n{out}"
        );
        assert!(out.contains("smtp.tls"), "{out}");
        assert!(serve_refuses(&config));
    }

    // A plain-text password, a hash of another algorithm, an argon2 string without a hash.
    let config = write(
        dir.path(),
        "",
        &format!("{}{auth}", tls(&pki.cert_file, &pki.key_file)),
        "",
    );
    for hash in [
        "hunter2",
        "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
    ] {
        std::fs::write(&users, user(hash)).unwrap();
        let (ok, out) = check(&config);
        assert!(!ok, "config check passed the hash {hash}\n{out}");
        assert!(out.contains("users"), "{out}");
        assert!(
            !out.contains("hunter2"),
            "the password reached the output: {out}"
        );
        assert!(serve_refuses(&config), "serve started with the hash {hash}");
    }
}
