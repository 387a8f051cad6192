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
