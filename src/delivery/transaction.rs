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
    if reply.code == 530 {
        // "Authentication required" (RFC 4954 §6): we sent mail without the AUTH this
        // upstream wants. Our configuration's fault: defer and alert, never bounce.
        let _ = c.rset().await;
        return Err(TransactError {
            error: AttemptError {
                reason: format!(
                    "upstream requires AUTH ({} {}): set username and password_file",
                    reply.code, reply.message
                ),
                config_fault: true,
            },
            retry_now: false,
        });
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
