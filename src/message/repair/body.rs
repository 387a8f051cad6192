//! The body repair: a line-by-line walk of the MIME structure, run twice. The first pass
//! ([`Scan`]) runs as the data arrives and decides which parts need re-encoding (a line
//! over 998 octets) or why the message cannot be repaired; the second ([`Rewrite`]) runs
//! at the end of data only when a repair is needed, reading the stored body and writing
//! the repaired one. Both walk the same input with the same [`Walker`], so the part
//! numbers of the plan are the parts the rewrite sees. Memory: one line (capped by the
//! caller's hard line limit) and one part header (capped at [`PART_HEADER_CAP`]).

use super::header::{fold_line, MAX_LINE};
use super::mime::{Encoding, PartType};
use super::qp;
use std::collections::BTreeSet;

/// A part header longer than this is not read; a message needing a repair in such a part
/// is refused (no real part header comes near it).
pub const PART_HEADER_CAP: usize = 64 * 1024;

/// Why a body with a line over 998 octets cannot be made sign-safe here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrepairable {
    /// The line is inside multipart/signed or multipart/encrypted: re-encoding would
    /// break the sender's own signature.
    Sealed,
    /// The part is already base64 or quoted-printable (so it is broken), or in an
    /// encoding this relay does not know.
    Encoded,
    /// The part is a message/* part, which may not be quoted-printable.
    Message,
    /// The line is in a multipart's preamble or epilogue, or a part header is unreadable.
    Structure,
    /// The message is too large to be held for re-encoding (`smtp/repair.rs` HOLD).
    TooLarge,
}

impl Unrepairable {
    pub fn name(self) -> &'static str {
        match self {
            Unrepairable::Sealed => "a line over 998 octets inside multipart/signed or multipart/encrypted, which re-encoding would break",
            Unrepairable::Encoded => "a line over 998 octets in a base64, quoted-printable or unknown-encoding part, which cannot be re-encoded",
            Unrepairable::Message => "a line over 998 octets in an attached message (message/*), which may not be quoted-printable",
            Unrepairable::Structure => "a line over 998 octets outside any MIME part, or in an unreadable part header",
            Unrepairable::TooLarge => "a line over 998 octets in a message over 64 KiB, which this relay re-encodes only when smaller",
        }
    }
}

/// A leaf part: its number (0: the body of a single-part message) and type.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub index: usize,
    pub sealed: bool,
    pub ptype: PartType,
}

#[derive(Debug)]
struct Frame {
    boundary: Vec<u8>,
    sealed: bool,
}

#[derive(Debug)]
enum State {
    /// A multipart's preamble or epilogue (or the epilogue of the whole message).
    Container,
    PartHeader {
        index: usize,
        sealed: bool,
    },
    Leaf(Leaf),
}

/// What the walk reports, line by line.
pub trait Sink {
    /// A part's header, its lines with their CRLFs; `blank`: an empty line ended it.
    fn part_header(&mut self, index: usize, header: &[u8], blank: bool);
    /// A line of a leaf part (`Some`) or of a preamble/epilogue (`None`), without CRLF.
    fn content(&mut self, leaf: Option<&Leaf>, line: &[u8], crlf: bool);
    /// A boundary line; `canonical` is it without transport padding.
    fn boundary(&mut self, line: &[u8], canonical: &[u8], crlf: bool);
}

#[derive(Debug)]
pub struct Walker {
    line: Vec<u8>,
    /// Bytes of the current line beyond what `line` keeps.
    dropped: usize,
    line_cap: usize,
    stack: Vec<Frame>,
    state: State,
    header: Vec<u8>,
    /// A part header passed [`PART_HEADER_CAP`].
    pub broken: bool,
    next_index: usize,
}

impl Walker {
    /// For a body whose message header says `top`; lines longer than `line_cap` are
    /// reported cut (the caller refuses those anyway).
    pub fn new(top: PartType, line_cap: usize) -> Walker {
        let (stack, state) = if top.is_multipart() {
            let frame = Frame {
                boundary: top.boundary.clone().unwrap_or_default(),
                sealed: top.is_sealed(),
            };
            (vec![frame], State::Container)
        } else {
            let leaf = Leaf {
                index: 0,
                sealed: false,
                ptype: top,
            };
            (Vec::new(), State::Leaf(leaf))
        };
        Walker {
            line: Vec::new(),
            dropped: 0,
            line_cap: line_cap.max(MAX_LINE + 2),
            stack,
            state,
            header: Vec::new(),
            broken: false,
            next_index: 1,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut impl Sink) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let take = nl.map_or(bytes.len(), |i| i + 1);
            let room = self.line_cap.saturating_sub(self.line.len());
            let keep = take.min(room);
            self.line.extend_from_slice(&bytes[..keep]);
            self.dropped += take - keep;
            let ended = nl.is_some();
            bytes = &bytes[take..];
            if ended && (self.line.ends_with(b"\r\n") || self.dropped > 0) {
                let mut line = std::mem::take(&mut self.line);
                let body = line.len().saturating_sub(2);
                self.process(&line[..body], true, sink);
                line.clear();
                self.line = line;
                self.dropped = 0;
            }
        }
    }

    /// The end of the body: a last line without CRLF, and a part header never ended.
    pub fn finish(&mut self, sink: &mut impl Sink) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process(&line, false, sink);
        }
        if let State::PartHeader { index, .. } = self.state {
            sink.part_header(index, &self.header, false);
            self.header.clear();
        }
    }

    /// One line, without its CRLF (`crlf`: it had one).
    fn process(&mut self, line: &[u8], crlf: bool, sink: &mut impl Sink) {
        if let Some((depth, close, canonical_len)) = self.boundary_of(line) {
            if let State::PartHeader { index, .. } = self.state {
                // A part header that a boundary ended: reported as it was.
                sink.part_header(index, &self.header, false);
                self.header.clear();
            }
            sink.boundary(line, &line[..canonical_len], crlf);
            if close {
                self.stack.truncate(depth);
                self.state = State::Container;
            } else {
                self.stack.truncate(depth + 1);
                let sealed = self.stack[depth].sealed;
                self.state = State::PartHeader {
                    index: self.next_index,
                    sealed,
                };
                self.next_index += 1;
            }
            return;
        }
        match &self.state {
            State::PartHeader { index, sealed } => {
                let (index, sealed) = (*index, *sealed);
                if line.is_empty() && crlf {
                    sink.part_header(index, &self.header, true);
                    let ptype = PartType::of(header_fields(&self.header));
                    self.header.clear();
                    if ptype.is_multipart() {
                        self.stack.push(Frame {
                            boundary: ptype.boundary.clone().unwrap_or_default(),
                            sealed: sealed || ptype.is_sealed(),
                        });
                        self.state = State::Container;
                    } else {
                        self.state = State::Leaf(Leaf {
                            index,
                            sealed,
                            ptype,
                        });
                    }
                } else if self.header.len() + line.len() + self.dropped + 2 > PART_HEADER_CAP
                    || self.dropped > 0
                {
                    self.broken = true;
                } else {
                    self.header.extend_from_slice(line);
                    if crlf {
                        self.header.extend_from_slice(b"\r\n");
                    }
                }
            }
            State::Leaf(leaf) => sink.content(Some(leaf), line, crlf),
            State::Container => sink.content(None, line, crlf),
        }
    }

    /// Whether `line` is a boundary of an open multipart: (frame depth, closing, length
    /// without transport padding). The innermost frame is tried first; a boundary of an
    /// outer one also ends the inner ones (a missing final boundary).
    fn boundary_of(&self, line: &[u8]) -> Option<(usize, bool, usize)> {
        let rest = line.strip_prefix(b"--")?;
        for (depth, frame) in self.stack.iter().enumerate().rev() {
            let Some(after) = rest.strip_prefix(frame.boundary.as_slice()) else {
                continue;
            };
            let (close, tail) = match after.strip_prefix(b"--") {
                Some(t) => (true, t),
                None => (false, after),
            };
            // RFC 2046 §5.1.1: only linear white space may follow.
            if tail.iter().all(|b| *b == b' ' || *b == b'\t') {
                let canonical = 2 + frame.boundary.len() + if close { 2 } else { 0 };
                return Some((depth, close, canonical));
            }
        }
        None
    }
}

/// The `(name, value)` fields of a part header (lines with CRLFs).
fn header_fields(header: &[u8]) -> std::vec::IntoIter<(&[u8], &[u8])> {
    let mut fields = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    fn push<'h>(header: &'h [u8], s: usize, e: usize, fields: &mut Vec<(&'h [u8], &'h [u8])>) {
        let field = &header[s..e];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            fields.push((field[..colon].trim_ascii(), &field[colon + 1..]));
        }
    }
    while pos < header.len() {
        let end = header[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(header.len(), |i| pos + i);
        let continuation = matches!(header.get(pos), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(s) = start.take() {
                push(header, s, pos, &mut fields);
            }
            start = Some(pos);
        }
        pos = end + 2;
    }
    if let Some(s) = start {
        push(header, s, header.len().min(pos), &mut fields);
    }
    fields.into_iter()
}

/// The first pass: what the body needs.
#[derive(Debug, Default)]
pub struct Plan {
    /// Leaf parts to re-encode as quoted-printable (0: the whole single-part body).
    pub reencode: BTreeSet<usize>,
    /// Part headers with a line to fold.
    pub fold: BTreeSet<usize>,
    /// Boundary lines whose padding takes them over 998 octets.
    pub long_boundaries: usize,
    pub problem: Option<Unrepairable>,
}

impl Plan {
    pub fn needs_rewrite(&self) -> bool {
        !self.reencode.is_empty() || !self.fold.is_empty() || self.long_boundaries > 0
    }
}

/// The first pass, fed the body as it arrives.
#[derive(Debug)]
pub struct Scan {
    walker: Walker,
    pub plan: Plan,
}

impl Scan {
    pub fn new(top: PartType, line_cap: usize) -> Scan {
        Scan {
            walker: Walker::new(top, line_cap),
            plan: Plan::default(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.walker.feed(bytes, &mut self.plan);
    }

    pub fn finish(mut self) -> Plan {
        self.walker.finish(&mut self.plan);
        if self.walker.broken && self.plan.needs_rewrite() {
            self.plan.problem.get_or_insert(Unrepairable::Structure);
        }
        self.plan
    }
}

impl Sink for Plan {
    fn part_header(&mut self, index: usize, header: &[u8], _blank: bool) {
        for line in header.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > MAX_LINE {
                if fold_line(line).is_err() {
                    self.problem.get_or_insert(Unrepairable::Structure);
                }
                self.fold.insert(index);
            }
        }
    }

    fn content(&mut self, leaf: Option<&Leaf>, line: &[u8], _crlf: bool) {
        if line.len() <= MAX_LINE {
            return;
        }
        let problem = match leaf {
            None => Some(Unrepairable::Structure),
            Some(l) if l.sealed => Some(Unrepairable::Sealed),
            Some(l) if l.ptype.is_message() => Some(Unrepairable::Message),
            Some(l) if l.ptype.encoding != Encoding::Identity => Some(Unrepairable::Encoded),
            Some(l) => {
                self.reencode.insert(l.index);
                None
            }
        };
        if let Some(p) = problem {
            self.problem.get_or_insert(p);
        }
    }

    fn boundary(&mut self, line: &[u8], _canonical: &[u8], _crlf: bool) {
        if line.len() > MAX_LINE {
            self.long_boundaries += 1;
        }
    }
}

/// The second pass: writes the repaired body into `out` as it walks.
pub struct Rewrite<'p> {
    walker: Walker,
    plan: &'p Plan,
    pub out: Vec<u8>,
}

impl<'p> Rewrite<'p> {
    pub fn new(top: PartType, line_cap: usize, plan: &'p Plan) -> Rewrite<'p> {
        Rewrite {
            walker: Walker::new(top, line_cap),
            plan,
            out: Vec::new(),
        }
    }

    /// Feeds body bytes; the repaired bytes gather in `out` (the caller drains it).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut sink = Writer {
            plan: self.plan,
            out: &mut self.out,
        };
        self.walker.feed(bytes, &mut sink);
    }

    pub fn finish(&mut self) {
        let mut sink = Writer {
            plan: self.plan,
            out: &mut self.out,
        };
        self.walker.finish(&mut sink);
    }
}

struct Writer<'a> {
    plan: &'a Plan,
    out: &'a mut Vec<u8>,
}

impl Sink for Writer<'_> {
    fn part_header(&mut self, index: usize, header: &[u8], blank: bool) {
        let reencode = self.plan.reencode.contains(&index);
        let folded;
        let header = if self.plan.fold.contains(&index) {
            folded = super::header::fold_block(header).unwrap_or_else(|_| header.to_vec());
            &folded[..]
        } else {
            header
        };
        if reencode {
            self.out.extend_from_slice(&set_qp(header));
        } else {
            self.out.extend_from_slice(header);
        }
        if blank {
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn content(&mut self, leaf: Option<&Leaf>, line: &[u8], crlf: bool) {
        match leaf {
            Some(l) if self.plan.reencode.contains(&l.index) => {
                qp::encode_line(line, crlf, self.out)
            }
            _ => {
                self.out.extend_from_slice(line);
                if crlf {
                    self.out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    fn boundary(&mut self, line: &[u8], canonical: &[u8], crlf: bool) {
        // Transport padding is ignored by readers (RFC 2046 §5.1.1): dropping it is lossless.
        self.out.extend_from_slice(if line.len() > MAX_LINE {
            canonical
        } else {
            line
        });
        if crlf {
            self.out.extend_from_slice(b"\r\n");
        }
    }
}

/// A header block (lines with CRLFs, no empty line) with every Content-Transfer-Encoding
/// field replaced by one saying quoted-printable.
pub fn set_qp(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + 44);
    let mut skipping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = line
                .get(..26)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"Content-Transfer-Encoding:"))
                || line.split(|&b| b == b':').next().is_some_and(|n| {
                    n.trim_ascii()
                        .eq_ignore_ascii_case(b"Content-Transfer-Encoding")
                });
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n");
    out
}

#[cfg(test)]
mod tests;
