//! Helpers for the inbound hardening tests: a server certificate from a private CA made
//! with rcgen, a users file with argon2 hashes, and an SMTP client generic over its stream
//! so the same code speaks before and after STARTTLS.

use dkim_relay::config::{Config, HumanDuration, InboundAuthConfig, InboundTlsConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A CA and a server certificate for localhost/127.0.0.1, written as PEM files.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

pub fn make_pki(dir: &Path, tag: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cert_file = dir.join(format!("{tag}-cert.pem"));
    let key_file = dir.join(format!("{tag}-key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert_file,
        key_file,
    }
}

pub fn tls_config(pki: &TestPki) -> InboundTlsConfig {
    InboundTlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
        require_tls: false,
        implicit_listen: None,
        reload_interval: HumanDuration(Duration::from_secs(30)),
        handshake_timeout: HumanDuration(Duration::from_secs(10)),
    }
}

/// Writes a users file: (name, password, from_domains).
pub fn users_file(dir: &Path, users: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    let mut text = String::new();
    for (name, password, domains) in users {
        let hash = dkim_relay::auth::hash_password(password.as_bytes()).unwrap();
        let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nfrom_domains = [{}]\n\n",
            list.join(", ")
        ));
    }
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Adds TLS (and AUTH with `users`, if given) to a test config and validates it.
pub fn with_tls_and_auth(config: &mut Config, pki: &TestPki, users: Option<std::path::PathBuf>) {
    config.smtp.tls = Some(tls_config(pki));
    config.smtp.auth = users.map(|users_file| InboundAuthConfig {
        users_file,
        failure_delay: HumanDuration(Duration::from_millis(300)),
        max_failures: 3,
        failure_window: HumanDuration(Duration::from_secs(600)),
        check_workers: 2,
        check_queue: 16,
        max_tracked_clients: 100_000,
    });
    config.validate().unwrap();
}

pub fn connector(ca_pem: &str) -> TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// An SMTP client over any stream.
pub struct Smtp<S> {
    io: BufReader<S>,
}

impl Smtp<TcpStream> {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Smtp<TcpStream> {
        let mut smtp = Smtp::new(TcpStream::connect(addr).await.unwrap());
        let greeting = smtp.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        smtp
    }

    /// STARTTLS, the handshake, and EHLO again; returns the TLS client and its EHLO lines.
    pub async fn starttls(mut self, ca_pem: &str) -> (Smtp<TlsStream<TcpStream>>, Vec<String>) {
        assert_eq!(self.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
        let tls = handshake(self.into_inner(), ca_pem).await;
        let mut smtp = Smtp::new(tls);
        let ehlo = smtp.ehlo().await;
        (smtp, ehlo)
    }
}

pub async fn handshake(stream: TcpStream, ca_pem: &str) -> TlsStream<TcpStream> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector(ca_pem).connect(name, stream).await.unwrap()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    pub fn new(stream: S) -> Self {
        Smtp {
            io: BufReader::new(stream),
        }
    }

    pub fn into_inner(self) -> S {
        assert!(self.io.buffer().is_empty(), "unread bytes before STARTTLS");
        self.io.into_inner()
    }

    pub async fn reply_lines(&mut self) -> Vec<String> {
        super::read_reply_lines(&mut self.io).await
    }

    pub async fn reply(&mut self) -> String {
        self.reply_lines().await.pop().unwrap()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.io.get_mut();
        w.write_all(bytes).await.unwrap();
        w.flush().await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn ehlo(&mut self) -> Vec<String> {
        self.send_raw(b"EHLO client.test\r\n").await;
        let lines = self.reply_lines().await;
        assert!(lines[0].starts_with("250-"), "{lines:?}");
        lines
    }

    /// AUTH PLAIN with an initial response.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }

    /// MAIL, RCPT, DATA; returns the first refusal or the final reply.
    pub async fn send(&mut self, from: &str, to: &str, message: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if !r.starts_with("250") {
            return r;
        }
        let r = self.cmd(&format!("RCPT TO:<{to}>")).await;
        if !r.starts_with("250") {
            return r;
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
        data.push_str(".\r\n");
        self.send_raw(data.as_bytes()).await;
        self.reply().await
    }

    /// Whether the server has closed the connection (EOF within 20 s).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(20), self.io.read_to_end(&mut rest)).await;
        matches!(read, Ok(Ok(_)))
    }
}

/// Messages in the spool queue, as the spool reads them (`.state` files are progress notes).
pub fn queued(root: &Path) -> usize {
    super::spooled_ids(&root.join("spool")).len()
}
