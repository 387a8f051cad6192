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

/// SOFTHSM2_CONF for the relay and the CLI, when the keys are in a SoftHSM token.
static SOFTHSM2_CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    if let Some(conf) = SOFTHSM2_CONF.get() {
        command.env("SOFTHSM2_CONF", conf);
    }
    command
}

/// Makes a SoftHSM 2 token under `root` (its own token directory); returns the `[keys]`
/// lines that use it.
pub fn softhsm_token(root: &Path) -> Result<String, String> {
    let module = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .find(|m| Path::new(m).exists())
    .ok_or("--keys pkcs11 needs SoftHSM 2 (apt-get install softhsm2)")?;
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--so-pin",
            "87654321",
            "--pin",
            "12345678",
        ])
        .output()
        .map_err(|e| format!("softhsm2-util: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pin = root.join("token.pin");
    std::fs::write(&pin, "12345678\n").map_err(|e| e.to_string())?;
    let _ = SOFTHSM2_CONF.set(conf);
    Ok(format!(
        "backend = \"pkcs11\"\nmodule = \"{module}\"\ntoken_label = \"bench\"\npin_file = \"{}\"\n",
        pin.display()
    ))
}

pub struct Settings<'a> {
    pub sink_port: u16,
    pub domains: &'a [String],
    pub workers: usize,
    /// Most connections the relay must take at once (sessions plus idle ones).
    pub connections: usize,
    pub max_message_size: usize,
    pub fsync: bool,
    /// Extra `[keys]` lines (a PKCS#11 token).
    pub keys_extra: String,
    /// Where /metrics listens (the signing histogram is read from it).
    pub metrics: SocketAddr,
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
{keys_extra}[metrics]
listen = "{metrics}"
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
        keys_extra = s.keys_extra,
        metrics = s.metrics,
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
    let out = command(&relay)
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
    let mut child = command(&relay)
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

/// A port for /metrics: the OS picks it, and it is free again for the relay to bind.
pub fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

/// Mean DKIM signing time per message in ms and the messages counted, from the relay's
/// `dkim_relay_signing_seconds` histogram.
pub fn signing_cost(metrics: SocketAddr) -> Option<(f64, u64)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(metrics).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    let sum = value("dkim_relay_signing_seconds_sum ")?;
    let count = value("dkim_relay_signing_seconds_count ")?;
    (count > 0.0).then(|| (sum * 1000.0 / count, count as u64))
}
