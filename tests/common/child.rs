//! The relay as a child process (`target/debug/dkim-relay serve --config …`), for tests
//! that kill it or read its log.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Delivery workers (and upstream pool size) of the child relay.
pub const WORKERS: usize = 4;

/// Writes a config for a relay on 127.0.0.1 (port from the OS) with the test keys,
/// delivering to `upstream`; returns its path.
pub fn write_config(root: &Path, upstream: SocketAddr) -> std::path::PathBuf {
    // Copies the test keys into root/keys.
    let _ = super::config(root, None);
    let text = format!(
        r#"hostname = "relay.test"
[smtp]
listen = "127.0.0.1:0"
max_connections_per_client = 100
[spool]
dir = "{spool}"
fsync = true
[keys]
dir = "{keys}"
generate_missing = false
[[domains]]
name = "example.com"
ed25519 = true
[delivery]
workers = {WORKERS}
[upstream]
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = {WORKERS}
"#,
        spool = root.join("spool").display(),
        keys = root.join("keys").display(),
        port = upstream.port(),
    );
    let path = root.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `dkim-relay serve`; returns it and the address it listens on (from its log).
/// A relay child process; killed (SIGKILL) when dropped, so a failing test leaves none.
pub struct ChildRelay(Child);

impl ChildRelay {
    /// Takes charge of a relay started some other way (another environment).
    pub fn from_child(child: Child) -> Self {
        ChildRelay(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM (a clean shutdown), and wait for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spawn_relay(config: &Path, log: Arc<Mutex<Vec<String>>>) -> (ChildRelay, SocketAddr) {
    spawn_relay_with_env(config, log, &[])
}

/// [`spawn_relay`] with environment variables set for the child (SOFTHSM2_CONF, say).
pub fn spawn_relay_with_env(
    config: &Path,
    log: Arc<Mutex<Vec<String>>>,
    env: &[(&str, &Path)],
) -> (ChildRelay, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
        .envs(env.iter().copied())
        .args(["--config", &config.display().to_string(), "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(dkim_relay::relay::ACCEPTING) {
                let _ = tx.send(dkim_relay::relay::listen_addr_in_log(&line));
            }
            log.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("relay did not start")
        .expect("listen address in the log");
    (ChildRelay(child), addr)
}

/// Runs `dkim-relay --config CONFIG ARGS…`; returns (success, stdout + stderr).
pub fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    cli_with_env(config, args, &[])
}

/// [`cli`] with environment variables set for the command (SOFTHSM2_CONF, say).
pub fn cli_with_env(config: &Path, args: &[&str], env: &[(&str, &Path)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `dkim-relay queue ARGS` against the config; returns (success, stdout + stderr).
pub fn queue_cmd(config: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    cli(config, &all)
}
