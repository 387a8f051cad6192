//! One upstream transaction on an open connection, pipelined when the upstream offers it
//! and command by command otherwise, so that each recipient's result is known (DESIGN §7),
//! and the dot-stuffing DATA writer.

use super::connection::{Client, Connection};
use super::verdict::{Cause, Fault, Phase, UpstreamReply, Verdict};
use crate::message::transport_form::Form;
use crate::message::{Mailbox, ReversePath};
use crate::spool::Envelope;
use mail_send::SmtpClient;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// A failed transaction, and whether the message can safely be tried again on a fresh
/// connection right away (nothing was committed: the final dot was never sent).
pub(super) struct TransactError {
    pub cause: Cause,
    pub retry_now: bool,
}

pub(super) async fn transact(
    conn: &mut Connection,
    envelope: &Envelope,
    rcpts: &[usize],
    parts: &[&[u8]],
    form: Form,
) -> Result<Outcomes, TransactError> {
    let (cmds, unsendable) = match commands(envelope, rcpts, form) {
        Ok(split) => split,
        Err(outcomes) => return Ok(outcomes),
    };
    if cmds.rcpts.is_empty() {
        return Ok(unsendable);
    }
    let pipelining = conn.pipelining;
    let mut outcomes = match &mut conn.client {
        Client::Tls(c) if pipelining => pipelined(c.as_mut(), &cmds, parts).await,
        Client::Plain(c) if pipelining => pipelined(c, &cmds, parts).await,
        Client::Tls(c) => transact_on(c.as_mut(), &cmds, parts).await,
        Client::Plain(c) => transact_on(c, &cmds, parts).await,
    }?;
    outcomes.extend(unsendable);
    Ok(outcomes)
}

/// The MAIL command and one RCPT command per sendable recipient.
struct Commands {
    mail: String,
    /// Spool indexes of the recipients, and their RCPT commands, in the same order.
    rcpts: Vec<usize>,
    rcpt_lines: Vec<String>,
}

/// Writes the envelope as RFC 5321 paths: every stored address is read again by the
/// same reader that checked it at MAIL and RCPT and written with the quoting it needs, so
/// no stored text reaches the upstream as anything but one path. An address that does
/// not read (a spool file from before addresses were checked, or edited by hand) is
/// never sent: a bad recipient fails alone, a bad sender fails the whole message.
///
/// Without SMTPUTF8 in the form, a UTF-8 address goes as its ASCII form (a U-label domain
/// as its A-label) when it has one; one with a UTF-8 local part fails (alone for a
/// recipient, the whole message for the sender), with a DSN saying why.
fn commands(
    envelope: &Envelope,
    rcpts: &[usize],
    form: Form,
) -> Result<(Commands, Outcomes), Outcomes> {
    let fail_all = |why: Cause| {
        rcpts
            .iter()
            .map(|&i| (i, Verdict::Failed(why.clone())))
            .collect::<Outcomes>()
    };
    let sender = ReversePath::parse(&envelope.mail_from).map_err(|e| {
        tracing::error!(queue_id = %envelope.id, reason = %e, "the stored envelope sender is not a valid path; not sent");
        fail_all(Cause::relay(format!("the stored envelope sender is not a valid address: {e}")))
    })?;
    let sender = match sender {
        ReversePath::Mailbox(m) if !form.smtputf8 && !m.is_ascii() => match m.ascii_form() {
            Some(ascii) => ReversePath::Mailbox(ascii),
            None => {
                tracing::warn!(queue_id = %envelope.id, sender = %m, "the envelope sender is UTF-8 and the upstream does not offer SMTPUTF8; not sent");
                return Err(fail_all(Cause::needs_smtputf8("the envelope sender")));
            }
        },
        other => other,
    };
    let mut params = String::new();
    if form.body_8bitmime {
        params.push_str(" BODY=8BITMIME");
    }
    if form.smtputf8 {
        params.push_str(" SMTPUTF8");
    }
    let mut cmds = Commands {
        mail: format!("MAIL FROM:<{sender}>{params}\r\n"),
        rcpts: Vec::with_capacity(rcpts.len()),
        rcpt_lines: Vec::with_capacity(rcpts.len()),
    };
    let mut unsendable = Vec::new();
    for &i in rcpts {
        let parsed = Mailbox::parse(&envelope.rcpts[i]).map(|m| {
            if form.smtputf8 || m.is_ascii() {
                Some(m)
            } else {
                m.ascii_form()
            }
        });
        match parsed {
            Ok(None) => {
                tracing::warn!(queue_id = %envelope.id, rcpt = %envelope.rcpts[i], "the recipient is UTF-8 and the upstream does not offer SMTPUTF8; not sent");
                unsendable.push((
                    i,
                    Verdict::Failed(Cause::needs_smtputf8("the recipient address")),
                ));
            }
            Ok(Some(rcpt)) => {
                cmds.rcpts.push(i);
                cmds.rcpt_lines.push(format!("RCPT TO:<{rcpt}>\r\n"));
            }
            Err(e) => {
                tracing::error!(queue_id = %envelope.id, rcpt_index = i, reason = %e, "a stored recipient is not a valid path; not sent");
                let why = format!("the stored recipient is not a valid address: {e}");
                unsendable.push((i, Verdict::Failed(Cause::relay(why))));
            }
        }
    }
    Ok((cmds, unsendable))
}

fn before_data(phase: Phase) -> impl Fn(mail_send::Error) -> TransactError {
    move |e| TransactError {
        cause: Cause::from_send(&e, phase, ""),
        retry_now: true,
    }
}

/// The phase a reply answers: the n-th reply after MAIL's is a RCPT's, then DATA's.
fn phase_of(n: usize, rcpts: usize) -> Phase {
    if n < rcpts {
        Phase::Rcpt
    } else {
        Phase::Data
    }
}

/// "Authentication required" (RFC 4954 §6) at MAIL: we sent mail without the AUTH this
/// upstream wants. Our configuration's fault: defer and alert, never bounce.
fn auth_required(reply: &smtp_proto::Response<String>) -> TransactError {
    TransactError {
        cause: Cause {
            fault: Fault::OurConfig,
            reply: Some(UpstreamReply::from_response(reply)),
            detail: "the upstream requires AUTH".into(),
            upstream: None,
            phase: Some(Phase::Mail),
            fix: Some("set username and password_file".into()),
        },
        retry_now: false,
    }
}

type Reply = smtp_proto::Response<String>;
pub(super) type Outcomes = Vec<(usize, Verdict)>;

/// What the replies to MAIL, each RCPT and then DATA settle, however they were sent.
#[derive(Debug)]
enum Settled {
    /// DATA got 354: send the message to `accepted`; `outcomes` holds the refused.
    SendData {
        accepted: Vec<usize>,
        outcomes: Outcomes,
    },
    /// The transaction ends here; `closing` after a 421, when RSET cannot be sent.
    Done { outcomes: Outcomes, closing: bool },
    /// 530 at MAIL.
    AuthRequired(Reply),
}

/// Settles every recipient in `rcpts` from the MAIL reply and `rest`: the RCPT replies in
/// order, then the DATA reply. `rest` may end early: after a 421, or without a DATA reply
/// when no recipient was accepted.
fn settle(rcpts: &[usize], mail: &Reply, rest: &[Reply]) -> Settled {
    let ok = |r: &Reply| (200..300).contains(&r.code);
    if mail.code == 530 {
        return Settled::AuthRequired(mail.clone());
    }
    if !ok(mail) {
        return Settled::Done {
            outcomes: rcpts
                .iter()
                .map(|&i| (i, Verdict::from_response(mail, Phase::Mail)))
                .collect(),
            closing: mail.code == 421,
        };
    }
    if let Some(p) = rest.iter().position(|r| r.code == 421) {
        // The server is closing the connection (RFC 5321 §3.8): a refusal it gave before
        // stands; every other recipient waits for the next attempt.
        let outcomes = rcpts
            .iter()
            .enumerate()
            .map(|(j, &i)| match rest.get(j) {
                Some(r) if j < p && !ok(r) => (i, Verdict::from_response(r, Phase::Rcpt)),
                _ => (
                    i,
                    Verdict::from_response(&rest[p], phase_of(p, rcpts.len())),
                ),
            })
            .collect();
        return Settled::Done {
            outcomes,
            closing: true,
        };
    }
    let mut accepted = Vec::with_capacity(rcpts.len());
    let mut outcomes = Vec::with_capacity(rcpts.len());
    for (&i, r) in rcpts.iter().zip(rest) {
        if ok(r) {
            accepted.push(i);
        } else {
            outcomes.push((i, Verdict::from_response(r, Phase::Rcpt)));
        }
    }
    if accepted.is_empty() {
        return Settled::Done {
            outcomes,
            closing: false,
        };
    }
    let data = match rest.get(rcpts.len()) {
        Some(data) if data.code == 354 => return Settled::SendData { accepted, outcomes },
        Some(data) => Verdict::from_response(data, Phase::Data),
        None => Verdict::Deferred(Cause::transport("no reply to DATA").at(Phase::Data)),
    };
    outcomes.extend(accepted.iter().map(|&i| (i, data.clone())));
    Settled::Done {
        outcomes,
        closing: false,
    }
}

/// Carries out a verdict: RSET after a transaction that ends early, the message after 354.
async fn conclude<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    settled: Settled,
    parts: &[&[u8]],
) -> Result<Outcomes, TransactError> {
    match settled {
        Settled::AuthRequired(reply) => {
            let _ = c.rset().await;
            Err(auth_required(&reply))
        }
        Settled::Done { outcomes, closing } => {
            if !closing {
                let _ = c.rset().await;
            }
            Ok(outcomes)
        }
        Settled::SendData { accepted, outcomes } => send_data(c, parts, &accepted, outcomes).await,
    }
}

/// The transaction with PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write,
/// then their replies in order. Each recipient's result is still known; a server that
/// closes the connection before answering everything (other than with a 421) leaves
/// nothing committed, so the attempt is simply repeated.
async fn pipelined<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    cmds: &Commands,
    parts: &[&[u8]],
) -> Result<Outcomes, TransactError> {
    let rcpts = &cmds.rcpts[..];
    let mut batch = cmds.mail.clone();
    for line in &cmds.rcpt_lines {
        batch.push_str(line);
    }
    batch.push_str("DATA\r\n");
    let (replies, cut) = tokio::time::timeout(c.timeout, async {
        c.stream.write_all(batch.as_bytes()).await?;
        c.stream.flush().await?;
        Ok::<_, std::io::Error>(read_replies(&mut c.stream, rcpts.len() + 2).await)
    })
    .await
    .map_err(|_| before_data(Phase::Mail)(mail_send::Error::Timeout))?
    .map_err(|e| before_data(Phase::Mail)(mail_send::Error::Io(e)))?;
    let closing = replies.iter().any(|r| r.code == 421);
    if let (Some(e), false) = (cut, closing) {
        // The first reply missing says which command the upstream did not answer.
        let phase = match replies.len() {
            0 => Phase::Mail,
            n => phase_of(n - 1, rcpts.len()),
        };
        return Err(before_data(phase)(e));
    }
    let Some((mail, rest)) = replies.split_first() else {
        return Err(before_data(Phase::Mail)(mail_send::Error::UnparseableReply));
    };
    let settled = settle(rcpts, mail, rest);
    let data_started = rest.get(rcpts.len()).is_some_and(|d| d.code == 354);
    if data_started && !matches!(settled, Settled::SendData { .. }) {
        // A server may answer DATA with 354 although MAIL or every RCPT failed (RFC 2920
        // §3.1): end the empty message at once; with no recipient it delivers nothing.
        let _ = c.cmd(b".\r\n").await;
    }
    conclude(c, settled, parts).await
}

/// The transaction command by command, for an upstream without PIPELINING.
async fn transact_on<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    cmds: &Commands,
    parts: &[&[u8]],
) -> Result<Outcomes, TransactError> {
    let rcpts = &cmds.rcpts[..];
    let mail = c
        .cmd(cmds.mail.as_bytes())
        .await
        .map_err(before_data(Phase::Mail))?;
    let mut rest = Vec::with_capacity(rcpts.len() + 1);
    if (200..300).contains(&mail.code) {
        for line in &cmds.rcpt_lines {
            let reply = c
                .cmd(line.as_bytes())
                .await
                .map_err(before_data(Phase::Rcpt))?;
            let closing = reply.code == 421;
            rest.push(reply);
            if closing {
                break;
            }
        }
        let all_answered = rest.len() == rcpts.len();
        if all_answered && rest.iter().any(|r| (200..300).contains(&r.code)) {
            rest.push(c.cmd(b"DATA\r\n").await.map_err(before_data(Phase::Data))?);
        }
    }
    conclude(c, settle(rcpts, &mail, &rest), parts).await
}

/// Reads up to `n` replies; fewer (and the reason) when the server closes or sends
/// something unparseable first. Unlike mail-send's reader, replies received before a
/// close are kept, so a 421 in the middle of a pipelined batch is still seen.
async fn read_replies<S: AsyncRead + Unpin>(
    stream: &mut S,
    n: usize,
) -> (Vec<smtp_proto::Response<String>>, Option<mail_send::Error>) {
    use smtp_proto::response::parser::ResponseReceiver;
    use tokio::io::AsyncReadExt;
    let mut replies = Vec::with_capacity(n);
    let mut parser = ResponseReceiver::default();
    let mut buf = vec![0u8; 4096];
    while replies.len() < n {
        let read = match stream.read(&mut buf).await {
            Ok(0) => return (replies, Some(mail_send::Error::UnparseableReply)),
            Ok(read) => read,
            Err(e) => return (replies, Some(mail_send::Error::Io(e))),
        };
        let mut bytes = buf[..read].iter();
        while replies.len() < n {
            match parser.parse(&mut bytes) {
                Ok(reply) => {
                    replies.push(reply);
                    parser.reset();
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                Err(_) => return (replies, Some(mail_send::Error::UnparseableReply)),
            }
        }
    }
    (replies, None)
}

/// After the 354: the message, the final dot and its reply, which settles every
/// recipient in `accepted`.
async fn send_data<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    parts: &[&[u8]],
    accepted: &[usize],
    mut outcomes: Outcomes,
) -> Result<Outcomes, TransactError> {
    let timeout = c.timeout;
    let written = tokio::time::timeout(timeout, write_data(&mut c.stream, parts)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(before_data(Phase::Data)(mail_send::Error::Io(e))),
        Err(_) => return Err(before_data(Phase::Data)(mail_send::Error::Timeout)),
    }
    // From here the upstream may have the message: a lost reply means a possible
    // duplicate on retry, never a loss.
    let reply = tokio::time::timeout(timeout, c.read())
        .await
        .map_err(|_| mail_send::Error::Timeout)
        .and_then(|r| r)
        .map_err(|e| TransactError {
            cause: Cause::from_send(&e, Phase::Data, ""),
            retry_now: false,
        })?;
    let outcome = Verdict::from_response(&reply, Phase::Data);
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn stuffed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        write_data(&mut out, parts).await.unwrap();
        out
    }

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            esc: [0, 0, 0],
            message: format!("m{code}"),
        }
    }

    /// (recipient, first letter of the verdict: D, F or R for retry, reply code and a
    /// space, as the upstream's reply starts).
    fn summary(outcomes: &Outcomes) -> Vec<(usize, char, String)> {
        let code = |c: &Cause| {
            c.reply
                .as_ref()
                .map_or(String::new(), |r| format!("{} ", r.code))
        };
        outcomes
            .iter()
            .map(|(i, o)| match o {
                Verdict::Delivered(said) => (*i, 'D', said.chars().take(4).collect()),
                Verdict::Failed(c) => (*i, 'F', code(c)),
                Verdict::Deferred(c) => (*i, 'R', code(c)),
            })
            .collect()
    }

    #[test]
    fn replies_settle_each_recipient_however_they_were_sent() {
        let rcpts = [0, 1, 2];
        // Mixed RCPT replies, then 354: send to the accepted, keep the refusals.
        let Settled::SendData { accepted, outcomes } = settle(
            &rcpts,
            &reply(250),
            &[reply(250), reply(550), reply(451), reply(354)],
        ) else {
            panic!("expected SendData")
        };
        assert_eq!(accepted, [0]);
        assert_eq!(
            summary(&outcomes),
            [(1, 'F', "550 ".into()), (2, 'R', "451 ".into())]
        );

        // MAIL refused: every recipient gets its reply, whatever came after it.
        let Settled::Done { outcomes, closing } = settle(
            &rcpts,
            &reply(550),
            &[reply(503), reply(503), reply(503), reply(554)],
        ) else {
            panic!("expected Done")
        };
        assert!(!closing);
        assert!(summary(&outcomes)
            .iter()
            .all(|(_, k, t)| *k == 'F' && t == "550 "));

        // 421 at the second RCPT: the refusal before it stands, the rest waits.
        let Settled::Done { outcomes, closing } =
            settle(&rcpts, &reply(250), &[reply(550), reply(421)])
        else {
            panic!("expected Done")
        };
        assert!(closing);
        assert_eq!(
            summary(&outcomes),
            [
                (0, 'F', "550 ".into()),
                (1, 'R', "421 ".into()),
                (2, 'R', "421 ".into())
            ]
        );

        // DATA refused: the accepted recipients take its reply.
        let Settled::Done { outcomes, .. } = settle(
            &rcpts,
            &reply(250),
            &[reply(250), reply(250), reply(550), reply(554)],
        ) else {
            panic!("expected Done")
        };
        assert_eq!(
            summary(&outcomes),
            [
                (2, 'F', "550 ".into()),
                (0, 'F', "554 ".into()),
                (1, 'F', "554 ".into())
            ]
        );

        assert!(matches!(
            settle(&rcpts, &reply(530), &[]),
            Settled::AuthRequired(_)
        ));
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
