//! The data of one message as it arrives, after the DATA reader (`data.rs`) has undone the
//! SMTP framing: the header block is gathered in memory, bounded by `max_header_size`
//! while it is read (a huge header block is refused without being buffered), because the
//! message policy reads it; once it ends, the policy runs (`accept.rs`) and the rest
//! streams to the spool's temp file. Its memory comes out of the global budget
//! (`smtp.max_data_memory`): a fixed share taken at DATA, more for a large header block.

use super::reply::Refusal;
use crate::spool::{Envelope, MemoryLease, HEADER_STEP};

pub(super) struct Receiver {
    /// The header block, up to and including its empty line.
    pub header: Vec<u8>,
    /// Where the first header line not yet read as complete begins.
    scanned: usize,
    /// The header block ended at a line that is no header field, not at an empty line
    /// (msmtp and scripts write such mail): the repair adds the empty line.
    pub missing_blank: bool,
    /// Body bytes that were gathered as header before the block turned out to end
    /// earlier; the caller writes them before the rest of the piece.
    pub carry: Vec<u8>,
    max_header: usize,
    /// Header bytes the lease pays for.
    header_room: usize,
    lease: MemoryLease,
    pub stage: Stage,
}

pub(super) enum Stage {
    /// Gathering the header block.
    Header,
    /// The header block passed the policy; the message is going into the spool.
    Body(Box<Spooling>),
    /// Nothing more is kept; the message will be refused for this reason (`None`: for
    /// the DATA reader's own, which are checked first at the end).
    Discard(Option<Refused>),
}

/// A message on its way into the spool.
pub(super) struct Spooling {
    /// The envelope to commit, all but its final size, time and 8-bit flag.
    pub envelope: Envelope,
    /// What the relay adds and the header block: written into the spool file at the end
    /// of data, since a body repair may still change its Content-Transfer-Encoding.
    pub head: Vec<u8>,
    /// The body, scanned and held until the end of data (`repair.rs`).
    pub body: super::repair::BodyRepair,
}

/// Why a message will be refused, found before its end.
pub(super) struct Refused {
    pub refusal: Refusal,
    /// For the log.
    pub why: String,
}

impl Refused {
    pub fn new(refusal: Refusal, why: impl Into<String>) -> Refused {
        Refused {
            refusal,
            why: why.into(),
        }
    }
}

/// What [`Receiver::take`] made of a piece of data.
pub(super) enum Taken {
    /// All of it was used (header bytes kept, or dropped by a refusal).
    Used,
    /// The header block ended; the piece's bytes from this index on are body.
    HeaderEnded(usize),
    /// All of it is body.
    Body,
}

impl Receiver {
    pub fn new(lease: MemoryLease, header_room: usize, max_header: usize) -> Receiver {
        Receiver {
            header: Vec::new(),
            scanned: 0,
            missing_blank: false,
            carry: Vec::new(),
            max_header,
            header_room,
            lease,
            stage: Stage::Header,
        }
    }

    /// Takes a piece of the message as it arrives.
    pub fn take(&mut self, piece: &[u8]) -> Taken {
        match self.stage {
            Stage::Header => self.take_header(piece),
            Stage::Body(_) => Taken::Body,
            Stage::Discard(_) => Taken::Used,
        }
    }

    fn take_header(&mut self, piece: &[u8]) -> Taken {
        let old = self.header.len();
        // Never more than the limit: the byte past it shows the block is too big.
        let take = piece.len().min(self.max_header - old);
        if !self.room_for(old + take) {
            self.drop_all(Refused::new(
                Refusal::NoDataMemory,
                "no memory budget left for the header block",
            ));
            return Taken::Used;
        }
        self.header.extend_from_slice(&piece[..take]);
        match header_end(&self.header, &mut self.scanned) {
            Some((end, missing_blank)) => {
                self.missing_blank = missing_blank;
                let at = if end < old {
                    self.carry = self.header[end..old].to_vec();
                    0
                } else {
                    end - old
                };
                self.header.truncate(end);
                Taken::HeaderEnded(at)
            }
            None if take < piece.len() => {
                self.drop_all(Refused::new(Refusal::HeaderTooBig, "header block too big"));
                Taken::Used
            }
            None => Taken::Used,
        }
    }

    /// Grows the header buffer (and the lease) to hold `len` bytes, in budget steps.
    fn room_for(&mut self, len: usize) -> bool {
        while len > self.header_room {
            if !self.lease.try_grow(HEADER_STEP) {
                return false;
            }
            self.header_room += HEADER_STEP as usize;
        }
        // Exact, so the buffer never holds more than the lease pays for.
        self.header
            .reserve_exact(len.saturating_sub(self.header.len()));
        true
    }

    /// Stops keeping anything: the file (if any) is removed, the header block freed.
    pub fn drop_all(&mut self, why: Refused) {
        self.discard(Some(why));
    }

    /// [`Receiver::drop_all`] for a refusal the DATA reader itself will give.
    pub fn discard(&mut self, why: Option<Refused>) {
        self.header = Vec::new();
        self.stage = Stage::Discard(why);
    }
}

/// The end of a header block gathered so far, read line by line from `scanned` (which
/// moves past the complete field lines): just past its empty line (false), or at the
/// start of the first line that is no header field (true: the empty line is missing;
/// at 0 there is no header at all).
fn header_end(header: &[u8], scanned: &mut usize) -> Option<(usize, bool)> {
    use crate::message::repair::header::{line_kind, LineKind};
    loop {
        let start = *scanned;
        let len = header[start..].windows(2).position(|w| w == b"\r\n")?;
        match line_kind(&header[start..start + len]) {
            LineKind::Empty => return Some((start + len + 2, false)),
            LineKind::Field => {}
            LineKind::Continuation if start > 0 => {}
            LineKind::Continuation | LineKind::Other => return Some((start, true)),
        }
        *scanned = start + len + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemoryBudget;
    use std::time::Duration;

    async fn receiver(budget: &MemoryBudget, max_header: usize) -> Receiver {
        let lease = budget
            .reserve(HEADER_STEP, Duration::from_secs(1))
            .await
            .unwrap();
        Receiver::new(lease, HEADER_STEP as usize, max_header)
    }

    #[tokio::test]
    async fn the_header_block_ends_at_the_first_empty_line_across_pieces() {
        let budget = MemoryBudget::new(1 << 20);
        let mut rx = receiver(&budget, 4096).await;
        assert!(matches!(rx.take(b"From: a@b.example\r"), Taken::Used));
        assert!(matches!(rx.take(b"\n\r"), Taken::Used));
        assert!(matches!(rx.take(b"\nbody"), Taken::HeaderEnded(1)));
        assert_eq!(rx.header, b"From: a@b.example\r\n\r\n");
    }

    #[tokio::test]
    async fn a_header_block_over_the_limit_is_dropped_as_soon_as_it_passes_it() {
        let budget = MemoryBudget::new(1 << 20);
        let mut rx = receiver(&budget, 1024).await;
        let line = b"X-Pad: 0123456789012345678901234567890123456789\r\n";
        let mut taken = 0;
        while matches!(rx.stage, Stage::Header) {
            assert!(matches!(rx.take(line), Taken::Used));
            taken += line.len();
            assert!(taken < 1024 + 2 * line.len());
        }
        assert!(rx.header.capacity() == 0);
        assert!(matches!(
            rx.stage,
            Stage::Discard(Some(Refused {
                refusal: Refusal::HeaderTooBig,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn a_large_header_block_needs_budget_and_is_refused_without_it() {
        // The lease covers one step; the budget has nothing more.
        let budget = MemoryBudget::new(HEADER_STEP as u64);
        let mut rx = receiver(&budget, 1 << 20).await;
        let piece = vec![b'x'; 1000];
        let mut kept = 0;
        while matches!(rx.stage, Stage::Header) {
            rx.take(&piece);
            kept += piece.len();
        }
        assert!(kept <= HEADER_STEP as usize + piece.len());
        assert!(matches!(
            rx.stage,
            Stage::Discard(Some(Refused {
                refusal: Refusal::NoDataMemory,
                ..
            }))
        ));
        drop(rx);
        assert_eq!(budget.available(), HEADER_STEP as usize);
    }

    #[test]
    fn an_empty_header_block_ends_at_once() {
        let end = |h: &[u8]| header_end(h, &mut 0);
        assert_eq!(end(b"\r\nbody"), Some((2, false)));
        assert_eq!(end(b"A: b\r\n\r\n"), Some((8, false)));
        assert_eq!(end(b"A: b\r\n"), None);
    }

    /// Issue 14: msmtp and scripts write a header block straight into the body.
    #[test]
    fn a_header_block_ends_at_the_first_line_that_is_no_field() {
        let end = |h: &[u8]| header_end(h, &mut 0);
        assert_eq!(end(b"Subject: x\r\nhello world\r\n"), Some((12, true)));
        assert_eq!(end(b"Subject: x\r\n folded\r\nbody\r\n"), Some((21, true)));
        // Body only: no header at all.
        assert_eq!(end(b"hello world\r\n"), Some((0, true)));
        assert_eq!(end(b" indented\r\n"), Some((0, true)));
        // An incomplete line is not judged yet.
        assert_eq!(end(b"Subject: x\r\nhello"), None);
    }

    #[tokio::test]
    async fn body_bytes_taken_as_header_are_handed_back() {
        let budget = MemoryBudget::new(1 << 20);
        let mut rx = receiver(&budget, 4096).await;
        assert!(matches!(rx.take(b"Subject: x\r\nbody li"), Taken::Used));
        assert!(matches!(rx.take(b"ne\r\nmore\r\n"), Taken::HeaderEnded(0)));
        assert_eq!(rx.header, b"Subject: x\r\n");
        assert_eq!(rx.carry, b"body li");
        assert!(rx.missing_blank);
    }
}
