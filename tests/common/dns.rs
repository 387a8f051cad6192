//! A small authoritative DNS server on 127.0.0.1 (UDP) for rotation tests: TXT records
//! (several strings per record allowed) and CNAMEs, changed by the test while it runs.

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{CNAME, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

#[derive(Clone, Debug)]
enum Entry {
    /// TXT records, each made of these character-strings.
    Txt(Vec<Vec<String>>),
    Cname(String),
}

#[derive(Clone)]
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Entry>>>,
}

fn key(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
        let served = zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&query, &served.lock().unwrap());
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, zone }
    }

    /// Publishes a record value, split into 255-octet strings as a zone file would.
    pub fn set_txt(&self, name: &str, value: &str) {
        let strings = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.zone
            .lock()
            .unwrap()
            .insert(key(name), Entry::Txt(vec![strings]));
    }

    /// Publishes several separate TXT records at one name (each a single string), as a
    /// DNS provider does when a long value is pasted into two records.
    pub fn set_txt_records(&self, name: &str, values: &[&str]) {
        let records = values.iter().map(|v| vec![v.to_string()]).collect();
        self.zone
            .lock()
            .unwrap()
            .insert(key(name), Entry::Txt(records));
    }

    pub fn set_cname(&self, name: &str, target: &str) {
        self.zone
            .lock()
            .unwrap()
            .insert(key(name), Entry::Cname(key(target)));
    }

    pub fn remove(&self, name: &str) {
        self.zone.lock().unwrap().remove(&key(name));
    }
}

fn answer(query: &Message, zone: &HashMap<String, Entry>) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    let mut name = q.name().to_ascii().to_ascii_lowercase();
    let mut found = false;
    for _ in 0..8 {
        match zone.get(&name) {
            Some(Entry::Cname(target)) => {
                let owner = Name::from_str(&name).unwrap();
                reply.add_answer(Record::from_rdata(
                    owner,
                    60,
                    RData::CNAME(CNAME(Name::from_str(target).unwrap())),
                ));
                name = target.clone();
            }
            Some(Entry::Txt(records)) if q.query_type() == RecordType::TXT => {
                let owner = Name::from_str(&name).unwrap();
                for strings in records {
                    reply.add_answer(Record::from_rdata(
                        owner.clone(),
                        60,
                        RData::TXT(TXT::new(strings.clone())),
                    ));
                }
                found = true;
                break;
            }
            _ => break,
        }
    }
    if !found && reply.answers.is_empty() {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}
