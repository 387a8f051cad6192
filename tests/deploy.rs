//! What the deployment files promise: the systemd unit is valid, and the binary tells
//! systemd it is ready (Type=notify), survives a reload (SIGHUP) and stops cleanly on
//! SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_dkim-relay");

#[test]
fn serve_sends_ready_to_systemd_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let config = dir.path().join("relay.toml");
    let d = dir.path().display();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{d}/spool\"\n[keys]\ndir = \"{d}/keys\"\n[delivery]\noutbox_dir = \"{d}/outbox\"\n[rotation]\ndns_check = false\n[metrics]\nlisten = \"0.0.0.0:{port}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = socket.recv(&mut buf);
    // The container HEALTHCHECK command, against the running relay.
    let health = |check: &str| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["health", "--check", check])
            .output()
            .unwrap()
    };
    // `systemctl reload` (ExecReload) sends SIGHUP: the relay re-reads, it does not die.
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let healthz = health("healthz");
    let readyz = health("readyz");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let n = got.expect("no READY=1 from the relay");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        healthz.status.success(),
        "{}",
        String::from_utf8_lossy(&healthz.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&healthz.stdout), "ok\n");
    assert!(
        readyz.status.success(),
        "{}",
        String::from_utf8_lossy(&readyz.stderr)
    );
    // With the relay stopped, the check fails.
    assert!(!health("healthz").status.success());
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/dkim-relay.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/dkim-relay "));
    // Point ExecStart at the binary just built: verify checks that it exists.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dkim-relay.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/dkim-relay", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 even for unknown keys; any message is a finding.
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

/// README "Two commands": `cargo run --release -- serve` in a fresh folder, no config file.
/// The first screen says where it listens, what it signs, where mail goes and what to run
/// next, in words (no Rust Debug forms); a message sent to it lands signed in `./outbox`.
#[test]
fn serve_on_the_embedded_defaults_prints_a_first_screen_and_signs_into_the_outbox() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Everything up to the swaks hint, the summary's last line.
    let mut screen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let last = line.contains("send a test message");
        screen.push(line);
        if last {
            break;
        }
    }
    let text = screen.join("\n");
    let kill = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    if !text.contains("listen=127.0.0.1:2525") {
        kill(&mut child);
        panic!("no 'accepting mail' on 127.0.0.1:2525 (is the port taken?):\n{text}");
    }
    for want in [
        "dkim-relay is accepting mail listen=127.0.0.1:2525",
        "signing domain=example.com selectors=s1 (rsa), e1 (ed25519)",
        "NO UPSTREAM CONFIGURED",
        "command=dkim-relay keys dns",
        "command=swaks --server 127.0.0.1:2525 --from someone@example.com --to you@example.net",
    ] {
        assert!(text.contains(want), "first screen lacks {want:?}:\n{text}");
    }
    for debug_form in ["Some(", "None", "Pending", "Active", "Published"] {
        assert!(
            !text.contains(debug_form),
            "Debug form {debug_form:?} in:\n{text}"
        );
    }
    assert!(
        screen.len() <= 12,
        "first screen is {} lines:\n{text}",
        screen.len()
    );
    assert!(
        screen.iter().all(|l| l.len() <= 200),
        "a long line in:\n{text}"
    );

    // The swaks line, spoken by hand.
    let mut smtp = std::net::TcpStream::connect("127.0.0.1:2525").unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reply = |smtp: &mut std::net::TcpStream| {
        let mut buf = [0u8; 4096];
        let n = smtp.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(reply(&mut smtp).starts_with("220"));
    for (command, code) in [
        ("EHLO test.example\r\n", "250"),
        ("MAIL FROM:<someone@example.com>\r\n", "250"),
        ("RCPT TO:<you@example.net>\r\n", "250"),
        ("DATA\r\n", "354"),
        (
            "From: someone@example.com\r\nTo: you@example.net\r\nSubject: test\r\n\r\nhello\r\n.\r\n",
            "250",
        ),
    ] {
        smtp.write_all(command.as_bytes()).unwrap();
        let got = reply(&mut smtp);
        assert!(got.starts_with(code), "{command:?} -> {got}");
    }
    smtp.write_all(b"QUIT\r\n").unwrap();
    let outbox = dir.path().join("outbox");
    let mut signed = None;
    for _ in 0..300 {
        if let Some(entry) = std::fs::read_dir(&outbox)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        {
            signed = Some(std::fs::read_to_string(entry.path()).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(&mut child);
    let signed = signed.expect("no .eml in ./outbox");
    assert!(signed.contains("DKIM-Signature:") && signed.contains("s=s1"));
    assert!(dir.path().join("keys/example.com").is_dir());
    assert!(dir.path().join("spool").is_dir());
}

/// What an operator sees when the first start goes wrong: each problem said once, with the
/// field or the fix, never the laptop defaults run silently from an empty file.
#[test]
fn start_errors_name_the_problem_once_and_an_empty_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &std::path::Path, command: &str| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg(command)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A port someone else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let busy = dir.path().join("busy.toml");
    std::fs::write(
        &busy,
        format!("[smtp]\nlisten = \"127.0.0.1:{port}\"\n[rotation]\ndns_check = false\n"),
    )
    .unwrap();
    let (ok, err) = run(&busy, "serve");
    assert!(!ok);
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains("change the listen address"), "{err}");
    // keys.dir that is a file; relative, so it is next to the config file.
    let file_keys = dir.path().join("file-keys.toml");
    std::fs::write(dir.path().join("notadir"), "").unwrap();
    std::fs::write(
        &file_keys,
        "[smtp]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"spool2\"\n[keys]\ndir = \"notadir\"\n",
    )
    .unwrap();
    let (ok, err) = run(&file_keys, "serve");
    assert!(!ok);
    assert!(
        err.contains("keys.dir = ") && err.contains("notadir is a file, not a directory"),
        "{err}"
    );
    assert!(!err.contains("File exists"), "{err}");
    // An empty file.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&empty)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the file is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
