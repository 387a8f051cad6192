//! The envelope verbs, MAIL and RCPT: who may relay, from which sender domain, to how
//! many recipients, with which parameters.

use super::reply::{Refusal, Reply};
use super::session::{Session, State, Transaction};
use crate::message::{command_path, Mailbox, PathError, ReversePath};
use std::borrow::Cow;
use tokio::io::{AsyncRead, AsyncWrite};

const ALLOWED_MAIL_FLAGS: u64 =
    smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME | smtp_proto::MAIL_SMTPUTF8;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn mail(
        &mut self,
        from: smtp_proto::MailFrom<Cow<'_, str>>,
        line: &[u8],
    ) -> Result<Reply, Refusal> {
        match self.state {
            State::Fresh => return Err(Refusal::BadSequence("send EHLO first")),
            State::Transaction(_) => return Err(Refusal::BadSequence("nested MAIL command")),
            State::Ready => {}
        }
        let smtp = &self.client.config.smtp;
        if self.messages >= smtp.max_messages_per_session {
            tracing::info!(
                messages = self.messages,
                "smtp.max_messages_per_session reached; closing"
            );
            return Err(Refusal::TooManyMessages);
        }
        if smtp.tls.as_ref().is_some_and(|t| t.require_tls) && !self.phase.tls() {
            return Err(Refusal::TlsRequired);
        }
        let Some(grant) = self.grant() else {
            tracing::warn!(client = %self.client.ip, sender = %from.address, "relay refused: client not in an allowed network and not authenticated");
            return Err(Refusal::RelayDenied);
        };
        if from.flags & !ALLOWED_MAIL_FLAGS != 0
            || from.env_id.is_some()
            || from.trans_id.is_some()
            || from.auth.is_some()
            || from.mtrk.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
        {
            return Err(Refusal::UnsupportedParameter);
        }
        if from.size as u64 > smtp.max_message_size.0 {
            return Err(Refusal::MessageTooBig);
        }
        // A bare user name (or user@host without a dot) is qualified or refused in repair.rs.
        let origin = smtp.origin_for(self.client.ip);
        let read = checked_path(line, &from.address);
        let path =
            super::repair::qualify_sender(read, &from.address, origin).map_err(|e| match e {
                Ok(refusal) => refusal,
                Err(PathError::NonAscii) => Refusal::NonAsciiAddress,
                Err(e) => Refusal::BadSender(e),
            })?;
        if let Some(mailbox) = path.mailbox() {
            let domain = crate::domain::normalise(mailbox.domain());
            if !grant.permits(&domain) {
                tracing::warn!(client = %self.client.ip, user = %self.user_name(), domain = %domain, allowed = %grant.describe(), "envelope sender domain not allowed for this client");
                return Err(Refusal::SenderDomainDenied);
            }
        }
        self.state = State::Transaction(Transaction {
            mail_from: path,
            rcpts: Vec::new(),
            declared_size: from.size,
            smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
        });
        Ok(Reply::new(250, "2.1.0", "Sender OK"))
    }

    pub(super) fn rcpt(
        &mut self,
        to: smtp_proto::RcptTo<Cow<'_, str>>,
        line: &[u8],
    ) -> Result<Reply, Refusal> {
        let max = self.client.config.smtp.max_recipients;
        let State::Transaction(txn) = &mut self.state else {
            return Err(Refusal::BadSequence("send MAIL first"));
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return Err(Refusal::UnsupportedParameter);
        }
        let mailbox = match checked_path(line, &to.address) {
            Ok(ReversePath::Mailbox(mailbox)) => mailbox,
            Ok(ReversePath::Null) => {
                return Err(Refusal::BadRecipientPath(PathError::NullRecipient))
            }
            Err(PathError::NonAscii) => return Err(Refusal::NonAsciiAddress),
            Err(e) => return Err(Refusal::BadRecipientPath(e)),
        };
        if txn.rcpts.len() >= max {
            return Err(Refusal::TooManyRecipients);
        }
        txn.rcpts.push(mailbox);
        Ok(Reply::new(250, "2.1.5", "Recipient OK"))
    }
}

/// The path of a MAIL or RCPT line read strictly by our own reader, and accepted only when
/// smtp-proto (whose reading the parameters come from) found the same mailbox: then both
/// agree where the path ends, and no parameter can hide inside it.
fn checked_path(line: &[u8], proto_address: &str) -> Result<ReversePath, PathError> {
    let read = command_path(line)?;
    let same = match &read.path {
        ReversePath::Null => proto_address.is_empty(),
        ReversePath::Mailbox(m) => Mailbox::unquoted(m) == proto_address,
    };
    if !same {
        tracing::info!(ours = %read.path, smtp_proto = %proto_address, "two readings of an envelope address differ; refused");
        return Err(PathError::Ambiguous);
    }
    Ok(read.path)
}
