//! DATA and the end of a transaction: read the message, apply the message policy
//! (DESIGN §4) to its header block as soon as that is complete, stream the rest to disk
//! (`receive.rs`, `repair.rs`: the repairs run before the spool file is written), and only
//! after the file is durable answer 250.

use super::data::DataParser;
use super::pace::Pace;
use super::receive::{Receiver, Refused, Spooling, Stage, Taken};
use super::repair::{self, BodyRepair};
use super::reply::{Refusal, Reply};
use super::session::{stopping, Flow, Session, State, Transaction};
use super::wire::DataRead;
use crate::dkim::KeyLookup;
use crate::message::repair::mime::PartType;
use crate::message::{
    from_domain, merge_address_lists, repeated_field, FromError, FromSyntax, HeaderBlock, Mailbox,
};
use crate::spool::{
    DeliveryState, Envelope, Origin, QueueId, QueuedMessage, Utf8Use, HEADER_STEP, TRANSFER_BASE,
};
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
        let smtp = &self.client.config.smtp;
        // The buffers of this transfer come out of the global budget before the 354, so a
        // flood of concurrent transfers waits here (or gets 452) instead of growing memory.
        let share = TRANSFER_BASE + HEADER_STEP;
        let budget = self.ctx.spool.memory().clone();
        let Some(lease) = budget.reserve(share, smtp.data_memory_wait.0).await else {
            tracing::warn!(client = %self.client.ip, sender = %txn.mail_from, "no in-flight message memory left (smtp.max_data_memory); DATA refused with 452");
            self.state = State::Transaction(txn);
            return self.respond(Refusal::NoDataMemory.reply());
        };
        let mut rx = Receiver::new(lease, HEADER_STEP as usize, smtp.max_header_size.0 as usize);
        self.conn
            .queue_reply(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let mut parser = DataParser::new(
            smtp.max_message_size.0 as usize,
            smtp.max_line_length,
            txn.declared_size,
        );
        let now = tokio::time::Instant::now();
        let cap = (now + smtp.data_timeout.0).min(self.client.started + smtp.max_session_age.0);
        let mut pace = Pace::new(now, smtp.command_timeout.0, cap, smtp.min_data_rate);
        let grace = smtp.shutdown_grace.0;
        let mut shutdown = self.shutdown.clone();
        // At shutdown a transfer in progress may still finish within the grace period;
        // then the client gets 421 and nothing is stored, so it will retry elsewhere.
        // Every early return drops `rx`, whose spool temp file is then removed.
        let read = tokio::select! {
            read = self.receive(&txn, &mut parser, &mut pace, &mut rx) => read,
            _ = async { stopping(&mut shutdown).await; tokio::time::sleep(grace).await } => {
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
            Ok(DataRead::Done | DataRead::Drain) => {}
        }
        let end_of_data = std::time::Instant::now();
        let reply = match self.accept(txn, parser, rx).await {
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

    /// Reads the data to its end, handing it to `rx` as it comes: the header block to the
    /// policy ([`Session::open_message`]), the rest into the spool file.
    async fn receive(
        &mut self,
        txn: &Transaction,
        parser: &mut DataParser,
        pace: &mut Pace,
        rx: &mut Receiver,
    ) -> std::io::Result<DataRead> {
        loop {
            let read = self.conn.read_data(parser, pace).await?;
            if parser.taint.is_some() || parser.too_big || parser.long_line {
                // Refused at the end whatever follows: keep nothing more.
                if !matches!(rx.stage, Stage::Discard(_)) {
                    rx.discard(None);
                }
            }
            let piece = parser.output();
            let body = match rx.take(piece) {
                Taken::Used => &[][..],
                Taken::Body => piece,
                Taken::HeaderEnded(at) => {
                    self.open_message(txn, rx).await;
                    let carry = std::mem::take(&mut rx.carry);
                    if !carry.is_empty() {
                        self.write_body(rx, &carry).await;
                    }
                    &piece[at..]
                }
            };
            if !body.is_empty() {
                self.write_body(rx, body).await;
            }
            parser.clear_output();
            match read {
                DataRead::Drain => continue,
                DataRead::Done if matches!(rx.stage, Stage::Header) => {
                    // Data without an empty line is all header block.
                    self.open_message(txn, rx).await;
                    return Ok(DataRead::Done);
                }
                other => return Ok(other),
            }
        }
    }

    /// The message policy on the complete header block (DESIGN §4); when it passes, the
    /// body is taken by the repair (`repair.rs`), which writes the spool file at the end.
    async fn open_message(&mut self, txn: &Transaction, rx: &mut Receiver) {
        match self.check_header(txn, &rx.header, rx.missing_blank) {
            Err(refused) => rx.drop_all(refused),
            Ok(Admitted {
                envelope,
                prefix,
                header,
            }) => {
                let top = match HeaderBlock::parse(&header) {
                    Ok(h) => PartType::of(h.fields.iter().map(|f| (f.name, f.value))),
                    Err(_) => PartType::default(),
                };
                let body = BodyRepair::new(top, self.client.config.smtp.max_line_length);
                let mut head = prefix;
                head.extend_from_slice(&header);
                // Kept in `head`: the policy needs nothing more of it.
                rx.header = Vec::new();
                rx.stage = Stage::Body(Box::new(Spooling {
                    envelope,
                    head,
                    body,
                }));
            }
        }
    }

    /// Checks a header block; returns the envelope (size still 0) and the fields the relay
    /// adds before it.
    fn check_header(
        &self,
        txn: &Transaction,
        received: &[u8],
        missing_blank: bool,
    ) -> Result<Admitted, Refused> {
        let origin = self.client.config.smtp.origin_for(self.client.ip);
        let fixed = repair::fix_header_section(received, missing_blank, &txn.mail_from)
            .map_err(|r| Refused::new(r, "header block cannot be repaired"))?;
        let mut notes = fixed.notes;
        let mut header = fixed.block;
        // A bare user or host name in From (cron's `root (Cron Daemon)`): qualified with
        // the network's domain when it has one, then read again like any From.
        let qualified = HeaderBlock::parse(&header).ok().and_then(|h| {
            let field = h.all("From").next()?;
            if from_domain(&h) != Err(FromError::Syntax(FromSyntax::Unqualified)) {
                return None;
            }
            let (value, note) = repair::qualify_from(field.value, origin)?;
            Some((repair::replace_in(&header, field.value, &value), note))
        });
        if let Some((block, note)) = qualified {
            header = block;
            notes.push(note);
        }
        let header = &header[..];
        let parsed = HeaderBlock::parse(header)
            .map_err(|e| Refused::new(Refusal::MalformedHeader, e.to_string()))?;
        // The header section as received (a merge below rewrites the block, not this).
        let header_section = &header[..parsed.body_offset.min(header.len())];
        // Repeated To/Cc fields are joined (lossless, see message::unique): the rewritten
        // header block is what is stored and signed.
        let merged = merge_address_lists(header, &parsed).map(|m| {
            let mut block = m.section;
            block.extend_from_slice(&header[parsed.body_offset..]);
            (block, m.fields)
        });
        let headers = match &merged {
            Some((block, _)) => HeaderBlock::parse(block)
                .map_err(|e| Refused::new(Refusal::MalformedHeader, e.to_string()))?,
            None => parsed,
        };
        // UTF-8 header values are taken with or without SMTPUTF8 (msmtp and `mail -s`
        // send a UTF-8 Subject without it, and Postfix takes it): the delivery passes them
        // on as UTF-8 or as RFC 2047 encoded-words (message::transport_form). Other bytes
        // above 127 have no charset anyone downstream could know.
        let utf8_headers = !header_section.is_ascii();
        if utf8_headers && std::str::from_utf8(header_section).is_err() {
            return Err(Refused::new(
                Refusal::Utf8Headers,
                "header bytes that are not UTF-8",
            ));
        }
        if let Some(name) = repeated_field(&headers) {
            return Err(Refused::new(
                Refusal::RepeatedField(name),
                format!("more than one {name} field"),
            ));
        }
        let mut domain = from_domain(&headers)
            .map_err(|e| Refused::new(Refusal::BadFrom(e.clone()), e.to_string()))?;
        // Item 5: a host named in a private namespace sends as the network's address.
        let base = merged.as_ref().map_or(header, |(b, _)| &b[..]);
        let rewritten = repair::rewrite_private_from(base, &headers, origin, &domain);
        if let Some(r) = &rewritten {
            let reparsed = HeaderBlock::parse(&r.block)
                .map_err(|e| Refused::new(Refusal::MalformedHeader, e.to_string()))?;
            domain = from_domain(&reparsed)
                .map_err(|e| Refused::new(Refusal::BadFrom(e.clone()), e.to_string()))?;
            notes.push(format!(
                "rewrote the private-namespace From {} to {} (smtp.origins rewrite_from)",
                r.old, r.to
            ));
        }
        // Authorisation before the key check: a tenant learns nothing about which other
        // domains the relay signs for.
        if let Some(grant) = self.grant().filter(|g| !g.permits(&domain)) {
            tracing::warn!(client = %self.client.ip, user = %self.user_name(), from_domain = %domain, allowed = %grant.describe(), sender = %txn.mail_from, "From domain not allowed for this client");
            return Err(Refused::new(
                Refusal::FromDomainDenied,
                "From domain not allowed",
            ));
        }
        match self.ctx.keys.current().lookup(&domain) {
            KeyLookup::Unknown => {
                return Err(Refused::new(
                    Refusal::NoKeyForDomain,
                    format!("no key configured for the From domain {domain}"),
                ));
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
        if let Some((_, fields)) = &merged {
            tracing::info!(queue_id = %id, fields = %fields.join(", "), "joined repeated address fields into one (receivers fail DKIM on repeated fields)");
        }
        for note in &notes {
            tracing::info!(queue_id = %id, client = %self.client.ip, repair = %note, "repaired the message to make it sign-safe");
        }
        let hostname = &self.client.config.hostname;
        // What the relay adds goes before the data, which is stored as received.
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
        if let Some(r) = rewritten.as_ref().filter(|r| r.add_reply_to) {
            // The original sender keeps getting the replies.
            prefix.extend_from_slice(format!("Reply-To: {}\r\n", r.old).as_bytes());
            tracing::info!(queue_id = %id, reply_to = %r.old, "added a Reply-To with the original From address");
        }
        let envelope = Envelope {
            id,
            received: unix(now),
            client: self.client.ip,
            helo: self.helo.clone(),
            mail_from: txn.mail_from.to_string(),
            rcpts: txn.rcpts.iter().map(ToString::to_string).collect(),
            from_domain: domain,
            size: 0,
            eight_bit: false,
            origin: Origin::Client,
            utf8: Utf8Use {
                requested: txn.smtputf8,
                headers: utf8_headers,
                addresses: !txn.mail_from.mailbox().is_none_or(Mailbox::is_ascii)
                    || !txn.rcpts.iter().all(Mailbox::is_ascii),
            },
        };
        if !envelope.utf8.is_none() {
            tracing::info!(queue_id = %envelope.id, smtputf8 = envelope.utf8.requested, utf8_headers = envelope.utf8.headers, utf8_addresses = envelope.utf8.addresses, "message uses UTF-8; each upstream gets it as UTF-8 (SMTPUTF8) or encoded");
        }
        drop(headers);
        let header = match (rewritten, merged) {
            (Some(r), _) => r.block,
            (None, Some((block, _))) => block,
            (None, None) => header.to_vec(),
        };
        Ok(Admitted {
            envelope,
            prefix,
            header,
        })
    }

    /// The end of data: refuses what must be refused, else commits the spool file (fsync,
    /// rename, fsync of the directory) and returns the queue id.
    async fn accept(
        &mut self,
        txn: Transaction,
        parser: DataParser,
        rx: Receiver,
    ) -> Result<QueueId, Refusal> {
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
        // 8-bit bodies are always taken: an upstream without 8BITMIME gets them as
        // quoted-printable, converted before signing (message::transport_form).
        let (mut envelope, head, mut body) = match rx.stage {
            Stage::Body(spooling) => {
                let Spooling {
                    envelope,
                    head,
                    body,
                } = *spooling;
                (envelope, head, body)
            }
            Stage::Discard(Some(r)) => return Err(log_refusal(&r.why, r.refusal)),
            // The reader's own refusals were answered above, and the header stage always
            // ends in open_message: neither is left here.
            Stage::Discard(None) | Stage::Header => {
                return Err(log_refusal("data ended unread", Refusal::SpoolFailed))
            }
        };
        let id = envelope.id.clone();
        if let Some(why) = body.verdict() {
            return Err(log_refusal(why.name(), Refusal::LongLineUnrepairable(why)));
        }
        let file = match body.finish(&self.ctx.spool, &envelope, &head).await {
            Ok((file, notes)) => {
                for note in notes {
                    tracing::info!(queue_id = %id, repair = %note, "repaired the message to make it sign-safe");
                }
                file
            }
            Err(e) => return Err(spool_refusal(&id, &e).refusal),
        };
        envelope.size = file.written();
        envelope.eight_bit = parser.eight_bit;
        envelope.received = unix(SystemTime::now());
        if let Err(e) = file.commit(&envelope).await {
            let refused = spool_refusal(&id, &e);
            return Err(refused.refusal);
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

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Hands body bytes to the body repair (held, then into the spool file); a failed
    /// write drops the file and refuses.
    async fn write_body(&self, rx: &mut Receiver, body: &[u8]) {
        if let Stage::Body(spooling) = &mut rx.stage {
            let Spooling {
                envelope,
                head,
                body: repair,
            } = &mut **spooling;
            if let Err(e) = repair.write(&self.ctx.spool, envelope, head, body).await {
                let refused = spool_refusal(&spooling.envelope.id, &e);
                rx.drop_all(refused);
            }
        }
    }
}

/// A spool write that failed: 452 when the disk is full, else 451; the detail is logged.
fn spool_refusal(id: &QueueId, e: &std::io::Error) -> Refused {
    if is_full(e) {
        tracing::error!(queue_id = %id, error = %e, "spool is full; message refused with 452");
        Refused::new(Refusal::SpoolFull, "spool full")
    } else {
        tracing::error!(queue_id = %id, error = %e, "spool write failed; message refused with 451");
        Refused::new(Refusal::SpoolFailed, "spool write failed")
    }
}

/// A header block that passed the message policy: its envelope, what the relay adds
/// before it, and the block as it will be stored (repaired, repeated To/Cc joined).
struct Admitted {
    envelope: Envelope,
    prefix: Vec<u8>,
    header: Vec<u8>,
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
