//! Delivery status notifications (RFC 3464): what the envelope sender gets when a message
//! fails permanently, expires, or (optionally) has been delayed a while.
//!
//! A DSN is an ordinary spooled message with `MAIL FROM:<>` and [`Origin::Bounce`]: it
//! is queued, retried and signed like any other. Its From is `MAILER-DAEMON@<hostname>`;
//! it is signed for the hostname, or for the closest parent domain that has keys (DMARC
//! relaxed alignment accepts that). When no such domain has keys it goes unsigned: DESIGN
//! forbids unsigned mail only for a domain that has keys, and a lost bounce is worse.

use crate::dkim::{KeyLookup, KeyRing};
use crate::message::rfc5322_date;
use crate::spool::{DeliveryState, Envelope, Origin, Problem, QueueId, RcptStatus};
use std::net::{IpAddr, Ipv4Addr};

/// Which report to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Some recipients failed for good (5xx or expiry).
    Failed,
    /// Still trying; a warning only (`Action: delayed`).
    Delayed,
}

/// A DSN ready for the spool.
pub struct Dsn {
    pub envelope: Envelope,
    pub message: Vec<u8>,
}

/// The domain a DSN is signed for: the hostname or its closest parent with keys; the
/// hostname itself when none has keys (the DSN then goes unsigned).
pub fn signing_domain(hostname: &str, keys: &KeyRing) -> String {
    let host = crate::domain::normalise(hostname);
    let mut candidate = host.as_str();
    loop {
        if !matches!(keys.lookup(candidate), KeyLookup::Unknown) {
            return candidate.to_string();
        }
        match candidate.split_once('.') {
            // Stop before a bare top-level domain.
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => return host,
        }
    }
}

/// Builds the DSN for `original` (its envelope, state and header block) at `now`.
pub fn build(
    kind: DsnKind,
    hostname: &str,
    signing_domain: &str,
    original: &Envelope,
    state: &DeliveryState,
    original_headers: &[u8],
    now: u64,
) -> Dsn {
    let id = QueueId::generate(std::time::UNIX_EPOCH + std::time::Duration::from_secs(now));
    let boundary = format!("{id}/{hostname}");
    let (subject, intro) = match kind {
        DsnKind::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients. It has been\r\n\
             given up on; the details are below.",
        ),
        DsnKind::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to one or more recipients. This is a\r\n\
             warning only: delivery is still being retried. You need not send it again.",
        ),
    };
    let mut human = format!(
        "This is the mail system at {hostname}.\r\n\r\n{intro}\r\n\r\n\
         Queue id {}, received {}.\r\n\r\n",
        original.id,
        rfc5322_date(original.received)
    );
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        original.id,
        rfc5322_date(original.received)
    );
    for (i, rcpt) in original.rcpts.iter().enumerate() {
        let (action, problem) = match (kind, state.rcpts.get(i)) {
            (DsnKind::Failed, Some(RcptStatus::Failed)) => ("failed", state.failures.get(&i)),
            (DsnKind::Delayed, Some(RcptStatus::Pending)) => ("delayed", state.last_error.as_ref()),
            _ => continue,
        };
        let fallback = match kind {
            DsnKind::Failed => "no reason recorded",
            DsnKind::Delayed => "not yet tried",
        };
        let reason = one_line(problem.map_or(fallback, |p| p.text.as_str()));
        human.push_str(&format!("<{rcpt}>: {reason}\r\n"));
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {}\r\n{}\r\n",
            status_code(kind, problem),
            diagnostic(problem, &reason)
        ));
    }
    let headers = header_block(original_headers);
    let message = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         {human}\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         {status}\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Headers of the original message\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n",
        to = original.mail_from,
        date = rfc5322_date(now),
    );
    let mut message = message.into_bytes();
    message.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let envelope = Envelope {
        id,
        received: now,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: hostname.to_string(),
        mail_from: String::new(),
        rcpts: vec![original.mail_from.clone()],
        from_domain: signing_domain.to_string(),
        size: message.len() as u64,
        eight_bit: message.iter().any(|&b| b >= 0x80),
        origin: Origin::Bounce,
        // A UTF-8 sender (RFC 6531) is the DSN's recipient and its To field: the DSN
        // then needs SMTPUTF8 as the original did. The original's header fields are
        // in the body (text/rfc822-headers), which 8BITMIME or quoted-printable carries.
        utf8: crate::spool::Utf8Use {
            requested: false,
            headers: !original.mail_from.is_ascii(),
            addresses: !original.mail_from.is_ascii(),
        },
    };
    Dsn { envelope, message }
}

/// The header block of a message, up to (not including) the empty line.
fn header_block(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// A reason as one line of printable text, short enough for a header field.
fn one_line(reason: &str) -> String {
    let mut line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 900 {
        let mut cut = 900;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// RFC 3463 status: what the verdict recorded (the upstream's enhanced code, or 4.4.7 for
/// an expired message) when it fits the report, else the kind's generic one.
fn status_code(kind: DsnKind, problem: Option<&Problem>) -> String {
    let class = match kind {
        DsnKind::Failed => '5',
        DsnKind::Delayed => '4',
    };
    let recorded = problem.and_then(|p| p.status.as_deref());
    match (kind, recorded) {
        (_, Some(status)) if status.starts_with(class) => status.to_string(),
        // An expired message failed for good after temporary errors (RFC 3463 §3.5).
        (DsnKind::Failed, Some(status)) if status == "4.4.7" => status.to_string(),
        (DsnKind::Failed, _) => "5.0.0".into(),
        (DsnKind::Delayed, _) => "4.0.0".into(),
    }
}

/// `Diagnostic-Code:` with the upstream's reply when there was one, else our reason.
fn diagnostic(problem: Option<&Problem>, reason: &str) -> String {
    if problem.is_some_and(|p| p.smtp) {
        format!("Diagnostic-Code: smtp; {reason}")
    } else {
        format!("Diagnostic-Code: X-dkim-relay; {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: Option<&str>, text: &str, smtp: bool) -> Problem {
        Problem {
            status: status.map(str::to_string),
            text: text.into(),
            smtp,
        }
    }

    #[test]
    fn status_comes_from_the_recorded_problem_or_a_generic_code() {
        let p = problem(Some("5.1.1"), "550 5.1.1 no such user", true);
        assert_eq!(status_code(DsnKind::Failed, Some(&p)), "5.1.1");
        assert!(diagnostic(Some(&p), &p.text).starts_with("Diagnostic-Code: smtp; 550"));
        let p = problem(None, "554 rejected", true);
        assert_eq!(status_code(DsnKind::Failed, Some(&p)), "5.0.0");
        let p = problem(
            Some("4.4.7"),
            "expired after 9 attempts; last error: 451 4.3.0 x",
            false,
        );
        assert_eq!(status_code(DsnKind::Failed, Some(&p)), "4.4.7");
        assert!(diagnostic(Some(&p), &p.text).starts_with("Diagnostic-Code: X-dkim-relay; "));
        let p = problem(Some("4.3.0"), "451 4.3.0 later", true);
        assert_eq!(status_code(DsnKind::Delayed, Some(&p)), "4.3.0");
        let p = problem(None, "connection error", false);
        assert_eq!(status_code(DsnKind::Delayed, Some(&p)), "4.0.0");
        assert_eq!(status_code(DsnKind::Delayed, None), "4.0.0");
    }

    #[test]
    fn reasons_become_one_safe_line() {
        assert_eq!(one_line("550 a\r\nb"), "550 a  b");
        assert_eq!(one_line(&"é".repeat(600)).len(), 900);
    }
}
