//! The on-disk form of a spooled message:
//! `DKIMRELAY1 <envelope length> <message length>\n<envelope JSON><message bytes>`.
//! Both lengths are checked on reading, so a truncated or damaged file is recognised.

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
