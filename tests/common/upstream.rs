//! A scripted fake upstream SMTP server on 127.0.0.1: records what it accepts and answers
//! DATA and RCPT as the test tells it to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the fake upstream speaks TLS.
#[derive(Clone)]
pub enum Tls {
    None,
    /// Offers STARTTLS; AUTH PLAIN only after it.
    Starttls(TlsAcceptor),
    /// TLS from the first byte; AUTH PLAIN offered.
    Implicit(TlsAcceptor),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The MAIL and RCPT command lines exactly as they arrived, CRLF cut off.
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
    /// The message as received, dot-stuffing undone.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Script {
    /// Replies for the end of DATA, used in order; afterwards "250 2.0.0 queued".
    data_replies: VecDeque<String>,
    /// RCPT addresses to refuse, with the reply line.
    rcpt_replies: HashMap<String, String>,
    received: Vec<Received>,
    connections: usize,
    /// Decoded AUTH PLAIN credentials (user, password) it was given.
    logins: Vec<(String, String)>,
    /// Sessions that completed a TLS handshake.
    tls_sessions: usize,
    /// Connections open now, and the most ever open at once.
    open: usize,
    max_open: usize,
    /// While set, connections are closed at once, before the greeting: the upstream is down.
    down: bool,
    /// Pause between taking a message and answering the end of DATA (a slow upstream).
    data_delay: std::time::Duration,
    /// Reply to MAIL FROM instead of 250, when set.
    mail_reply: Option<String>,
    /// Answer AUTH with 535, as for a wrong password.
    refuse_auth: bool,
    /// With `refuse_auth`: the 535 echoes the AUTH token and the password it decoded.
    echo_auth: bool,
    /// Every MAIL FROM seen (a transaction started), delivered or not.
    transactions: usize,
    /// Leave PIPELINING out of the EHLO reply, so the relay sends command by command.
    no_pipelining: bool,
    /// Offer SMTPUTF8 (RFC 6531) in EHLO. Off by default; without it a MAIL with the
    /// SMTPUTF8 parameter gets 555, as real servers answer.
    smtputf8: bool,
    /// Leave 8BITMIME out of the EHLO reply (offered by default); then BODY=8BITMIME
    /// gets 555.
    no_8bitmime: bool,
    /// Answer a message with more than one DKIM-Signature field as Amazon SES does.
    one_signature_only: bool,
    /// Messages refused for a second DKIM-Signature.
    duplicate_refused: usize,
    /// When set, AUTH XOAUTH2 is offered and takes exactly these bearer tokens.
    xoauth2_tokens: Option<Arc<Mutex<Vec<String>>>>,
    /// (user, token) of each AUTH XOAUTH2 taken, and the number refused.
    xoauth2_logins: Vec<(String, String)>,
    xoauth2_refused: usize,
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        Self::start_with(Tls::None).await
    }

    pub async fn start_with(tls: Tls) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                {
                    let mut s = shared.lock().unwrap();
                    if s.down {
                        continue; // dropped: closes the socket before any greeting
                    }
                    s.connections += 1;
                    s.open += 1;
                    s.max_open = s.max_open.max(s.open);
                }
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    connection(stream, shared.clone(), tls).await;
                    shared.lock().unwrap().open -= 1;
                });
            }
        });
        FakeUpstream { addr, script }
    }

    pub fn logins(&self) -> Vec<(String, String)> {
        self.script.lock().unwrap().logins.clone()
    }

    pub fn tls_sessions(&self) -> usize {
        self.script.lock().unwrap().tls_sessions
    }

    pub fn reply_to_data(&self, line: &str) {
        self.script
            .lock()
            .unwrap()
            .data_replies
            .push_back(line.to_string());
    }

    pub fn reply_to_rcpt(&self, rcpt: &str, line: &str) {
        self.script
            .lock()
            .unwrap()
            .rcpt_replies
            .insert(rcpt.to_string(), line.to_string());
    }

    /// Messages the upstream answered with 2xx at the end of DATA.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    pub fn connections(&self) -> usize {
        self.script.lock().unwrap().connections
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.script.lock().unwrap().open
    }

    /// The most connections that were open at the same time.
    pub fn max_open(&self) -> usize {
        self.script.lock().unwrap().max_open
    }

    /// Down: every connection is closed before the greeting. Up again: normal service.
    pub fn set_down(&self, down: bool) {
        self.script.lock().unwrap().down = down;
    }

    pub fn set_data_delay(&self, delay: std::time::Duration) {
        self.script.lock().unwrap().data_delay = delay;
    }

    pub fn reply_to_mail(&self, line: Option<&str>) {
        self.script.lock().unwrap().mail_reply = line.map(str::to_string);
    }

    pub fn offer_pipelining(&self, offer: bool) {
        self.script.lock().unwrap().no_pipelining = !offer;
    }

    /// Refuse AUTH with a 535 that repeats the client's token and password.
    pub fn offer_smtputf8(&self, offer: bool) {
        self.script.lock().unwrap().smtputf8 = offer;
    }

    pub fn offer_8bitmime(&self, offer: bool) {
        self.script.lock().unwrap().no_8bitmime = !offer;
    }

    pub fn refuse_auth_echoing(&self) {
        let mut s = self.script.lock().unwrap();
        s.refuse_auth = true;
        s.echo_auth = true;
    }

    pub fn refuse_auth(&self, refuse: bool) {
        self.script.lock().unwrap().refuse_auth = refuse;
    }

    pub fn clear_rcpt_replies(&self) {
        self.script.lock().unwrap().rcpt_replies.clear();
    }

    /// Offer AUTH XOAUTH2 and take the tokens in `valid` (as it is at each AUTH); a
    /// refusal goes as Gmail's does: 334 with a JSON error, then 535 to the client's next line.
    pub fn accept_xoauth2(&self, valid: Arc<Mutex<Vec<String>>>) {
        self.script.lock().unwrap().xoauth2_tokens = Some(valid);
    }

    pub fn xoauth2_logins(&self) -> Vec<(String, String)> {
        self.script.lock().unwrap().xoauth2_logins.clone()
    }

    pub fn xoauth2_refused(&self) -> usize {
        self.script.lock().unwrap().xoauth2_refused
    }

    pub fn transactions(&self) -> usize {
        self.script.lock().unwrap().transactions
    }

    /// Behave like Amazon SES: "554 Transaction failed: Duplicate header
    /// 'DKIM-Signature'." for a message with two or more DKIM-Signature fields.
    pub fn refuse_second_signature(&self) {
        self.script.lock().unwrap().one_signature_only = true;
    }

    pub fn duplicate_refused(&self) -> usize {
        self.script.lock().unwrap().duplicate_refused
    }
}

/// DKIM-Signature fields in the header section of `data`.
pub fn dkim_signatures(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let header = text.split("\r\n\r\n").next().unwrap_or("");
    header
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .count()
}

fn address(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_string()
}

async fn connection(stream: tokio::net::TcpStream, script: Arc<Mutex<Script>>, tls: Tls) {
    match tls {
        Tls::None => {
            session(stream, script, false, true).await;
        }
        Tls::Implicit(acceptor) => {
            if let Ok(tls) = acceptor.accept(stream).await {
                script.lock().unwrap().tls_sessions += 1;
                session(tls, script, false, true).await;
            }
        }
        Tls::Starttls(acceptor) => {
            if let Some(plain) = session(stream, script.clone(), true, true).await {
                if let Ok(tls) = acceptor.accept(plain).await {
                    script.lock().unwrap().tls_sessions += 1;
                    session(tls, script, false, false).await;
                }
            }
        }
    }
}

/// Runs SMTP on `stream`; returns the stream when the client asked for STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    script: Arc<Mutex<Script>>,
    offer_starttls: bool,
    greet: bool,
) -> Option<S> {
    let mut r = BufReader::new(stream);
    if greet {
        let _ = r.get_mut().write_all(b"220 fake.upstream ESMTP\r\n").await;
    }
    let mut mail_from = String::new();
    let mut rcpts = Vec::new();
    let mut mail_line = String::new();
    let mut rcpt_lines = Vec::new();
    let mut in_transaction = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let xoauth2 = script.lock().unwrap().xoauth2_tokens.is_some();
            let tls_or_auth = match (offer_starttls, xoauth2) {
                (true, _) => "STARTTLS",
                (false, true) => "AUTH PLAIN XOAUTH2",
                (false, false) => "AUTH PLAIN",
            };
            let s = script.lock().unwrap();
            let mut offers = String::new();
            if !s.no_8bitmime {
                offers.push_str("250-8BITMIME\r\n");
            }
            if s.smtputf8 {
                offers.push_str("250-SMTPUTF8\r\n");
            }
            if s.no_pipelining {
                format!("250-fake.upstream\r\n{offers}250 {tls_or_auth}")
            } else {
                format!("250-fake.upstream\r\n{offers}250-{tls_or_auth}\r\n250 PIPELINING")
            }
        } else if upper.starts_with("STARTTLS") && offer_starttls {
            let _ = r.get_mut().write_all(b"220 2.0.0 ready\r\n").await;
            return Some(r.into_inner());
        } else if upper.starts_with("AUTH PLAIN ") && !offer_starttls {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let (refuse, echo) = {
                let s = script.lock().unwrap();
                (s.refuse_auth, s.echo_auth)
            };
            if refuse && echo {
                format!(
                    "535 5.7.8 authentication failed for {} (password {})",
                    line[11..].trim(),
                    parts.get(2).map_or("", |p| p.as_str())
                )
            } else if refuse {
                "535 5.7.8 authentication credentials invalid".to_string()
            } else if parts.len() == 3 {
                script
                    .lock()
                    .unwrap()
                    .logins
                    .push((parts[1].clone(), parts[2].clone()));
                "235 2.7.0 authenticated".to_string()
            } else {
                "501 5.5.2 bad AUTH PLAIN".to_string()
            }
        } else if upper.starts_with("AUTH XOAUTH2 ") && !offer_starttls {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(line[13..].trim())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            // user=U \x01 auth=Bearer T \x01 \x01
            let mut fields = text.split('\x01');
            let user = fields.next().and_then(|f| f.strip_prefix("user="));
            let token = fields.next().and_then(|f| f.strip_prefix("auth=Bearer "));
            let ends_right = text.ends_with("\x01\x01");
            let valid = script.lock().unwrap().xoauth2_tokens.clone();
            let taken = match (user, token, valid) {
                (Some(u), Some(t), Some(v))
                    if ends_right && v.lock().unwrap().iter().any(|x| x == t) =>
                {
                    Some((u.to_string(), t.to_string()))
                }
                _ => None,
            };
            match taken {
                Some(login) => {
                    script.lock().unwrap().xoauth2_logins.push(login);
                    "235 2.7.0 Accepted".to_string()
                }
                None => {
                    script.lock().unwrap().xoauth2_refused += 1;
                    let challenge = base64::engine::general_purpose::STANDARD.encode(
                        r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
                    );
                    let _ = r
                        .get_mut()
                        .write_all(format!("334 {challenge}\r\n").as_bytes())
                        .await;
                    let mut ignored = String::new();
                    if r.read_line(&mut ignored).await.unwrap_or(0) == 0 {
                        return None;
                    }
                    "535 5.7.8 Username and Password not accepted".to_string()
                }
            }
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = address(&line);
            mail_line = line.trim_end_matches("\r\n").to_string();
            rcpts.clear();
            rcpt_lines.clear();
            let mut s = script.lock().unwrap();
            s.transactions += 1;
            let not_offered = (!s.smtputf8 && upper.contains(" SMTPUTF8"))
                || (s.no_8bitmime && upper.contains(" BODY=8BITMIME"));
            let reply = if not_offered {
                "555 5.5.4 parameter not offered".to_string()
            } else {
                s.mail_reply
                    .clone()
                    .unwrap_or_else(|| "250 2.1.0 ok".to_string())
            };
            in_transaction = reply.starts_with('2');
            reply
        } else if upper.starts_with("RCPT TO:") && !in_transaction {
            // As real servers do, also for commands pipelined after a refused MAIL.
            "503 5.5.1 need MAIL first".to_string()
        } else if upper.starts_with("DATA") && rcpts.is_empty() {
            "554 5.5.1 no valid recipients".to_string()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&line);
            let refusal = script.lock().unwrap().rcpt_replies.get(&rcpt).cloned();
            match refusal {
                Some(reply) => reply,
                None => {
                    rcpts.push(rcpt);
                    rcpt_lines.push(line.trim_end_matches("\r\n").to_string());
                    "250 2.1.5 ok".to_string()
                }
            }
        } else if upper.starts_with("DATA") {
            let _ = r.get_mut().write_all(b"354 go ahead\r\n").await;
            in_transaction = false;
            let mut data = Vec::new();
            loop {
                let mut raw = Vec::new();
                if r.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                    return None;
                }
                if raw == b".\r\n" {
                    break;
                }
                let unstuffed = if raw.starts_with(b".") {
                    &raw[1..]
                } else {
                    &raw[..]
                };
                data.extend_from_slice(unstuffed);
            }
            let (reply, delay) = {
                let mut s = script.lock().unwrap();
                let reply = if s.one_signature_only && dkim_signatures(&data) > 1 {
                    s.duplicate_refused += 1;
                    "554 Transaction failed: Duplicate header 'DKIM-Signature'.".to_string()
                } else {
                    s.data_replies
                        .pop_front()
                        .unwrap_or_else(|| "250 2.0.0 queued".to_string())
                };
                if reply.starts_with('2') {
                    s.received.push(Received {
                        mail_from: mail_from.clone(),
                        rcpts: rcpts.clone(),
                        mail_line: mail_line.clone(),
                        rcpt_lines: rcpt_lines.clone(),
                        data,
                    });
                }
                (reply, s.data_delay)
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            reply
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            rcpt_lines.clear();
            in_transaction = false;
            "250 2.0.0 ok".to_string()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 ok".to_string()
        } else if upper.starts_with("QUIT") {
            let _ = r.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
            return None;
        } else {
            "502 5.5.1 not implemented".to_string()
        };
        if r.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return None;
        }
        // 421: the server closes the connection after saying so (RFC 5321 §3.8).
        if reply.starts_with("421") {
            return None;
        }
    }
}
