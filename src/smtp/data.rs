//! The DATA reader: a byte-level state machine that finds the end of data only on a strict
//! `CRLF . CRLF`, undoes dot-stuffing, and taints the message on any bare CR, bare LF or
//! NUL (DESIGN §3, the SMTP smuggling defence). It never normalises: a tainted message is
//! read to its real end and then refused whole.
//!
//! It is pure (no I/O), so it is unit-tested and fuzzed directly. Its output is not the
//! whole message: the caller takes it in pieces ([`DataParser::output`]) as it comes, so
//! a message streams to the spool and what it holds is bounded by [`DRAIN_AT`] plus one read.

use super::reply::Taint;

/// Output held before the reader hands it on: large enough that a big message is written in
/// few system calls, small enough that hundreds of transfers fit in the memory budget.
pub const DRAIN_AT: usize = 64 * 1024;

#[derive(Debug)]
pub struct DataParser {
    /// Output not taken yet.
    out: Vec<u8>,
    /// Bytes output so far, taken or not: the message size checked against `max_size`.
    size: usize,
    max_size: usize,
    max_line: usize,
    /// At the first byte of a line (just after CRLF, or at the very start).
    line_start: bool,
    /// The current line began with a dot that was removed.
    dot_line: bool,
    /// The current line holds only that dot so far.
    only_dot: bool,
    /// The previous byte was a CR awaiting its LF.
    cr: bool,
    line_len: usize,
    done: bool,
    pub taint: Option<Taint>,
    pub too_big: bool,
    pub long_line: bool,
    pub eight_bit: bool,
}

impl DataParser {
    pub fn new(max_size: usize, max_line: usize, size_hint: usize) -> Self {
        DataParser {
            out: Vec::with_capacity(size_hint.min(max_size).min(DRAIN_AT)),
            size: 0,
            max_size,
            max_line,
            line_start: true,
            dot_line: false,
            only_dot: false,
            cr: false,
            line_len: 0,
            done: false,
            taint: None,
            too_big: false,
            long_line: false,
            eight_bit: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The output not taken yet: with no [`DataParser::output`] before, the whole
    /// message received, unstuffed, without the final `.CRLF`.
    pub fn into_message(self) -> Vec<u8> {
        self.out
    }

    /// Enough output is waiting that the reader should hand it on before reading more.
    pub fn wants_drain(&self) -> bool {
        self.out.len() >= DRAIN_AT
    }

    /// The output since the last [`DataParser::clear_output`].
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Drops the output handed on; its buffer is kept for the next.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    fn taint(&mut self, t: Taint) {
        self.taint.get_or_insert(t);
    }

    fn push(&mut self, b: u8) {
        if self.size < self.max_size {
            self.size += 1;
            self.out.push(b);
        } else {
            // Keep reading to the end of data, but stop storing.
            self.too_big = true;
        }
    }

    /// Consumes bytes until the end of data; returns how many were used. Bytes after the
    /// terminating `.CRLF` (pipelined commands) are left for the caller.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        for (i, &b) in input.iter().enumerate() {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    if self.dot_line && self.only_dot {
                        self.done = true;
                        return i + 1;
                    }
                    self.push(b'\r');
                    self.push(b'\n');
                    self.line_start = true;
                    self.dot_line = false;
                    self.line_len = 0;
                    continue;
                }
                // A CR not followed by LF.
                self.taint(Taint::BareCr);
                self.push(b'\r');
                self.after_content_byte();
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    // A bare LF never ends a line here, so "\n.\n" or "\n.\r\n" cannot end
                    // the data: only the real CRLF.CRLF does.
                    self.taint(Taint::BareLf);
                    self.push(b'\n');
                    self.after_content_byte();
                }
                _ => {
                    if b == 0 {
                        self.taint(Taint::Nul);
                    }
                    if b >= 0x80 {
                        self.eight_bit = true;
                    }
                    if self.line_start && b == b'.' {
                        // Transparency (RFC 5321 §4.5.2): drop the leading dot.
                        self.line_start = false;
                        self.dot_line = true;
                        self.only_dot = true;
                        continue;
                    }
                    self.push(b);
                    self.after_content_byte();
                    self.line_len += 1;
                    if self.line_len > self.max_line {
                        self.long_line = true;
                    }
                }
            }
        }
        input.len()
    }

    fn after_content_byte(&mut self) {
        self.line_start = false;
        self.only_dot = false;
    }
}

#[cfg(test)]
mod tests;
