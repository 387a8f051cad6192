//! A scripted fake upstream SMTP server on 127.0.0.1: records what it accepts and answers
//! DATA and RCPT as the test tells it to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
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
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                tokio::spawn(session(stream, shared.clone()));
            }
        });
        FakeUpstream { addr, script }
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
}

fn address(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_string()
}

async fn session(stream: tokio::net::TcpStream, script: Arc<Mutex<Script>>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let _ = w.write_all(b"220 fake.upstream ESMTP\r\n").await;
    let mut mail_from = String::new();
    let mut rcpts = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-fake.upstream\r\n250-8BITMIME\r\n250 PIPELINING".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = address(&line);
            rcpts.clear();
            "250 2.1.0 ok".to_string()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&line);
            let refusal = script.lock().unwrap().rcpt_replies.get(&rcpt).cloned();
            match refusal {
                Some(reply) => reply,
                None => {
                    rcpts.push(rcpt);
                    "250 2.1.5 ok".to_string()
                }
            }
        } else if upper.starts_with("DATA") {
            let _ = w.write_all(b"354 go ahead\r\n").await;
            let mut data = Vec::new();
            loop {
                let mut raw = Vec::new();
                if r.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                    return;
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
            let mut s = script.lock().unwrap();
            let reply = s
                .data_replies
                .pop_front()
                .unwrap_or_else(|| "250 2.0.0 queued".to_string());
            if reply.starts_with('2') {
                s.received.push(Received {
                    mail_from: mail_from.clone(),
                    rcpts: rcpts.clone(),
                    data,
                });
            }
            reply
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            "250 2.0.0 ok".to_string()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 ok".to_string()
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
            return;
        } else {
            "502 5.5.1 not implemented".to_string()
        };
        if w.write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
