//! Shared test harness: a relay started in-process on 127.0.0.1:0 with its own temp dirs,
//! a scripted fake upstream SMTP server, a raw SMTP client, and DKIM verification with
//! mail-auth against the records the key store publishes (in-memory DNS, no network).
#![allow(dead_code)]

pub mod bind;
pub mod child;
pub mod crash;
pub mod dns;
pub mod http;
pub mod inbound;
pub mod oauth;
pub mod pki;
pub mod upstream;
pub mod verify;

use dkim_relay::config::{Config, DomainConfig, TlsMode, UpstreamConfig};
use dkim_relay::delivery::DeliveryEvent;
use dkim_relay::keys::KeyStore;
use dkim_relay::relay::{self, RelayHandle};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// The queue ids of the messages in the spool at `spool` (its segment log and its
/// `.msg` files), as the spool itself reads them, without writing anything.
pub fn spooled_ids(spool: &Path) -> std::collections::HashSet<String> {
    dkim_relay::spool::Spool::attach(spool, false)
        .load_all()
        .map(|all| all.into_iter().map(|m| m.envelope.id.to_string()).collect())
        .unwrap_or_default()
}

pub const DOMAIN: &str = "example.com";
pub const OTHER_DOMAIN: &str = "example.org";

/// Keys are generated once per test binary and copied: RSA generation is the slow part.
fn key_template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = KeyStore::new(&dir);
        relay::bootstrap_keys(&store, &[domain(DOMAIN), domain(OTHER_DOMAIN)]).unwrap();
        dir
    })
}

pub fn domain(name: &str) -> DomainConfig {
    DomainConfig {
        name: name.into(),
        ed25519: true,
        rsa_selectors: ["s1".into(), "s2".into()],
        ed25519_selectors: ["e1".into(), "e2".into()],
        subdomains: true,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A config for a test relay: loopback port 0, dirs under `root`, keys for DOMAIN and
/// OTHER_DOMAIN already in the store, delivery to `upstream` (or the outbox if None).
pub fn config(root: &Path, upstream: Option<SocketAddr>) -> Config {
    let keys = root.join("keys");
    if !keys.exists() {
        copy_dir(key_template(), &keys);
    }
    let mut config = Config {
        hostname: "relay.test".into(),
        ..Config::default()
    };
    config.smtp.listen = "127.0.0.1:0".parse().unwrap();
    config.spool.dir = root.join("spool");
    config.keys.dir = keys;
    config.keys.generate_missing = false;
    config.domains = vec![domain(DOMAIN), domain(OTHER_DOMAIN)];
    config.delivery.outbox_dir = root.join("outbox");
    config.upstream = upstream.map(upstream_config);
    config.validate().unwrap();
    config
}

/// A plain-SMTP upstream on loopback named "upstream", standard signing, pool of 4.
pub fn upstream_config(addr: SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        name: "upstream".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: TlsMode::None,
        username: None,
        password_file: None,
        ca_file: None,
        connect_timeout: dkim_relay::config::HumanDuration(Duration::from_secs(5)),
        command_timeout: dkim_relay::config::HumanDuration(Duration::from_secs(10)),
        idle_timeout: dkim_relay::config::HumanDuration(Duration::from_secs(60)),
        pool_size: 4,
        profile: None,
        provider: None,
        allow_plaintext: false,
        unsigned_headers: Vec::new(),
        auth: None,
        oauth2_preset: None,
        tenant: None,
        token_url: None,
        client_id: None,
        client_secret_file: None,
        service_account_file: None,
        scope: None,
    }
}

pub async fn start(config: Config) -> RelayHandle {
    // Captured per test by the harness; shown only when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    relay::start(config).await.unwrap()
}

/// A relay delivering to a fresh fake upstream, its config adjusted by `tune` first.
pub async fn relay_with(
    tune: impl FnOnce(&mut Config),
) -> (RelayHandle, upstream::FakeUpstream, tempfile::TempDir) {
    let upstream = upstream::FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    tune(&mut config);
    config.validate().unwrap();
    (start(config).await, upstream, dir)
}

/// Reads one (possibly multi-line) SMTP reply; returns all its lines.
pub async fn read_reply_lines<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
            .await
            .expect("reply timeout")
            .unwrap();
        assert!(n > 0, "connection closed; lines so far {lines:?}");
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.trim_end().to_string());
        if last {
            return lines;
        }
    }
}

/// Waits (bounded) for an event matching `pred`; panics with what was seen otherwise.
pub async fn wait_for(
    rx: &mut broadcast::Receiver<DeliveryEvent>,
    mut pred: impl FnMut(&DeliveryEvent) -> bool,
) -> DeliveryEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rx.recv().await {
                Ok(event) if pred(&event) => return event,
                Ok(event) => seen.push(event),
                Err(e) => panic!("event channel: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for an event; saw {seen:?}"))
}

/// Waits for `n` Done events.
pub async fn wait_done(rx: &mut broadcast::Receiver<DeliveryEvent>, n: usize) {
    for _ in 0..n {
        wait_for(rx, |e| matches!(e, DeliveryEvent::Done { .. })).await;
    }
}

/// A raw SMTP client: sends exactly the bytes it is given.
pub struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub async fn reply(&mut self) -> String {
        self.reply_lines().await.pop().unwrap()
    }

    /// Reads one reply; returns all its lines.
    pub async fn reply_lines(&mut self) -> Vec<String> {
        read_reply_lines(&mut self.reader).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends one command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// EHLO, MAIL, RCPTs, DATA with the message dot-stuffed; returns the final reply.
    pub async fn send(&mut self, from: &str, to: &[&str], message: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if !r.starts_with("250") {
            return r;
        }
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250"), "{r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
        let mut data = String::new();
        for line in message.split_inclusive("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
        }
        if !data.ends_with("\r\n") {
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.send_raw(data.as_bytes()).await;
        self.reply().await
    }

    /// Connects and says EHLO.
    pub async fn greeted(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr).await;
        client.ehlo().await;
        client
    }

    pub async fn ehlo(&mut self) {
        let r = self.cmd("EHLO client.test").await;
        assert!(r.starts_with("250 "), "{r}");
    }
}

/// A simple valid message from `from`.
pub fn message(from: &str, subject: &str) -> String {
    format!(
        "From: Sender <{from}>\r\nTo: rcpt@example.net\r\nSubject: {subject}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHello from the test.\r\n"
    )
}

/// A port nothing listens on now, for a child relay to listen on. Released at once, so
/// another socket could take it before the child binds it (the child then fails to
/// start, loudly); for an address that must stay closed, use [`closed_port`].
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An address that refuses connections for the whole test: bound, never listening.
pub fn closed_port() -> SocketAddr {
    // Bound but never listening: a connect is refused, and no other socket (the relay's
    // own listener on port 0, say) can be given this port while the test runs. A port
    // that was bound and released could be, and the relay then delivered to itself.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held for the life of the test process.
    std::mem::forget(socket);
    addr
}

/// A relay whose loopback clients may use only example.com, like a tenant's network.
pub async fn tenant_relay() -> (
    dkim_relay::relay::RelayHandle,
    upstream::FakeUpstream,
    tempfile::TempDir,
) {
    let upstream = upstream::FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Some(upstream.addr));
    config.smtp.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
    config.smtp.senders = vec![dkim_relay::config::SenderPolicyConfig {
        networks: vec!["127.0.0.0/8".parse().unwrap()],
        from_domains: vec![DOMAIN.into()],
    }];
    config.validate().unwrap();
    (start(config).await, upstream, dir)
}
