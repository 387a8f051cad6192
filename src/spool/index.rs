//! The segment log's index in memory (segment.rs): where each queued message's record is,
//! and how many undelivered messages each segment holds, which decides when it is deleted.
//! Rebuilt from the segments and their done marks at start (recover.rs).

use super::segment_file::Segment;
use super::QueueId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The index: where each queued message is, and each segment's live count.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// The number the next new segment gets: above every segment and mark file seen.
    pub next: u64,
    /// The segment being appended to; None until the first append after a start.
    pub current: Option<u64>,
    pub segments: BTreeMap<u64, Open>,
    pub index: HashMap<QueueId, Place>,
}

/// A segment with messages not yet delivered (or the current one).
#[derive(Debug)]
pub(super) struct Open {
    pub seg: Arc<Segment>,
    pub live: usize,
    /// Where the next record goes (the current segment) or the end of what was loaded.
    pub end: u64,
}

/// Where a queued message's record is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    pub segment: u64,
    /// Offset of the record (its header) in the segment.
    pub at: u64,
    /// Bytes of its payload.
    pub len: u32,
}
