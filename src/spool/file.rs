//! The on-disk form of a spooled message:
//! `DKIMRELAY1 <envelope length> <message length>\n<envelope JSON><message bytes>`.
//! Both lengths are checked on reading, so a truncated or damaged file is recognised.
//!
//! A message streamed in as it arrives has no known length when its first bytes are
//! written, so its head is reserved ([`reserve_head`]) and written last, in place, at the
//! same width ([`fill_head`]): the message length is zero-padded to 20 digits and the JSON
//! padded with spaces (JSON allows trailing white space). The reader needs no second form.

use super::Envelope;
use std::io;

const MAGIC: &str = "DKIMRELAY1";

/// The header line and envelope JSON that precede a message of `message_len` bytes; the
/// message itself is written after it as it is, so a large message is never copied.
pub fn encode_head(envelope: &Envelope, message_len: usize) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    let mut out = format!("{MAGIC} {} {message_len}\n", json.len()).into_bytes();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Digits of the largest u64: the reserved width of the message length.
const LEN_DIGITS: usize = 20;

/// The head of a streamed message, reserved before its length is known.
#[derive(Debug, Clone, Copy)]
pub struct ReservedHead {
    json_room: usize,
}

impl ReservedHead {
    /// Room for `envelope`'s head whatever the fields that are set at the end (`received`,
    /// `size`, `eight_bit`) turn out to be: they are measured at their widest.
    pub fn for_envelope(envelope: &Envelope) -> io::Result<ReservedHead> {
        let widest = Envelope {
            received: u64::MAX,
            size: u64::MAX,
            eight_bit: false,
            ..envelope.clone()
        };
        let json_room = serde_json::to_vec(&widest).map_err(io::Error::other)?.len();
        Ok(ReservedHead { json_room })
    }

    /// Bytes before the message.
    pub fn len(&self) -> usize {
        head_line(self.json_room, 0).len() + self.json_room
    }

    /// The head for `envelope` (whose `size` is the message length), exactly
    /// [`ReservedHead::len`] bytes long.
    pub fn fill(&self, envelope: &Envelope) -> io::Result<Vec<u8>> {
        let json = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        if json.len() > self.json_room {
            return Err(io::Error::other(
                "envelope outgrew the space reserved for it",
            ));
        }
        let mut out = head_line(self.json_room, envelope.size);
        out.extend_from_slice(&json);
        out.resize(self.len(), b' ');
        Ok(out)
    }
}

fn head_line(json_len: usize, message_len: u64) -> Vec<u8> {
    format!("{MAGIC} {json_len} {message_len:0LEN_DIGITS$}\n").into_bytes()
}

/// Returns the envelope and the offset of the message bytes.
pub fn decode(bytes: &[u8]) -> Result<(Envelope, usize), String> {
    let nl = bytes
        .iter()
        .take(64)
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let head = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header line is not text")?;
    let mut parts = head.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err("not a dkim-relay spool file".into());
    }
    let mut number = || -> Result<usize, String> {
        parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| "header line lacks a length".to_string())
    };
    let (json_len, msg_len) = (number()?, number()?);
    let json_start = nl + 1;
    let msg_start = json_start.checked_add(json_len).ok_or("length overflow")?;
    if msg_start.checked_add(msg_len) != Some(bytes.len()) {
        return Err(format!(
            "file is {} bytes, header promises {}",
            bytes.len(),
            msg_start.saturating_add(msg_len)
        ));
    }
    let envelope: Envelope = serde_json::from_slice(&bytes[json_start..msg_start])
        .map_err(|e| format!("envelope: {e}"))?;
    if envelope.size != msg_len as u64 {
        return Err("envelope size does not match the message".into());
    }
    Ok((envelope, msg_start))
}
