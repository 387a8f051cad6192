//! Opening a session with an upstream, one step at a time (TCP, greeting, EHLO,
//! STARTTLS or implicit TLS, EHLO again, AUTH), so that a failure carries the phase it
//! happened in, and so that `upstream check` sees exactly what delivery sees: both call
//! [`Upstream::open`].

use super::connection::{Capabilities, Client, Connection, Seen};
use super::tls::certificate_facts;
use super::upstream::Upstream;
use super::verdict::{Cause, Phase, UpstreamReply};
use crate::config::TlsMode;
use mail_send::SmtpClient;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

impl Upstream {
    /// Opens a session ready for MAIL: connected, TLS as configured, EHLO said, AUTH done.
    /// `seen` records each step, also when one fails.
    pub(super) async fn open(&self, seen: &mut Seen) -> Result<Connection, Cause> {
        let cfg = &self.config;
        let host = cfg.host.as_str();
        let fail = |phase: Phase| move |e: mail_send::Error| Cause::from_send(&e, phase, host);
        let started = Instant::now();
        let tcp = tokio::time::timeout(cfg.connect_timeout.0, TcpStream::connect((host, cfg.port)))
            .await
            .map_err(|_| fail(Phase::Connect)(mail_send::Error::Timeout))?
            .map_err(|e| fail(Phase::Connect)(mail_send::Error::Io(e)))?;
        seen.connect_ms = Some(millis(started.elapsed()));
        seen.address = tcp.peer_addr().ok().map(|a| a.to_string());
        let mut plain = SmtpClient {
            stream: tcp,
            timeout: cfg.connect_timeout.0,
        };
        let client = match cfg.tls {
            TlsMode::Implicit => {
                let handshake = plain.into_tls(&self.connector, host).await;
                self.note_chain(seen);
                let mut c = handshake.map_err(fail(Phase::Tls))?;
                note_tls(&c, seen);
                greeting(&mut c, seen, host).await?;
                Client::Tls(Box::new(c))
            }
            TlsMode::Starttls => {
                greeting(&mut plain, seen, host).await?;
                let caps = plain
                    .ehlo(&self.hostname)
                    .await
                    .map_err(fail(Phase::Ehlo))?;
                let offered = caps.has_capability(smtp_proto::EXT_START_TLS);
                seen.starttls_offered = Some(offered);
                if !offered {
                    seen.ehlo = Some(Capabilities::of(&caps));
                    return Err(fail(Phase::Tls)(mail_send::Error::MissingStartTls));
                }
                let handshake = plain.start_tls(&self.connector, host).await;
                self.note_chain(seen);
                let c = handshake.map_err(fail(Phase::Tls))?;
                note_tls(&c, seen);
                Client::Tls(Box::new(c))
            }
            TlsMode::None => {
                greeting(&mut plain, seen, host).await?;
                Client::Plain(plain)
            }
        };
        let command_timeout = cfg.command_timeout.0;
        let (client, caps) = match client {
            Client::Tls(mut c) => {
                c.timeout = command_timeout;
                let caps = self.greet(c.as_mut(), seen).await?;
                (Client::Tls(c), caps)
            }
            Client::Plain(mut c) => {
                c.timeout = command_timeout;
                let caps = self.greet(&mut c, seen).await?;
                (Client::Plain(c), caps)
            }
        };
        Ok(Connection::new(client, &caps))
    }

    /// EHLO (again, after TLS) and AUTH when credentials are configured.
    async fn greet<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        c: &mut SmtpClient<T>,
        seen: &mut Seen,
    ) -> Result<Capabilities, Cause> {
        let host = self.config.host.as_str();
        let caps = c
            .ehlo(&self.hostname)
            .await
            .map_err(|e| Cause::from_send(&e, Phase::Ehlo, host))?;
        let facts = Capabilities::of(&caps);
        seen.ehlo = Some(facts.clone());
        if self.login.user().is_some() {
            let result = self
                .login
                .authenticate(c, &caps, host, &self.describe())
                .await;
            seen.auth_ok = Some(result.is_ok());
            result?;
        }
        Ok(facts)
    }

    fn note_chain(&self, seen: &mut Seen) {
        let chain = std::mem::take(&mut *self.seen_chain.lock().unwrap_or_else(|e| e.into_inner()));
        let now = crate::clock::now_unix();
        let mut facts = chain.iter().filter_map(|c| certificate_facts(c, now));
        seen.certificate = facts.next();
        seen.chain_issuers = facts.map(|f| f.issuer).collect();
    }
}

async fn greeting<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    seen: &mut Seen,
    host: &str,
) -> Result<(), Cause> {
    let reply = c
        .read()
        .await
        .map_err(|e| Cause::from_send(&e, Phase::Connect, host))?;
    seen.greeting = Some(format!("{} {}", reply.code, reply.message.trim()));
    if (200..300).contains(&reply.code) {
        return Ok(());
    }
    let mut cause = Cause::reply(UpstreamReply::from_response(&reply)).at(Phase::Connect);
    cause.detail = "the upstream refused the connection in its greeting".into();
    Err(cause)
}

fn note_tls(c: &SmtpClient<tokio_rustls::client::TlsStream<TcpStream>>, seen: &mut Seen) {
    let tls = c.tls_connection();
    seen.tls_version = tls.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_string(),
        other => format!("TLS version 0x{:04x}", u16::from(other)),
    });
    seen.cipher = tls
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .map(str::to_string);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
