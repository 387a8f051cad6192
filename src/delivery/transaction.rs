//! One upstream transaction on an open connection, driven command by command so each
//! recipient's result is known (DESIGN §7), and the dot-stuffing DATA writer.

use super::outcome::{AttemptError, RcptOutcome};
use super::upstream::{Client, Connection};
use crate::spool::Envelope;
use mail_send::SmtpClient;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// A failed transaction, and whether the message can safely be tried again on a fresh
/// connection right away (nothing was committed: the final dot was never sent).
pub(super) struct TransactError {
    pub error: AttemptError,
    pub retry_now: bool,
}

pub(super) async fn transact(
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
    let pipelining = conn.pipelining;
    match &mut conn.client {
        Client::Tls(c) if pipelining => pipelined(c.as_mut(), envelope, rcpts, parts, body).await,
        Client::Plain(c) if pipelining => pipelined(c, envelope, rcpts, parts, body).await,
        Client::Tls(c) => transact_on(c.as_mut(), envelope, rcpts, parts, body).await,
        Client::Plain(c) => transact_on(c, envelope, rcpts, parts, body).await,
    }
}

fn before_data(e: mail_send::Error) -> TransactError {
    TransactError {
        error: AttemptError::from_send(&e),
        retry_now: true,
    }
}

/// "Authentication required" (RFC 4954 §6) at MAIL: we sent mail without the AUTH this
/// upstream wants. Our configuration's fault: defer and alert, never bounce.
fn auth_required(reply: &smtp_proto::Response<String>) -> TransactError {
    TransactError {
        error: AttemptError {
            reason: format!(
                "upstream requires AUTH ({} {}): set username and password_file",
                reply.code, reply.message
            ),
            config_fault: true,
        },
        retry_now: false,
    }
}

/// The transaction with PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write,
/// then their replies in order. Each recipient's result is still known; only a server that
/// closes the connection in the middle (421) leaves the batch unanswered, and then nothing
/// was committed, so the attempt is simply repeated.
async fn pipelined<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    envelope: &Envelope,
    rcpts: &[usize],
    parts: &[&[u8]],
    body_param: &str,
) -> Result<Vec<(usize, RcptOutcome)>, TransactError> {
    let mut batch = format!("MAIL FROM:<{}>{body_param}\r\n", envelope.mail_from);
    for &i in rcpts {
        batch.push_str(&format!("RCPT TO:<{}>\r\n", envelope.rcpts[i]));
    }
    batch.push_str("DATA\r\n");
    let timeout = c.timeout;
    let expected = rcpts.len() + 2;
    let (replies, cut) = tokio::time::timeout(timeout, async {
        c.stream.write_all(batch.as_bytes()).await?;
        c.stream.flush().await?;
        Ok::<_, std::io::Error>(read_replies(&mut c.stream, expected).await)
    })
    .await
    .map_err(|_| before_data(mail_send::Error::Timeout))?
    .map_err(|e| before_data(mail_send::Error::Io(e)))?;
    if let Some(closing) = replies.iter().position(|r| r.code == 421) {
        // The server closed the session (RFC 5321 §3.8) before DATA: a refusal it gave
        // before closing stands; every other recipient waits for the next attempt.
        let ok = |r: &smtp_proto::Response<String>| (200..300).contains(&r.code);
        let mail_ok = closing > 0 && ok(&replies[0]);
        return Ok(rcpts
            .iter()
            .enumerate()
            .map(|(j, &i)| match replies.get(1 + j) {
                _ if closing > 0 && !mail_ok => (i, RcptOutcome::from_response(&replies[0])),
                Some(r) if 1 + j < closing && !ok(r) => (i, RcptOutcome::from_response(r)),
                _ => (i, RcptOutcome::from_response(&replies[closing])),
            })
            .collect());
    }
    let ([mail, rcpt_replies @ ..], None) = (replies.as_slice(), cut) else {
        return Err(before_data(mail_send::Error::UnparseableReply));
    };
    let Some((data, rcpt_replies)) = rcpt_replies.split_last() else {
        return Err(before_data(mail_send::Error::UnparseableReply));
    };
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::with_capacity(rcpts.len());
    let mail_ok = (200..300).contains(&mail.code);
    for (&i, reply) in rcpts.iter().zip(rcpt_replies) {
        if !mail_ok {
            outcomes.push((i, RcptOutcome::from_response(mail)));
        } else if (200..300).contains(&reply.code) {
            accepted.push(i);
        } else {
            outcomes.push((i, RcptOutcome::from_response(reply)));
        }
    }
    if data.code == 354 && accepted.is_empty() {
        // A server may answer DATA with 354 although nothing was accepted (RFC 2920
        // §3.1): end the empty message at once; with no recipient it delivers nothing.
        let _ = c.cmd(b".\r\n").await;
    }
    if mail.code == 530 {
        let _ = c.rset().await;
        return Err(auth_required(mail));
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok(outcomes);
    }
    if data.code != 354 {
        let _ = c.rset().await;
        let outcome = RcptOutcome::from_response(data);
        outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
        return Ok(outcomes);
    }
    send_data(c, parts, &accepted, outcomes).await
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
    mut outcomes: Vec<(usize, RcptOutcome)>,
) -> Result<Vec<(usize, RcptOutcome)>, TransactError> {
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
    let outcome = RcptOutcome::from_response(&reply);
    outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
    Ok(outcomes)
}

async fn transact_on<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    envelope: &Envelope,
    rcpts: &[usize],
    parts: &[&[u8]],
    body_param: &str,
) -> Result<Vec<(usize, RcptOutcome)>, TransactError> {
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
    if reply.code == 530 {
        let _ = c.rset().await;
        return Err(auth_required(&reply));
    }
    if !(200..300).contains(&reply.code) {
        let _ = c.rset().await;
        return Ok(all(RcptOutcome::from_response(&reply)));
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::with_capacity(rcpts.len());
    for &i in rcpts {
        let reply = c
            .cmd(format!("RCPT TO:<{}>\r\n", envelope.rcpts[i]))
            .await
            .map_err(before_data)?;
        if reply.code == 421 {
            // The server is closing the connection (RFC 5321 §3.8): nothing more can be
            // sent on it, so every recipient not yet refused waits for the next attempt.
            let outcome = RcptOutcome::from_response(&reply);
            let settled: Vec<usize> = outcomes.iter().map(|(i, _)| *i).collect();
            outcomes.extend(
                rcpts
                    .iter()
                    .filter(|i| !settled.contains(i))
                    .map(|&i| (i, outcome.clone())),
            );
            return Ok(outcomes);
        }
        if (200..300).contains(&reply.code) {
            accepted.push(i);
        } else {
            outcomes.push((i, RcptOutcome::from_response(&reply)));
        }
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok(outcomes);
    }
    let reply = c.cmd(b"DATA\r\n").await.map_err(before_data)?;
    if reply.code != 354 {
        let _ = c.rset().await;
        let outcome = RcptOutcome::from_response(&reply);
        outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
        return Ok(outcomes);
    }
    send_data(c, parts, &accepted, outcomes).await
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
