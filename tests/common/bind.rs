//! A real authoritative DNS server for tests: BIND 9's `named` as a child process on
//! 127.0.0.1 (a port the OS picked), in a temp dir holding its config, one zone and a TSIG
//! key, changed with `nsupdate` as a publish hook would. Killed when dropped.
//!
//! Needs the Debian packages `bind9` (named) and `bind9-dnsutils` (nsupdate); `.ci/run`
//! installs them. Works as root: named runs in the foreground (`-g`) without `-u`, and
//! every path it writes (pid, session key, journal, managed keys) is in the temp dir.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TSIG key that may update the zone. A fixed test value: it guards a server that
/// lives for one test on loopback.
const TSIG_NAME: &str = "dkim-relay-test";
const TSIG_SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LW5vdC1hLXJlYWwta2V5";

pub struct Bind {
    pub addr: SocketAddr,
    pub zone: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Bind {
    /// Starts named serving `zone` (SOA, NS, nothing else), allowing TSIG updates.
    pub fn start(zone: &str) -> Bind {
        let mut last_log = String::new();
        // A port picked by binding 0 can be taken again before named binds it (other
        // tests run at the same time): then named exits, and we try another.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            write_files(dir.path(), zone, port);
            let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
            let child = match Command::new("named")
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
            {
                Ok(child) => child,
                Err(e) => panic!(
                    "cannot run named ({e}): install BIND 9 (apt-get install bind9 bind9-dnsutils)"
                ),
            };
            let mut bind = Bind {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                zone: zone.to_string(),
                dir,
                child,
            };
            match bind.wait_running() {
                Ok(()) => return bind,
                Err(log) => last_log = log,
            }
        }
        panic!("named did not start; its last log:\n{last_log}");
    }

    /// Waits for named's "running" line; Err(log) if it exited or took too long.
    fn wait_running(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.lines().any(|l| l.ends_with(" running")) {
                return Ok(());
            }
            if self.child.try_wait().ok().flatten().is_some()
                || started.elapsed() > Duration::from_secs(20)
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// named's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// Runs one `nsupdate` transaction (the `update …` lines given), TSIG-signed.
    pub fn nsupdate(&self, updates: &[String]) {
        let mut script = format!(
            "server {} {}\nzone {}\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        for u in updates {
            script.push_str(u);
            script.push('\n');
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(self.key_file())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate (apt-get install bind9-dnsutils)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nsupdate failed: {}{}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces every TXT record at `name` with one record holding `value`, split into
    /// 255-octet strings as a zone file would.
    pub fn set_txt(&self, name: &str, value: &str) {
        let strings: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        let fqdn = fqdn(name);
        self.nsupdate(&[
            format!("update delete {fqdn} TXT"),
            format!("update add {fqdn} 60 TXT {}", strings.join(" ")),
        ]);
    }

    /// Deletes every TXT record at `name`.
    pub fn delete_txt(&self, name: &str) {
        self.nsupdate(&[format!("update delete {} TXT", fqdn(name))]);
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("tsig.key")
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A port free for both TCP and UDP on 127.0.0.1 at the moment of asking.
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn write_files(dir: &Path, zone: &str, port: u16) {
    let d = dir.display();
    let key =
        format!("key \"{TSIG_NAME}\" {{ algorithm hmac-sha256; secret \"{TSIG_SECRET}\"; }};\n");
    std::fs::write(dir.join("tsig.key"), &key).unwrap();
    let conf = format!(
        r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
  allow-query {{ any; }};
}};
controls {{ }};
{key}zone "{zone}" {{
  type primary;
  file "{d}/zone.db";
  journal "{d}/zone.db.jnl";
  allow-update {{ key "{TSIG_NAME}"; }};
}};
"#
    );
    std::fs::write(dir.join("named.conf"), conf).unwrap();
    let db = format!(
        "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
    );
    std::fs::write(dir.join("zone.db"), db).unwrap();
}
