//! Hostile clients over real SMTP on 127.0.0.1: parallel password guessing, AUTH floods
//! beyond the password-check pool, clients that pipeline and never read, and sockets
//! opened from outside the allowed networks to take the slots of the relay's own hosts.
//! Outsiders connect from 127.0.0.2 and up (all of 127/8 is loopback on Linux) to a relay
//! that allows only 127.0.0.1/32.

mod common;

use common::child::spawn_relay;
use common::inbound::*;
use common::*;
use dkim_relay::config::HumanDuration;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const USER: &str = "app-a";
const PASSWORD: &str = "correct horse battery staple";

/// A TCP connection from `source` (any 127.x.y.z) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// The first line the relay sends on `stream`.
async fn first_line(stream: TcpStream) -> (String, BufReader<TcpStream>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await
    .expect("no greeting")
    .unwrap();
    (line.trim_end().to_string(), reader)
}

/// A relay (in-process) with TLS and AUTH that allows only 127.0.0.1/32 without AUTH.
async fn auth_relay(
    tune: impl FnOnce(&mut dkim_relay::config::Config),
) -> (dkim_relay::relay::RelayHandle, tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "h");
    let users = users_file(dir.path(), &[(USER, PASSWORD, &[DOMAIN])]);
    let mut config = config(dir.path(), None);
    config.smtp.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    with_tls_and_auth(&mut config, &pki, Some(users));
    tune(&mut config);
    config.validate().unwrap();
    (start(config).await, dir, pki)
}

/// Connected, greeted, inside TLS after STARTTLS and EHLO.
async fn tls_session(
    source: &str,
    addr: SocketAddr,
    ca_pem: &str,
) -> Smtp<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut plain = Smtp::new(connect_from(source, addr).await);
    let greeting = plain.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    plain.ehlo().await;
    plain.starttls(ca_pem).await.0
}

/// Sends AUTH PLAIN from every session at once; returns each reply and how long it took.
async fn parallel_auth(
    sessions: Vec<Smtp<tokio_rustls::client::TlsStream<TcpStream>>>,
    user: &str,
    password: &str,
) -> Vec<(String, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(sessions.len()));
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut smtp| {
            let (barrier, user, password) =
                (barrier.clone(), user.to_string(), password.to_string());
            tokio::spawn(async move {
                barrier.wait().await;
                let t0 = Instant::now();
                let reply = smtp.auth_plain(&user, &password).await;
                (reply, t0.elapsed(), smtp)
            })
        })
        .collect();
    let mut replies = Vec::new();
    let mut keep = Vec::new();
    for task in tasks {
        let (reply, took, smtp) = task.await.unwrap();
        replies.push((reply, took));
        keep.push(smtp);
    }
    replies
}

#[tokio::test]
async fn forty_parallel_wrong_guesses_from_one_address_check_at_most_max_failures_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _ = config(root, None); // copies the test keys into root/keys
    let pki = make_pki(root, "c");
    let users = users_file(root, &[(USER, PASSWORD, &[DOMAIN])]);
    let text = format!(
        r#"hostname = "relay.test"
[smtp]
listen = "127.0.0.1:0"
allowed_networks = ["127.0.0.1/32"]
max_connections_per_client = 100
[smtp.tls]
cert_file = "{cert}"
key_file = "{key}"
[smtp.auth]
users_file = "{users}"
failure_delay = "100ms"
max_failures = 3
failure_window = "10m"
[spool]
dir = "{spool}"
[keys]
dir = "{keys}"
generate_missing = false
[[domains]]
name = "example.com"
[delivery]
outbox_dir = "{outbox}"
"#,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        users = users.display(),
        spool = root.join("spool").display(),
        keys = root.join("keys").display(),
        outbox = root.join("outbox").display(),
    );
    let path = root.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (relay, addr) = spawn_relay(&path, log.clone());

    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(tls_session("127.0.0.1", addr, &pki.ca_pem).await);
    }
    // A client that swapped the fields: its "user name" is a password.
    let secret_in_user_field = "s3cret-typed-as-the-user-name";
    let replies = parallel_auth(sessions, secret_in_user_field, "wrong").await;
    let failed = replies
        .iter()
        .filter(|(r, _)| r.starts_with("535 5.7.8"))
        .count();
    let locked = replies
        .iter()
        .filter(|(r, _)| r == "454 4.7.0 Too many failed authentications; try again later")
        .count();
    assert_eq!((failed, locked), (3, 37), "{replies:?}");

    // One log line per password checked: the three, and never the submitted name.
    let checked = || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("authentication failed"))
            .count()
    };
    let t0 = Instant::now();
    while checked() < 3 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = log.lock().unwrap().clone();
    assert_eq!(checked(), 3, "{lines:#?}");
    assert!(
        lines.iter().all(|l| !l.contains(secret_in_user_field)),
        "the submitted user name reached the log: {lines:#?}"
    );
    // The right password is locked out too, from this address, for the window.
    let mut late = tls_session("127.0.0.1", addr, &pki.ca_pem).await;
    assert!(late
        .auth_plain(USER, PASSWORD)
        .await
        .starts_with("454 4.7.0"));
    relay.stop();
}

#[tokio::test]
async fn auth_beyond_the_password_check_queue_gets_454_at_once() {
    let delay = Duration::from_secs(2);
    let (relay, _dir, pki) = auth_relay(|c| {
        let auth = c.smtp.auth.as_mut().unwrap();
        auth.check_workers = 1;
        auth.check_queue = 1;
        auth.max_failures = 1000;
        auth.failure_delay = HumanDuration(delay);
    })
    .await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(tls_session("127.0.0.1", relay.smtp_addr(), &pki.ca_pem).await);
    }
    let replies = parallel_auth(sessions, USER, "wrong").await;
    let busy: Vec<_> = replies
        .iter()
        .filter(|(r, _)| {
            r == "454 4.7.0 Too many authentications in progress; try again in a moment"
        })
        .collect();
    let failed = replies
        .iter()
        .filter(|(r, _)| r.starts_with("535 5.7.8"))
        .count();
    assert!(!busy.is_empty(), "{replies:?}");
    assert_eq!(busy.len() + failed, 20, "{replies:?}");
    // At once: a checked password is answered only after failure_delay, a refusal before.
    assert!(busy.iter().all(|(_, took)| *took < delay), "{busy:?}");
    // The pool is free again afterwards: the right password works.
    let mut smtp = tls_session("127.0.0.1", relay.smtp_addr(), &pki.ca_pem).await;
    assert!(smtp.auth_plain(USER, PASSWORD).await.starts_with("235"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_that_pipelines_and_never_reads_is_dropped_after_the_write_deadline() {
    let (relay, _upstream, _dir) = relay_with(|c| {
        c.smtp.max_connections = 1;
        c.smtp.write_timeout = HumanDuration(Duration::from_secs(1));
        c.smtp.command_timeout = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let addr = relay.smtp_addr();
    // A small receive buffer and no reads: the relay's replies back up into its own send
    // buffer, and its writes block.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let hog = socket.connect(addr).await.unwrap();
    let (mut hog_r, mut hog_w) = hog.into_split();
    let flood = tokio::spawn(async move {
        // Each EHLO is answered with ~200 bytes: 200k of them are ~18 MB of replies.
        let batch = b"EHLO x\r\n".repeat(1000);
        for _ in 0..200 {
            if hog_w.write_all(&batch).await.is_err() {
                break;
            }
        }
        hog_w
    });
    // While the hog holds the only slot, others are refused; once the write deadline has
    // dropped it, the slot is free and a new client is greeted.
    let t0 = Instant::now();
    let mut greeted = false;
    while t0.elapsed() < Duration::from_secs(20) {
        let (line, _) = first_line(TcpStream::connect(addr).await.unwrap()).await;
        if line.starts_with("220 ") {
            greeted = true;
            break;
        }
        assert_eq!(line, "421 4.7.0 Too many connections; try again later");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(greeted, "the client that never reads kept the only slot");
    // And the hog's connection was closed: reading it to the end finishes.
    let mut sink = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), hog_r.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the hog's connection is still open");
    flood.abort();
    relay.shutdown().await;
}

#[tokio::test]
async fn outsider_sockets_cannot_take_the_slots_of_the_relays_own_hosts() {
    let (relay, _dir, pki) = auth_relay(|c| {
        c.smtp.max_connections = 20;
        // max_outsider_connections left at its default: a tenth, 2.
    })
    .await;
    let addr = relay.smtp_addr();
    // Two outsiders take the whole budget; every further one is refused however many
    // addresses it comes from.
    let mut inside = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        inside.push(tls_session(source, addr, &pki.ca_pem).await);
    }
    let mut refused = Vec::new();
    for i in 0..38 {
        let source = format!("127.0.0.{}", 2 + i % 4);
        let (line, reader) = first_line(connect_from(&source, addr).await).await;
        assert_eq!(
            line,
            "421 4.7.0 Too many connections from outside the allowed networks; try again later"
        );
        refused.push(reader);
    }
    // With the outsiders still connected, the relay's own hosts are served.
    let mut own = Vec::new();
    for _ in 0..10 {
        let (line, reader) = first_line(connect_from("127.0.0.1", addr).await).await;
        assert!(line.starts_with("220 "), "{line}");
        own.push(reader);
    }
    // An outsider that authenticates gives its outsider slot back to the others.
    assert!(inside[0]
        .auth_plain(USER, PASSWORD)
        .await
        .starts_with("235"));
    let (line, _next) = first_line(connect_from("127.0.0.9", addr).await).await;
    assert!(line.starts_with("220 "), "{line}");
    relay.shutdown().await;
}

#[tokio::test]
async fn without_auth_an_outsider_is_refused_554_in_the_greeting_and_closed() {
    let (relay, _upstream, _dir) = relay_with(|c| {
        c.smtp.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let addr = relay.smtp_addr();
    let (line, mut reader) = first_line(connect_from("127.0.0.2", addr).await).await;
    assert_eq!(
        line,
        "554 5.7.1 This relay serves only its own networks; add this host to smtp.allowed_networks"
    );
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0))), "not closed: {end:?} {rest:?}");
    // The relay's own host is still greeted.
    let (line, _own) = first_line(connect_from("127.0.0.1", addr).await).await;
    assert!(line.starts_with("220 "), "{line}");
    relay.shutdown().await;
}
