//! Reading the segment log back at start (and, read-only, for an attached spool): every
//! segment's records minus its done marks becomes the index (segment.rs).
//!
//! What a scan finds besides records (record.rs): a torn tail (a write a crash cut short:
//! never answered 250, since its fdatasync had not returned) is dropped and logged, and the
//! segment is never appended to again (each start opens a new one); a damaged record in the
//! middle (whole records follow it) is copied to `corrupt/`, logged, and marked done as
//! `@<offset>` so it is set aside once, never delivered. A segment with nothing left to
//! deliver is deleted, and marks without their log (a delete cut short) are removed.

use super::dirsync::{DirSync, SyncCounts};
use super::file;
use super::index::{Log, Open, Place};
use super::record::{self, Found, SEGMENT_HEADER};
use super::segment_file::{done_name, log_name, number_of, Segment};
use crate::fsutil::read_nofollow;
use std::collections::{BTreeSet, HashSet};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the relay that owns the spool does with what it finds; an attached reader only reads.
struct Owner<'a> {
    corrupt: &'a Path,
}

/// The index of the segments in `queue`, cleaning up as the owner: quarantining damaged
/// records into `corrupt`, deleting delivered segments and stray marks.
pub(super) fn load(queue: &Path, corrupt: &Path, counts: &Arc<SyncCounts>) -> io::Result<Log> {
    scan_dir(queue, Some(Owner { corrupt }), counts)
}

/// The index of the segments in `queue`, touching nothing (a relay may be appending).
pub(super) fn read_only(queue: &Path) -> io::Result<Log> {
    scan_dir(queue, None, &Arc::default())
}

fn scan_dir(queue: &Path, owner: Option<Owner>, counts: &Arc<SyncCounts>) -> io::Result<Log> {
    let (mut logs, mut marks) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(queue)? {
        let name = entry?.file_name();
        match number_of(&name.to_string_lossy()) {
            Some((n, true)) => logs.insert(n),
            Some((n, false)) => marks.insert(n),
            None => false,
        };
    }
    let mut log = Log {
        next: logs.iter().chain(&marks).max().map_or(0, |n| n + 1),
        ..Log::default()
    };
    if owner.is_some() {
        for n in marks.difference(&logs) {
            let _ = std::fs::remove_file(queue.join(done_name(*n)));
        }
    }
    for n in logs {
        match load_segment(queue, n, owner.as_ref(), counts, &mut log) {
            Ok(()) => {}
            // Deleted meanwhile (an attached reader while the relay delivers): nothing to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Unreadable (a symlink planted under its name, a permission changed): its
            // messages are not delivered, and it does not stop the relay either.
            Err(e) => {
                tracing::error!(file = %log_name(n), error = %e, "cannot read a spool segment; its messages will not be delivered until it can be read")
            }
        }
    }
    Ok(log)
}

/// Done marks of a segment: delivered queue ids and offsets of damaged records set aside.
/// Only whole lines count: a mark cut short by a crash matches nothing.
fn read_marks(queue: &Path, n: u64) -> (HashSet<String>, HashSet<u64>) {
    let bytes = read_nofollow(&queue.join(done_name(n))).unwrap_or_default();
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&bytes[..0], |end| &bytes[..end]);
    let (mut ids, mut damaged) = (HashSet::new(), HashSet::new());
    for line in String::from_utf8_lossy(whole).lines() {
        match line.strip_prefix('@') {
            Some(at) => {
                damaged.extend(at.parse::<u64>().ok());
            }
            None => {
                ids.insert(line.to_string());
            }
        }
    }
    (ids, damaged)
}

fn load_segment(
    queue: &Path,
    n: u64,
    owner: Option<&Owner>,
    counts: &Arc<SyncCounts>,
    log: &mut Log,
) -> io::Result<()> {
    let name = log_name(n);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(queue.join(&name))?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut &file, &mut bytes)?;
    let seg = |salt| Segment {
        number: n,
        salt,
        file,
        queue: queue.to_path_buf(),
        sync: DirSync::counting_in(counts.clone()),
        done: Mutex::new(None),
    };
    let Some(salt) = record::segment_salt(&bytes) else {
        if let Some(owner) = owner {
            if bytes.len() <= SEGMENT_HEADER {
                // Cut short while it was made, before any record could be appended to it.
                tracing::info!(file = %name, "removing a spool segment a crash left unfinished");
                seg(0).delete();
            } else {
                tracing::error!(file = %name, dir = %owner.corrupt.display(), "spool segment has no valid header; moved aside, its messages will not be delivered");
                if let Err(e) = std::fs::rename(queue.join(&name), owner.corrupt.join(&name)) {
                    tracing::error!(file = %name, error = %e, "cannot move the damaged segment aside");
                }
            }
        }
        return Ok(());
    };
    let seg = Arc::new(seg(salt));
    let (done_ids, done_damaged) = read_marks(queue, n);
    let mut live = 0;
    for found in record::scan(salt, &bytes) {
        match found {
            Found::Record { at, payload } if !done_damaged.contains(&at) => {
                match file::decode(&bytes[payload.clone()]) {
                    Ok((envelope, _)) if done_ids.contains(envelope.id.as_str()) => {}
                    Ok((envelope, _)) if log.index.contains_key(&envelope.id) => {
                        tracing::warn!(queue_id = %envelope.id, file = %name, "a queue id found twice in the spool; delivering the first");
                    }
                    Ok((envelope, _)) => {
                        let len = payload.len() as u32;
                        log.index.insert(
                            envelope.id,
                            Place {
                                segment: n,
                                at,
                                len,
                            },
                        );
                        live += 1;
                    }
                    Err(reason) => {
                        let whole = &bytes[at as usize..payload.end];
                        set_aside(owner, &seg, at, whole, &reason);
                    }
                }
            }
            Found::Record { .. } => {}
            Found::Damaged { at, len } if !done_damaged.contains(&at) => {
                let whole = &bytes[at as usize..at as usize + len];
                set_aside(owner, &seg, at, whole, "fails its checksum");
            }
            Found::Damaged { .. } => {}
            Found::Tail { at, len } => {
                if owner.is_some() {
                    tracing::warn!(file = %name, offset = at, bytes = len, "dropping a torn write at the end of a spool segment (cut short by a crash, never answered 250)");
                }
            }
        }
    }
    if live == 0 && owner.is_some() {
        seg.delete();
        return Ok(());
    }
    let end = bytes.len() as u64;
    log.segments.insert(n, Open { seg, live, end });
    Ok(())
}

/// A damaged record in the middle of a segment: copied to `corrupt/`, logged, marked done.
fn set_aside(owner: Option<&Owner>, seg: &Segment, at: u64, bytes: &[u8], reason: &str) {
    let Some(owner) = owner else { return };
    let name = format!("segment-{}-at-{at}.record", seg.number);
    tracing::error!(file = %log_name(seg.number), offset = at, reason, dir = %owner.corrupt.display(), "damaged spool record moved aside; it will not be delivered");
    let kept = crate::fsutil::write_atomic(owner.corrupt, &name, &[bytes], 0o600, true);
    if let Err(e) = kept {
        // Not marked, so the next start tries again; it is never delivered either way.
        tracing::error!(file = %name, error = %e, "cannot copy the damaged record aside");
        return;
    }
    if let Err(e) = seg.mark_done(&format!("@{at}")) {
        tracing::error!(file = %log_name(seg.number), error = %e, "cannot mark the damaged record set aside");
    }
}
