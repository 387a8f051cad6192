//! The one place where the relay makes what real hosts send sign-safe instead of refusing
//! it (issue 14 items 2 and 5), before the spool commit and the 250; each repair is logged
//! with the queue id. The rules are in `message::repair` (pure); this file applies them:
//!
//! - header block, at its end: a body-only message gets a From from MAIL FROM; a missing
//!   empty line is added; lines over 998 octets are folded; an unqualified From is
//!   qualified with the network's `qualify_domain`; a private-namespace From is rewritten.
//! - MAIL FROM: a bare user name is qualified the same way (or refused naming the key).
//! - body: scanned as it arrives and held in memory up to [`HOLD`], so that it can be
//!   re-encoded at the end of data when the scan found a line over 998 octets; a larger
//!   body streams into the spool file as it arrives (one file, no copy), and one that
//!   would need a repair is refused naming the fix (the spool has no read-back to
//!   rewrite it file to file).

use super::reply::Refusal;
use crate::config::OriginConfig;
use crate::message::repair::body::{set_qp, Plan, Rewrite, Scan, Unrepairable};
use crate::message::repair::from;
use crate::message::repair::header::{fold_block, has_long_line};
use crate::message::repair::mime::PartType;
use crate::message::{HeaderBlock, Mailbox, PathError, ReversePath};
use crate::spool::{Envelope, Incoming, Spool};
use std::io;

/// Body bytes kept in memory before they stream into the spool file: most mail from cron
/// and scripts fits, and the transfer's memory share pays for it.
pub const HOLD: usize = 64 * 1024;

/// The header block after its repairs, and what to log about them.
pub(super) struct HeaderFix {
    pub block: Vec<u8>,
    pub notes: Vec<String>,
}

/// The repairs of a header block that need no parsing of its fields: a body-only message,
/// a missing empty line, header lines over 998 octets.
pub(super) fn fix_header_section(
    header: &[u8],
    missing_blank: bool,
    mail_from: &ReversePath,
) -> Result<HeaderFix, Refusal> {
    let mut notes = Vec::new();
    let mut block;
    if header.is_empty() || header == b"\r\n" {
        // Postfix's cleanup does the same: the envelope sender is who sent it.
        let Some(sender) = mail_from.mailbox() else {
            return Err(Refusal::NoHeader);
        };
        block = format!("From: {sender}\r\n\r\n").into_bytes();
        notes.push(format!(
            "the message had no header block; added From: {sender} from MAIL FROM"
        ));
        return Ok(HeaderFix { block, notes });
    }
    block = header.to_vec();
    if missing_blank {
        block.extend_from_slice(b"\r\n");
        notes.push("the header block ended at a line that is no header field; added the empty line before it".into());
    }
    if has_long_line(&block) {
        block = fold_block(&block).map_err(|_| Refusal::HeaderLineUnfoldable)?;
        notes.push("folded header lines over 998 octets at their whitespace".into());
    }
    Ok(HeaderFix { block, notes })
}

/// A From value with a bare user or host name, qualified with the network's domain; the
/// note says what it was.
pub(super) fn qualify_from(
    value: &[u8],
    origin: Option<&OriginConfig>,
) -> Option<(Vec<u8>, String)> {
    let domain = origin?.qualify_domain.as_deref()?;
    let (new, old) = from::qualify(value, domain)?;
    let note = format!("qualified the From address {old} with qualify_domain {domain}");
    Some((new, note))
}

/// A MAIL FROM path, qualified when it is a bare user name or `user@host` without a dot
/// and the network has a `qualify_domain`. Without one a bare name is refused naming the
/// fix and `user@host` is relayed unchanged.
pub(super) fn qualify_sender(
    read: Result<ReversePath, PathError>,
    proto_address: &str,
    origin: Option<&OriginConfig>,
) -> Result<ReversePath, Result<Refusal, PathError>> {
    let domain = origin.and_then(|o| o.qualify_domain.as_deref());
    let unqualified = match (&read, domain) {
        // `user@host` without a dot: qualified when the network says how, else relayed
        // as before. Postfix accepts it too (reject_non_fqdn_sender is off by default);
        // the envelope sender picks no key and only loses its bounces.
        (Ok(ReversePath::Mailbox(m)), Some(_)) if !m.domain().contains('.') => m.unquoted(),
        (Err(PathError::NoDomain), _) if !proto_address.contains('@') => proto_address.to_string(),
        _ => return read.map_err(Err),
    };
    let Some(domain) = domain else {
        return Err(Ok(Refusal::UnqualifiedSender));
    };
    let qualified = from::qualify_path(&unqualified, domain)
        .and_then(|a| Mailbox::parse(&a).ok())
        .ok_or(Err(read.err().unwrap_or(PathError::NoDomain)))?;
    tracing::info!(sender = %unqualified, qualified = %qualified, "qualified the envelope sender with qualify_domain");
    Ok(ReversePath::Mailbox(qualified))
}

/// A private-namespace From replaced by the network's `rewrite_from` (item 5).
pub(super) struct PrivateRewrite {
    /// The header block with the new From address.
    pub block: Vec<u8>,
    /// The address it had (for Reply-To and the log).
    pub old: String,
    pub to: String,
    /// The message has no Reply-To: one with the old address is added.
    pub add_reply_to: bool,
}

/// The rewrite of `block`'s From when its `domain` is one of the network's
/// `private_domains` (as Postfix's smtp_generic_maps does on the host); the display name
/// and comments stay. `headers` is `block` parsed.
pub(super) fn rewrite_private_from(
    block: &[u8],
    headers: &HeaderBlock<'_>,
    origin: Option<&OriginConfig>,
    domain: &str,
) -> Option<PrivateRewrite> {
    let origin = origin.filter(|o| o.is_private(domain))?;
    let to = origin.rewrite_from.as_deref()?;
    let field = headers.all("From").next()?;
    let (value, old) = from::replace(field.value, to)?;
    Some(PrivateRewrite {
        block: replace_in(block, field.value, &value),
        old,
        to: to.to_string(),
        add_reply_to: headers.all("Reply-To").next().is_none(),
    })
}

/// What [`bare_mail_line`] made of a command line.
pub(super) enum BareSender {
    /// Not `MAIL FROM:<name>` with a bare name: read as it is.
    No,
    /// The line with the name qualified.
    Qualified(Vec<u8>),
    /// A bare name and no `qualify_domain` for the network.
    Refused,
}

/// `MAIL FROM:<root>` (a bare user name, which the command parser would refuse as a
/// syntax error) with the name qualified before the line is parsed.
pub(super) fn bare_mail_line(line: &[u8], origin: Option<&OriginConfig>) -> BareSender {
    let Some(head) = line.get(..10) else {
        return BareSender::No;
    };
    if !head.eq_ignore_ascii_case(b"MAIL FROM:") {
        return BareSender::No;
    }
    let rest = line[10..].trim_ascii_start();
    let Some(inner) = rest.strip_prefix(b"<") else {
        return BareSender::No;
    };
    let Some(close) = inner.iter().position(|&b| b == b'>') else {
        return BareSender::No;
    };
    let name = &inner[..close];
    let bare = !name.is_empty()
        && std::str::from_utf8(name).is_ok_and(crate::message::address::is_dot_atom);
    if !bare {
        return BareSender::No;
    }
    let Some(domain) = origin.and_then(|o| o.qualify_domain.as_deref()) else {
        return BareSender::Refused;
    };
    let mut out = b"MAIL FROM:<".to_vec();
    out.extend_from_slice(name);
    out.push(b'@');
    out.extend_from_slice(domain.as_bytes());
    out.extend_from_slice(&inner[close..]);
    tracing::info!(sender = %String::from_utf8_lossy(name), qualify_domain = %domain, "qualified a bare envelope sender name with qualify_domain");
    BareSender::Qualified(out)
}

/// `value` (a slice of `block`) replaced by `new`.
pub(super) fn replace_in(block: &[u8], value: &[u8], new: &[u8]) -> Vec<u8> {
    let start = (value.as_ptr() as usize).saturating_sub(block.as_ptr() as usize);
    let end = (start + value.len()).min(block.len());
    let mut out = Vec::with_capacity(block.len() + new.len());
    out.extend_from_slice(&block[..start]);
    out.extend_from_slice(new);
    out.extend_from_slice(&block[end..]);
    out
}

/// The body of a message on its way in: scanned as it arrives, and held in memory up to
/// [`HOLD`] so that a repair can still change it (and the header's transfer encoding).
/// Past that it streams into the spool file as before; the spool's API has no read-back,
/// so a larger message that needs a repair is refused naming the fix.
pub(super) struct BodyRepair {
    /// None once [`BodyRepair::verdict`] finished it into `plan`.
    scan: Option<Scan>,
    plan: Plan,
    top: PartType,
    line_cap: usize,
    held: Vec<u8>,
    /// The spool file, once the body outgrew the hold.
    direct: Option<Incoming>,
}

impl BodyRepair {
    pub fn new(top: PartType, line_cap: usize) -> BodyRepair {
        BodyRepair {
            scan: Some(Scan::new(top.clone(), line_cap)),
            plan: Plan::default(),
            top,
            line_cap,
            held: Vec::new(),
            direct: None,
        }
    }

    /// Takes body bytes; past [`HOLD`] the spool file is begun with `head` (what the
    /// relay adds and the header block) and everything goes there.
    pub async fn write(
        &mut self,
        spool: &Spool,
        envelope: &Envelope,
        head: &[u8],
        bytes: &[u8],
    ) -> io::Result<()> {
        if let Some(scan) = &mut self.scan {
            scan.feed(bytes);
        }
        if let Some(file) = &mut self.direct {
            return file.write(bytes).await;
        }
        if self.held.len() + bytes.len() <= HOLD {
            self.held.extend_from_slice(bytes);
            return Ok(());
        }
        let mut file = spool.begin(envelope).await?;
        file.write(head).await?;
        file.write(&std::mem::take(&mut self.held)).await?;
        file.write(bytes).await?;
        self.direct = Some(file);
        Ok(())
    }

    /// Ends the scan: why the body cannot be repaired, if it cannot.
    pub fn verdict(&mut self) -> Option<Unrepairable> {
        if let Some(scan) = self.scan.take() {
            self.plan = scan.finish();
        }
        match self.plan.problem {
            Some(p) => Some(p),
            None if self.direct.is_some() && self.plan.needs_rewrite() => {
                Some(Unrepairable::TooLarge)
            }
            None => None,
        }
    }

    /// The spool file with the whole message in it, repaired as the plan says; and what
    /// was repaired, for the log. Call after [`BodyRepair::verdict`] found nothing.
    pub async fn finish(
        mut self,
        spool: &Spool,
        envelope: &Envelope,
        head: &[u8],
    ) -> io::Result<(Incoming, Vec<String>)> {
        self.verdict();
        if let Some(file) = self.direct.take() {
            return Ok((file, Vec::new()));
        }
        let plan = std::mem::take(&mut self.plan);
        let mut file = spool.begin(envelope).await?;
        let mut notes = Vec::new();
        if plan.reencode.contains(&0) {
            let end = head.len().saturating_sub(2);
            let mut fixed = set_qp(&head[..end]);
            if !has_field(&head[..end], b"MIME-Version") {
                fixed.extend_from_slice(b"MIME-Version: 1.0\r\n");
            }
            fixed.extend_from_slice(b"\r\n");
            file.write(&fixed).await?;
            notes.push(
                "re-encoded the body as quoted-printable (a line was over 998 octets)".to_string(),
            );
        } else {
            file.write(head).await?;
        }
        let parts = plan.reencode.iter().filter(|i| **i > 0).count();
        if parts > 0 {
            notes.push(format!(
                "re-encoded {parts} MIME part(s) as quoted-printable (a line was over 998 octets)"
            ));
        }
        if !plan.fold.is_empty() {
            notes.push("folded MIME part header lines over 998 octets".into());
        }
        if plan.long_boundaries > 0 {
            notes.push("dropped the padding of MIME boundary lines over 998 octets".into());
        }
        if plan.needs_rewrite() {
            let mut rw = Rewrite::new(self.top.clone(), self.line_cap, &plan);
            rw.feed(&self.held);
            rw.finish();
            file.write(&rw.out).await?;
        } else {
            file.write(&self.held).await?;
        }
        Ok((file, notes))
    }
}

fn has_field(block: &[u8], name: &[u8]) -> bool {
    block.split(|&b| b == b'\n').any(|l| {
        l.len() > name.len()
            && l[..name.len()].eq_ignore_ascii_case(name)
            && l[name.len()..].trim_ascii_start().starts_with(b":")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(qualify: Option<&str>) -> OriginConfig {
        OriginConfig {
            networks: vec!["127.0.0.0/8".parse().unwrap()],
            qualify_domain: qualify.map(str::to_string),
            private_domains: Vec::new(),
            rewrite_from: None,
        }
    }

    #[test]
    fn a_bare_mail_from_line_is_qualified_with_its_parameters_kept() {
        let o = origin(Some("example.com"));
        for (line, want) in [
            (
                &b"MAIL FROM:<root>\r\n"[..],
                &b"MAIL FROM:<root@example.com>\r\n"[..],
            ),
            (
                b"mail from: <cron.daily> SIZE=10\r\n",
                b"MAIL FROM:<cron.daily@example.com> SIZE=10\r\n",
            ),
        ] {
            match bare_mail_line(line, Some(&o)) {
                BareSender::Qualified(l) => assert_eq!(l, want),
                _ => panic!("{}", String::from_utf8_lossy(line)),
            }
        }
        for line in [
            &b"MAIL FROM:<>\r\n"[..],
            b"MAIL FROM:<root@example.org>\r\n",
            b"MAIL FROM:<ro ot>\r\n",
            b"MAIL FROM:<\"root\">\r\n",
            b"MAIL FROM:<root\r\n",
            b"RCPT TO:<root>\r\n",
            b"MAIL FROM:<a..b>\r\n",
        ] {
            assert!(
                matches!(bare_mail_line(line, Some(&o)), BareSender::No),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(matches!(
            bare_mail_line(b"MAIL FROM:<root>\r\n", Some(&origin(None))),
            BareSender::Refused
        ));
        assert!(matches!(
            bare_mail_line(b"MAIL FROM:<root>\r\n", None),
            BareSender::Refused
        ));
    }

    #[test]
    fn header_section_repairs() {
        let sender = ReversePath::Mailbox(Mailbox::parse("cron@example.com").unwrap());
        let fix = fix_header_section(b"", true, &sender).unwrap();
        assert_eq!(fix.block, b"From: cron@example.com\r\n\r\n");
        assert!(matches!(
            fix_header_section(b"\r\n", false, &ReversePath::Null),
            Err(Refusal::NoHeader)
        ));
        let fix = fix_header_section(b"Subject: x\r\n", true, &sender).unwrap();
        assert_eq!(fix.block, b"Subject: x\r\n\r\n");
        let long = format!("X-A: {}\r\n\r\n", "a".repeat(1200));
        assert!(matches!(
            fix_header_section(long.as_bytes(), false, &sender),
            Err(Refusal::HeaderLineUnfoldable)
        ));
    }
}
