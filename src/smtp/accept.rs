//! DATA and the end of a transaction: read the message, apply the message policy
//! (DESIGN §4), store it durably, and only then answer 250.

use super::conn::DataRead;
use super::data::DataParser;
use super::pace::Pace;
use super::reply::{Refusal, Reply};
use super::session::{stopping, Flow, Session, State, Transaction};
use crate::dkim::KeyLookup;
use crate::message::{from_domain, HeaderBlock};
use crate::spool::{DeliveryState, Envelope, Origin, QueueId, QueuedMessage};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn data(&mut self) -> Flow {
        let txn = match std::mem::replace(&mut self.state, State::Ready) {
            State::Transaction(txn) if !txn.rcpts.is_empty() => txn,
            State::Transaction(txn) => {
                self.state = State::Transaction(txn);
                return self.respond(Refusal::NoRecipients.reply());
            }
            other => {
                self.state = other;
                return self.respond(Refusal::BadSequence("send MAIL and RCPT first").reply());
            }
        };
        self.conn
            .queue_reply(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let smtp = &self.ctx.config.smtp;
        let mut parser = DataParser::new(
            smtp.max_message_size.0 as usize,
            smtp.max_line_length,
            txn.declared_size,
        );
        let now = tokio::time::Instant::now();
        let cap = (now + smtp.data_timeout.0).min(self.client.started + smtp.max_session_age.0);
        let mut pace = Pace::new(now, smtp.command_timeout.0, cap, smtp.min_data_rate);
        let grace = smtp.shutdown_grace.0;
        // At shutdown a transfer in progress may still finish within the grace period;
        // then the client gets 421 and nothing is stored, so it will retry elsewhere.
        let read = tokio::select! {
            read = self.conn.read_data(&mut parser, &mut pace) => read,
            _ = async { stopping(&mut self.shutdown).await; tokio::time::sleep(grace).await } => {
                tracing::info!(sender = %txn.mail_from, "shutdown grace ran out during DATA; nothing stored");
                return self.respond(Refusal::ShuttingDown.reply());
            }
        };
        match read {
            Ok(DataRead::TimedOut) => {
                tracing::info!(sender = %txn.mail_from, "DATA too slow or too long; closing, nothing stored");
                return self.respond(Refusal::Timeout.reply());
            }
            Err(e) => {
                tracing::info!(error = %e, "connection lost during DATA; nothing stored");
                return Flow::Close;
            }
            Ok(DataRead::Eof) => {
                tracing::info!("client closed the connection during DATA; nothing stored");
                return Flow::Close;
            }
            Ok(DataRead::Done) => {}
        }
        let end_of_data = std::time::Instant::now();
        let reply = match self.accept(txn, parser).await {
            Ok(id) => {
                crate::metrics::global()
                    .accept
                    .observe(end_of_data.elapsed());
                self.messages += 1;
                Reply::owned(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(refusal) => refusal.reply(),
        };
        self.respond(reply)
    }

    /// Checks a complete message and stores it; returns its queue id.
    async fn accept(&mut self, txn: Transaction, parser: DataParser) -> Result<QueueId, Refusal> {
        let log_refusal = |why: &str, refusal: Refusal| {
            tracing::info!(sender = %txn.mail_from, rcpts = txn.rcpts.len(), reason = why, "message refused");
            refusal
        };
        if let Some(taint) = parser.taint {
            return Err(log_refusal(taint.name(), Refusal::TaintedData(taint)));
        }
        if parser.too_big {
            return Err(log_refusal("too big", Refusal::MessageTooBig));
        }
        if parser.long_line {
            return Err(log_refusal(
                "line over the length limit",
                Refusal::LineTooLong,
            ));
        }
        let eight_bit = parser.eight_bit;
        let data = parser.into_message();
        let headers = HeaderBlock::parse(&data)
            .map_err(|e| log_refusal(&e.to_string(), Refusal::MalformedHeader))?;
        let smtp = &self.ctx.config.smtp;
        if headers.body_offset as u64 > smtp.max_header_size.0 {
            return Err(log_refusal("header block too big", Refusal::HeaderTooBig));
        }
        // SMTPUTF8 is not offered, so UTF-8 in header fields cannot be relayed (RFC 6532
        // needs it end to end); an 8-bit body needs an upstream that carries 8BITMIME.
        if !data[..headers.body_offset].is_ascii() {
            return Err(log_refusal("non-ASCII header field", Refusal::Utf8Headers));
        }
        if eight_bit && !smtp.upstream_8bitmime {
            return Err(log_refusal(
                "8-bit body; the upstream does not carry 8BITMIME",
                Refusal::EightBitNotCarried,
            ));
        }
        let domain =
            from_domain(&headers).map_err(|e| log_refusal(&e.to_string(), Refusal::BadFrom(e)))?;
        // Authorisation before the key check: a tenant learns nothing about which other
        // domains the relay signs for.
        if let Some(grant) = self.grant().filter(|g| !g.permits(&domain)) {
            tracing::warn!(client = %self.client.ip, user = %self.user_name(), from_domain = %domain, allowed = %grant.describe(), sender = %txn.mail_from, "message refused: From domain not allowed for this client");
            return Err(Refusal::FromDomainDenied);
        }
        match self.ctx.keys.current().lookup(&domain) {
            KeyLookup::Unknown => {
                tracing::info!(sender = %txn.mail_from, from_domain = %domain, "message refused: no key configured for the From domain");
                return Err(Refusal::NoKeyForDomain);
            }
            KeyLookup::Unusable(reason) => {
                // Accept: the operator can fix the key, and the message waits in the queue.
                tracing::warn!(from_domain = %domain, reason = %reason, "accepting, but the domain's keys are unusable; delivery will wait");
            }
            KeyLookup::Ready(_) => {}
        }

        let now = SystemTime::now();
        let id = QueueId::generate(now);
        let protocol = match (self.phase.tls(), self.user.is_some()) {
            (false, false) => "ESMTP",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (true, true) => "ESMTPSA",
        };
        let hostname = &self.ctx.config.hostname;
        // What the relay adds goes before the data, which is stored as received: a large
        // message is never copied in memory.
        let mut prefix =
            received_header(&self.helo, self.client.ip, hostname, protocol, &id, now).into_bytes();
        // RFC 6409 §8.2/8.3: a submission server may add what the client left out; it
        // goes in before signing, so it is covered by the signature.
        if headers.all("Message-ID").next().is_none() {
            prefix.extend_from_slice(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes());
            tracing::info!(queue_id = %id, "added a Message-ID");
        }
        if headers.all("Date").next().is_none() {
            let date = crate::message::rfc5322_date(unix(now));
            prefix.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
            tracing::info!(queue_id = %id, "added a Date");
        }
        drop(headers);
        let envelope = Envelope {
            id: id.clone(),
            received: unix(now),
            client: self.client.ip,
            helo: self.helo.clone(),
            mail_from: txn.mail_from.to_string(),
            rcpts: txn.rcpts.iter().map(ToString::to_string).collect(),
            from_domain: domain,
            size: (prefix.len() + data.len()) as u64,
            eight_bit,
            origin: Origin::Client,
        };
        let spool = self.ctx.spool.clone();
        let env = envelope.clone();
        let stored =
            tokio::task::spawn_blocking(move || spool.store_parts(&env, &[&prefix, &data])).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_full(&e) => {
                tracing::error!(queue_id = %id, error = %e, "spool is full; message refused with 452");
                return Err(Refusal::SpoolFull);
            }
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "spool write failed; message refused with 451");
                return Err(Refusal::SpoolFailed);
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool task failed; message refused with 451");
                return Err(Refusal::SpoolFailed);
            }
        }
        tracing::info!(
            queue_id = %id,
            client = %envelope.client,
            sender = %envelope.mail_from,
            rcpts = envelope.rcpts.len(),
            size = envelope.size,
            from_domain = %envelope.from_domain,
            "message accepted"
        );
        crate::metrics::Registry::add(&crate::metrics::global().accepted);
        let state = DeliveryState::new(&envelope);
        self.ctx.queue.enqueue(QueuedMessage { envelope, state });
        Ok(id)
    }
}

/// Out of space or quota: the client should wait (452 4.3.1), not assume a fault.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The trace field RFC 5321 §4.4 requires of every relay.
fn received_header(
    helo: &str,
    peer: std::net::IpAddr,
    hostname: &str,
    protocol: &str,
    id: &QueueId,
    now: SystemTime,
) -> String {
    format!(
        "Received: from {helo} ([{peer}])\r\n\tby {hostname} (dkim-relay) with {protocol} id {id};\r\n\t{}\r\n",
        crate::message::rfc5322_date(unix(now))
    )
}
