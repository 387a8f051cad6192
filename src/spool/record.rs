//! The on-disk form of a segment log (segment.rs): a segment header, then records one after
//! another, each the bytes a `.msg` file holds (file.rs), so `file::decode` reads a record
//! as it reads a file.
//!
//! Segment: `DKIMSEG1` and 8 random salt bytes. Record: `DKR1`, the payload length (u32,
//! little-endian), a CRC-32 of salt, length and payload (u32, little-endian), the payload.
//! The checksum finds a torn or damaged record; the salt keeps a record a client embedded
//! in its message from passing as one when a scan resynchronises after damage (the client
//! cannot know the salt, so its forged checksum fails).

use std::ops::Range;

pub const SEGMENT_MAGIC: &[u8; 8] = b"DKIMSEG1";
/// Bytes of the segment header: magic and salt.
pub const SEGMENT_HEADER: usize = 16;
const RECORD_MAGIC: &[u8; 4] = b"DKR1";
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 12;
/// The longest payload a record may claim: a small message and its envelope (the larger
/// go to files), with room; a damaged length is not believed past it.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// The header of a new segment with `salt`.
pub fn segment_header(salt: u64) -> [u8; SEGMENT_HEADER] {
    let mut out = [0u8; SEGMENT_HEADER];
    out[..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..].copy_from_slice(&salt.to_le_bytes());
    out
}

/// The salt of a segment whose file starts with `bytes`, or None if it is not a segment.
pub fn segment_salt(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..SEGMENT_HEADER)?;
    let salt = header[8..].try_into().ok()?;
    (&header[..8] == SEGMENT_MAGIC).then(|| u64::from_le_bytes(salt))
}

/// A CRC-32 of the payload given in parts, before the salt is known: combined with it by
/// [`record_header`], so the long part of the checksum is computed outside the log's lock.
pub fn payload_crc(parts: &[&[u8]]) -> crc32fast::Hasher {
    let mut crc = crc32fast::Hasher::new();
    for part in parts {
        crc.update(part);
    }
    crc
}

/// The header of a record of `len` payload bytes whose CRC (from [`payload_crc`]) is `crc`.
pub fn record_header(salt: u64, len: u32, crc: &crc32fast::Hasher) -> [u8; RECORD_HEADER] {
    let mut sum = crc32fast::Hasher::new();
    sum.update(&salt.to_le_bytes());
    sum.update(&len.to_le_bytes());
    sum.combine(crc);
    let mut out = [0u8; RECORD_HEADER];
    out[..4].copy_from_slice(RECORD_MAGIC);
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..].copy_from_slice(&sum.finalize().to_le_bytes());
    out
}

/// The payload of the whole record at the start of `bytes`, or None when there is none
/// there (torn, damaged, or not a record).
pub fn record_at(salt: u64, bytes: &[u8]) -> Option<Range<usize>> {
    let header = bytes.get(..RECORD_HEADER)?;
    if &header[..4] != RECORD_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let stored = u32::from_le_bytes(header[8..].try_into().ok()?);
    let end = RECORD_HEADER.checked_add(len as usize)?;
    if len as usize > MAX_PAYLOAD || end > bytes.len() {
        return None;
    }
    let mut sum = crc32fast::Hasher::new();
    sum.update(&salt.to_le_bytes());
    sum.update(&header[4..8]);
    sum.update(&bytes[RECORD_HEADER..end]);
    (sum.finalize() == stored).then_some(RECORD_HEADER..end)
}

/// What a scan of a segment's records found, by offset in the segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A whole record whose payload is at `payload`.
    Record { at: u64, payload: Range<usize> },
    /// Bytes that are no record, followed by a record: damage in the middle.
    Damaged { at: u64, len: usize },
    /// Bytes at the end that are no record: a write cut short by a crash.
    Tail { at: u64, len: usize },
}

/// Every record of a segment's bytes after its header, with the damage between them.
pub fn scan(salt: u64, segment: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut at = SEGMENT_HEADER.min(segment.len());
    while at < segment.len() {
        if let Some(payload) = record_at(salt, &segment[at..]) {
            let next = at + payload.end;
            found.push(Found::Record {
                at: at as u64,
                payload: at + payload.start..next,
            });
            at = next;
            continue;
        }
        // Resynchronise at the next offset where a whole record starts, if any.
        let next = (at + 1..segment.len())
            .filter(|&i| segment[i..].starts_with(RECORD_MAGIC))
            .find(|&i| record_at(salt, &segment[i..]).is_some());
        match next {
            Some(next) => {
                found.push(Found::Damaged {
                    at: at as u64,
                    len: next - at,
                });
                at = next;
            }
            None => {
                found.push(Found::Tail {
                    at: at as u64,
                    len: segment.len() - at,
                });
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(salt: u64, payload: &[u8]) -> Vec<u8> {
        let header = record_header(salt, payload.len() as u32, &payload_crc(&[payload]));
        [&header[..], payload].concat()
    }

    #[test]
    fn a_record_split_in_parts_checks_as_one() {
        let parts: [&[u8]; 2] = [b"head ", b"message"];
        let header = record_header(7, 12, &payload_crc(&parts));
        let bytes = [&header[..], parts[0], parts[1]].concat();
        assert_eq!(record_at(7, &bytes), Some(RECORD_HEADER..bytes.len()));
        // Another segment's salt does not accept it.
        assert_eq!(record_at(8, &bytes), None);
    }

    #[test]
    fn a_scan_finds_damage_in_the_middle_and_a_torn_tail() {
        let salt = 42;
        let mut seg = segment_header(salt).to_vec();
        let a = record(salt, b"first");
        let b = record(salt, b"second");
        let c = record(salt, b"third");
        seg.extend_from_slice(&a);
        let b_at = seg.len();
        seg.extend_from_slice(&b);
        seg.extend_from_slice(&c);
        seg[b_at + RECORD_HEADER + 1] ^= 1;
        let torn = record(salt, b"fourth, cut short");
        seg.extend_from_slice(&torn[..torn.len() - 3]);
        let found = scan(salt, &seg);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(matches!(found[0], Found::Record { at: 16, .. }));
        assert_eq!(
            found[1],
            Found::Damaged {
                at: b_at as u64,
                len: b.len()
            }
        );
        assert!(matches!(found[2], Found::Record { .. }));
        assert!(matches!(found[3], Found::Tail { len, .. } if len == torn.len() - 3));
    }

    #[test]
    fn a_record_embedded_in_a_message_is_not_taken_for_one() {
        // A client that sends a well-formed record with a guessed salt inside its message.
        let salt = 0x5eed;
        let forged = record(0, b"forged envelope");
        let mut outer_payload = b"body: ".to_vec();
        outer_payload.extend_from_slice(&forged);
        let mut seg = segment_header(salt).to_vec();
        let outer = record(salt, &outer_payload);
        seg.extend_from_slice(&outer[..outer.len() - 1]);
        let found = scan(salt, &seg);
        assert_eq!(found.len(), 1);
        assert!(matches!(found[0], Found::Tail { at: 16, .. }));
    }

    /// Fuzz loop (fixed-seed xorshift, so a failure repeats): segments of random records,
    /// then flipped bytes, planted magics, overwritten lengths and cuts. The scan must never
    /// panic, must account for every byte after the header exactly once, in order, and may
    /// only call Record what checks against the salt.
    #[test]
    fn a_damaged_segment_never_panics_the_scan_and_every_byte_is_accounted_for() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let salt = next();
            let mut seg = segment_header(salt).to_vec();
            for _ in 0..next() % 6 {
                let len = (next() % 300) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len > 20 && next() % 3 == 0 {
                    // A record-like run inside the payload, as a client could send.
                    let at = (next() as usize) % (len - 12);
                    payload[at..at + 4].copy_from_slice(RECORD_MAGIC);
                }
                seg.extend_from_slice(&record(salt, &payload));
            }
            for _ in 0..next() % 4 {
                let at = (next() as usize) % seg.len();
                match next() % 4 {
                    0 => seg[at] ^= 1 << (next() % 8),
                    1 if at + 4 <= seg.len() => seg[at..at + 4].copy_from_slice(RECORD_MAGIC),
                    2 if at + 8 <= seg.len() => {
                        seg[at + 4..at + 8].copy_from_slice(&(next() as u32).to_le_bytes())
                    }
                    _ => seg.truncate(at.max(1)),
                }
            }
            let found = scan(salt, &seg);
            let mut expect = SEGMENT_HEADER.min(seg.len());
            for f in &found {
                let (at, end) = match f {
                    Found::Record { at, payload } => {
                        let at = *at as usize;
                        assert_eq!(
                            record_at(salt, &seg[at..payload.end]),
                            Some(RECORD_HEADER..payload.end - at)
                        );
                        (at, payload.end)
                    }
                    Found::Damaged { at, len } | Found::Tail { at, len } => {
                        (*at as usize, *at as usize + len)
                    }
                };
                assert_eq!(at, expect, "{found:?}");
                assert!(end > at && end <= seg.len(), "{found:?}");
                expect = end;
            }
            assert_eq!(expect, seg.len(), "{found:?}");
            let before_last = &found[..found.len().saturating_sub(1)];
            assert!(
                !before_last.iter().any(|f| matches!(f, Found::Tail { .. })),
                "a tail before the end: {found:?}"
            );
        }
    }
}
