//! A throwaway dkim-relay: config, key store and spool in a temp dir, keys made with the
//! real `dkim-relay keys generate` CLI, the release binary started as a child process.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const RELAY: &str = env!("CARGO_BIN_EXE_dkim-relay");

/// The relay binary to run: `BENCH_RELAY_BIN` if set (e.g. a build of the code before a
/// change, to compare the two under the same load), else this build's.
pub fn relay_bin() -> String {
    std::env::var("BENCH_RELAY_BIN").unwrap_or_else(|_| RELAY.to_string())
}

/// The signing domains: bench.test, then d1.bench.test, d2.bench.test, ...
pub fn domain_names(k: usize) -> Vec<String> {
    (0..k)
        .map(|i| match i {
            0 => "bench.test".to_string(),
            _ => format!("d{i}.bench.test"),
        })
        .collect()
}

pub struct Settings<'a> {
    pub sink_port: u16,
    pub domains: &'a [String],
    pub workers: usize,
    /// Most connections the relay must take at once (sessions plus idle ones).
    pub connections: usize,
    pub max_message_size: usize,
    pub fsync: bool,
}

/// Writes etc/relay.toml under `root` and returns its path.
pub fn write_config(root: &Path, s: &Settings) -> std::io::Result<PathBuf> {
    let mut text = format!(
        r#"hostname = "relay.bench"
[smtp]
listen = "127.0.0.1:0"
max_connections = {conns}
max_connections_per_client = {conns}
max_messages_per_session = 1000000
max_message_size = {size}
[spool]
dir = "{spool}"
fsync = {fsync}
[keys]
dir = "{keys}"
generate_missing = false
[delivery]
workers = {workers}
[upstream]
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = {workers}
[rotation]
enabled = false
"#,
        conns = s.connections,
        size = s.max_message_size,
        spool = root.join("spool").display(),
        keys = root.join("keys").display(),
        workers = s.workers,
        port = s.sink_port,
        fsync = s.fsync,
    );
    for d in s.domains {
        text.push_str(&format!("[[domains]]\nname = \"{d}\"\ned25519 = true\n"));
    }
    // In a folder of its own: the relay watches the config file's folder recursively for
    // hot reload, and a spool under it would make every message a reload event.
    let etc = root.join("etc");
    std::fs::create_dir(&etc)?;
    let path = etc.join("relay.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn cli(config: &Path, args: &[&str]) -> Result<(), String> {
    let relay = relay_bin();
    let out = Command::new(&relay)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .map_err(|e| format!("{relay}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dkim-relay {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One RSA-2048 and one Ed25519 key for the first domain, made and activated with the CLI;
/// the other domains get copies of its folder (generating 10,000 RSA keys would take
/// longer than the benchmark), with the domain in state.json changed.
pub fn make_keys(root: &Path, config: &Path, domains: &[String]) -> Result<(), String> {
    let first = &domains[0];
    cli(
        config,
        &[
            "keys",
            "generate",
            "--domain",
            first,
            "--algorithms",
            "rsa,ed25519",
        ],
    )?;
    cli(config, &["keys", "activate", "--force", "--domain", first])?;
    let keys = root.join("keys");
    let source = keys.join(first);
    let state = std::fs::read_to_string(source.join("state.json")).map_err(|e| e.to_string())?;
    let files: Vec<PathBuf> = std::fs::read_dir(&source)
        .map_err(|e| e.to_string())?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    let domain_field = format!("\"domain\": \"{first}\"");
    for d in &domains[1..] {
        copy_domain(
            &keys.join(d),
            &files,
            &state.replace(&domain_field, &format!("\"domain\": \"{d}\"")),
        )
        .map_err(|e| format!("{d}: {e}"))?;
    }
    Ok(())
}

fn copy_domain(dir: &Path, pems: &[PathBuf], state: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    for pem in pems {
        // std::fs::copy keeps the 0600 mode.
        std::fs::copy(pem, dir.join(pem.file_name().unwrap_or_default()))?;
    }
    std::fs::write(dir.join("state.json"), state)
}

/// The relay child process; SIGTERM and wait when dropped.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl RelayProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `dkim-relay serve`, copies its log to `log`, and waits (up to `deadline`) for the
/// line saying it accepts mail, which names the address it is bound to.
pub fn spawn(config: &Path, log: &Path, deadline: Duration) -> Result<RelayProcess, String> {
    let relay = relay_bin();
    let mut child = Command::new(&relay)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{relay}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(dkim_relay::relay::ACCEPTING) {
                let _ = tx.send(dkim_relay::relay::listen_addr_in_log(&line));
            }
            let _ = writeln!(file, "{line}");
        }
    });
    let relay = |addr| RelayProcess { child, addr };
    match rx.recv_timeout(deadline) {
        Ok(Some(addr)) => Ok(relay(addr)),
        Ok(None) => Err("relay log named no listen address".into()),
        Err(_) => {
            drop(relay(SocketAddr::from(([0, 0, 0, 0], 0))));
            Err(format!(
                "relay did not start within {deadline:?}; log: {}",
                log.display()
            ))
        }
    }
}
