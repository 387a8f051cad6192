//! An open session with an upstream and what opening it saw: the client (plain or TLS),
//! the EHLO capabilities delivery depends on, and the step-by-step record `upstream
//! check` prints. Data only: `connect.rs` opens sessions, `transaction.rs` uses them,
//! `upstream.rs` pools them.

use super::tls::CertificateFacts;
use mail_send::SmtpClient;
use smtp_proto::EhloResponse;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub(super) enum Client {
    // Boxed: the TLS state is over a kilobyte and connections move in and out of the pool.
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
    Plain(SmtpClient<TcpStream>),
}

pub(super) struct Connection {
    pub client: Client,
    /// The upstream advertised 8BITMIME.
    pub eight_bit: bool,
    /// The upstream advertised SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The upstream advertised PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write.
    pub pipelining: bool,
    /// When it last finished a transaction: the pool probes connections idle for long.
    pub last_used: Instant,
}

impl Connection {
    pub(super) fn new(client: Client, caps: &Capabilities) -> Connection {
        Connection {
            client,
            eight_bit: caps.eight_bit_mime,
            smtputf8: caps.smtputf8,
            pipelining: caps.pipelining,
            last_used: Instant::now(),
        }
    }

    /// Ends the session politely (`upstream check`); errors do not matter any more.
    pub(super) async fn quit(self) {
        match self.client {
            Client::Tls(c) => {
                let _ = c.quit().await;
            }
            Client::Plain(c) => {
                let _ = c.quit().await;
            }
        }
    }
}

/// What opening a session saw, step by step; a step not reached stays None.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Seen {
    /// The address connected to.
    pub address: Option<String>,
    pub connect_ms: Option<u64>,
    pub greeting: Option<String>,
    /// Whether the first EHLO offered STARTTLS (`tls = "starttls"` only).
    pub starttls_offered: Option<bool>,
    /// "TLS 1.3" or "TLS 1.2".
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// The certificate the upstream presented (leaf), verified or not.
    pub certificate: Option<CertificateFacts>,
    /// Issuers of the rest of the chain it sent.
    pub chain_issuers: Vec<String>,
    pub ehlo: Option<Capabilities>,
    /// None: no credentials configured; else whether AUTH succeeded.
    pub auth_ok: Option<bool>,
}

/// The EHLO capabilities delivery depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub pipelining: bool,
    /// SIZE and its limit in bytes (0: offered without a limit).
    pub size: Option<usize>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth: Vec<String>,
}

impl Capabilities {
    pub(super) fn of(caps: &EhloResponse<String>) -> Capabilities {
        use smtp_proto::*;
        let mechanisms = [
            (AUTH_PLAIN, "PLAIN"),
            (AUTH_LOGIN, "LOGIN"),
            (AUTH_CRAM_MD5, "CRAM-MD5"),
            (AUTH_DIGEST_MD5, "DIGEST-MD5"),
            (AUTH_XOAUTH2, "XOAUTH2"),
            (AUTH_OAUTHBEARER, "OAUTHBEARER"),
            (AUTH_SCRAM_SHA_256, "SCRAM-SHA-256"),
            (AUTH_SCRAM_SHA_1, "SCRAM-SHA-1"),
            (AUTH_NTLM, "NTLM"),
            (AUTH_GSSAPI, "GSSAPI"),
            (AUTH_EXTERNAL, "EXTERNAL"),
        ];
        Capabilities {
            pipelining: caps.has_capability(EXT_PIPELINING),
            size: caps.has_capability(EXT_SIZE).then_some(caps.size),
            eight_bit_mime: caps.has_capability(EXT_8BIT_MIME),
            smtputf8: caps.has_capability(EXT_SMTP_UTF8),
            starttls: caps.has_capability(EXT_START_TLS),
            auth: mechanisms
                .iter()
                .filter(|(bit, _)| caps.auth_mechanisms & bit != 0)
                .map(|(_, name)| name.to_string())
                .collect(),
        }
    }
}
