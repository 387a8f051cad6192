//! The upstream SMTP client: a small pool of open connections (one per busy worker),
//! reused from message to message, and a transaction driven command by command so each
//! recipient's result is known (DESIGN §7).

use super::outcome::{AttemptError, RcptOutcome};
use crate::config::{TlsMode, UpstreamConfig};
use crate::spool::Envelope;
use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A reused connection idle longer than this is probed with NOOP before use.
const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

enum Client {
    // Boxed: the TLS state is over a kilobyte and connections move in and out of the pool.
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
    Plain(SmtpClient<TcpStream>),
}

struct Connection {
    client: Client,
    /// The upstream advertised 8BITMIME.
    eight_bit: bool,
    last_used: Instant,
}

/// The password, kept out of every `Debug` and log line.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

pub struct Upstream {
    config: UpstreamConfig,
    hostname: String,
    connector: TlsConnector,
    username: Option<String>,
    password: Option<Secret>,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("tls", &self.config.tls)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A failed transaction, and whether the message can safely be tried again on a fresh
/// connection right away (nothing was committed: the final dot was never sent).
struct TransactError {
    error: AttemptError,
    retry_now: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, hostname: &str) -> Result<Arc<Upstream>, String> {
        let password = match &config.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("upstream.password_file {}: {e}", path.display()))?;
                let first = text.lines().next().unwrap_or("").trim_end().to_string();
                if first.is_empty() {
                    return Err(format!(
                        "upstream.password_file {} is empty",
                        path.display()
                    ));
                }
                Some(Secret(first))
            }
            None => None,
        };
        Ok(Arc::new(Upstream {
            connector: tls_connector(config)?,
            config: config.clone(),
            hostname: hostname.to_string(),
            username: config.username.clone(),
            password,
            idle: Mutex::new(Vec::new()),
        }))
    }

    pub fn describe(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Sends one message to the recipients `rcpts` (indexes into the envelope). `parts`
    /// are written one after the other: the signature fields, then the spooled message.
    pub async fn send(
        &self,
        envelope: &Envelope,
        rcpts: &[usize],
        parts: &[&[u8]],
    ) -> Result<Vec<(usize, RcptOutcome)>, AttemptError> {
        let mut reused = self.take_idle().await;
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            match transact(&mut conn, envelope, rcpts, parts).await {
                Ok(outcomes) => {
                    conn.last_used = Instant::now();
                    self.put_idle(conn);
                    return Ok(outcomes);
                }
                // A kept-open connection the server had closed: try once on a fresh one.
                Err(e) if was_reused && e.retry_now => {
                    tracing::debug!(reason = %e.error.reason, "reused upstream connection failed; reconnecting");
                    continue;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    async fn take_idle(&self) -> Option<Connection> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let idle_for = conn.last_used.elapsed();
            if idle_for >= self.config.idle_timeout.0 {
                continue; // dropped: closes the socket
            }
            if idle_for < PROBE_AFTER {
                return Some(conn);
            }
            let mut conn = conn;
            let alive = match &mut conn.client {
                Client::Tls(c) => c.noop().await.is_ok(),
                Client::Plain(c) => c.noop().await.is_ok(),
            };
            if alive {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    async fn connect(&self) -> Result<Connection, AttemptError> {
        let cfg = &self.config;
        let builder = SmtpClientBuilder::new_with_tls_connector(
            cfg.host.clone(),
            cfg.port,
            self.connector.clone(),
        )
        .helo_host(self.hostname.clone())
        .implicit_tls(cfg.tls == TlsMode::Implicit)
        // We say EHLO and AUTH ourselves, to keep the capabilities.
        .say_ehlo(false)
        .timeout(cfg.connect_timeout.0);
        let fail = |e: mail_send::Error| AttemptError::from_send(&e);
        let conn = match cfg.tls {
            TlsMode::Implicit | TlsMode::Starttls => {
                let mut c = builder.connect().await.map_err(fail)?;
                c.timeout = cfg.command_timeout.0;
                let eight_bit = self.greet(&mut c).await?;
                Connection {
                    client: Client::Tls(Box::new(c)),
                    eight_bit,
                    last_used: Instant::now(),
                }
            }
            TlsMode::None => {
                let mut c = builder.connect_plain().await.map_err(fail)?;
                c.timeout = cfg.command_timeout.0;
                let eight_bit = self.greet(&mut c).await?;
                Connection {
                    client: Client::Plain(c),
                    eight_bit,
                    last_used: Instant::now(),
                }
            }
        };
        tracing::info!(upstream = %self.describe(), tls = ?cfg.tls, "connected to upstream");
        Ok(conn)
    }

    /// EHLO and AUTH; returns whether the upstream takes 8-bit data.
    async fn greet<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        c: &mut SmtpClient<T>,
    ) -> Result<bool, AttemptError> {
        let fail = |e: mail_send::Error| AttemptError::from_send(&e);
        let caps = c.ehlo(&self.hostname).await.map_err(fail)?;
        if let (Some(user), Some(secret)) = (&self.username, &self.password) {
            let credentials = Credentials::new(user.clone(), secret.0.clone());
            c.authenticate(&credentials, &caps).await.map_err(fail)?;
        }
        Ok(caps.has_capability(smtp_proto::EXT_8BIT_MIME))
    }
}

async fn transact(
    conn: &mut Connection,
    envelope: &Envelope,
    rcpts: &[usize],
    parts: &[&[u8]],
) -> Result<Vec<(usize, RcptOutcome)>, TransactError> {
    let body = if envelope.eight_bit && conn.eight_bit {
        " BODY=8BITMIME"
    } else {
        ""
    };
    match &mut conn.client {
        Client::Tls(c) => transact_on(c.as_mut(), envelope, rcpts, parts, body).await,
        Client::Plain(c) => transact_on(c, envelope, rcpts, parts, body).await,
    }
}

async fn transact_on<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    envelope: &Envelope,
    rcpts: &[usize],
    parts: &[&[u8]],
    body_param: &str,
) -> Result<Vec<(usize, RcptOutcome)>, TransactError> {
    let before_data = |e: mail_send::Error| TransactError {
        error: AttemptError::from_send(&e),
        retry_now: true,
    };
    let all = |outcome: RcptOutcome| {
        rcpts
            .iter()
            .map(|&i| (i, outcome.clone()))
            .collect::<Vec<_>>()
    };

    let reply = c
        .cmd(format!(
            "MAIL FROM:<{}>{body_param}\r\n",
            envelope.mail_from
        ))
        .await
        .map_err(before_data)?;
    if !(200..300).contains(&reply.code) {
        let _ = c.rset().await;
        return Ok(all(RcptOutcome::from_reply(reply.code, &reply.message)));
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::with_capacity(rcpts.len());
    for &i in rcpts {
        let reply = c
            .cmd(format!("RCPT TO:<{}>\r\n", envelope.rcpts[i]))
            .await
            .map_err(before_data)?;
        if (200..300).contains(&reply.code) {
            accepted.push(i);
        } else {
            outcomes.push((i, RcptOutcome::from_reply(reply.code, &reply.message)));
        }
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok(outcomes);
    }
    let reply = c.cmd(b"DATA\r\n").await.map_err(before_data)?;
    if reply.code != 354 {
        let _ = c.rset().await;
        let outcome = RcptOutcome::from_reply(reply.code, &reply.message);
        outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
        return Ok(outcomes);
    }
    let timeout = c.timeout;
    let written = tokio::time::timeout(timeout, write_data(&mut c.stream, parts)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(before_data(mail_send::Error::Io(e))),
        Err(_) => return Err(before_data(mail_send::Error::Timeout)),
    }
    // From here the upstream may have the message: a lost reply means a possible
    // duplicate on retry, never a loss.
    let reply = tokio::time::timeout(timeout, c.read())
        .await
        .map_err(|_| mail_send::Error::Timeout)
        .and_then(|r| r)
        .map_err(|e| TransactError {
            error: AttemptError::from_send(&e),
            retry_now: false,
        })?;
    let outcome = RcptOutcome::from_reply(reply.code, &reply.message);
    outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
    Ok(outcomes)
}

/// Writes the message parts dot-stuffed (RFC 5321 §4.5.2), then the terminating `.CRLF`.
/// The spooled message has CRLF line endings only, so a line starts after every LF.
async fn write_data<W: AsyncWrite + Unpin>(stream: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, stream);
    let mut line_start = true;
    let mut last = [b'\r', b'\n'];
    for part in parts {
        let mut from = 0;
        for (i, &b) in part.iter().enumerate() {
            if line_start && b == b'.' {
                w.write_all(&part[from..i]).await?;
                w.write_all(b".").await?;
                from = i;
            }
            line_start = b == b'\n';
        }
        w.write_all(&part[from..]).await?;
        match part.len() {
            0 => {}
            1 => last = [last[1], part[0]],
            n => last = [part[n - 2], part[n - 1]],
        }
    }
    if last != *b"\r\n" {
        w.write_all(b"\r\n").await?;
    }
    w.write_all(b".\r\n").await?;
    w.flush().await
}

fn tls_connector(config: &UpstreamConfig) -> Result<TlsConnector, String> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let Some(path) = &config.ca_file else {
        return mail_send::smtp::tls::build_tls_connector(false);
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stuffed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        write_data(&mut out, parts).await.unwrap();
        out
    }

    #[tokio::test]
    async fn dot_stuffing_covers_lines_that_start_across_parts() {
        assert_eq!(
            stuffed(&[b"A: b\r\n", b".x\r\n..y\r\n"]).await,
            b"A: b\r\n..x\r\n...y\r\n.\r\n"
        );
        assert_eq!(
            stuffed(&[b"A: b\r\n", b"no newline"]).await,
            b"A: b\r\nno newline\r\n.\r\n"
        );
        assert_eq!(stuffed(&[b".start\r\n"]).await, b"..start\r\n.\r\n");
    }
}
