//! Buffered line I/O for one SMTP connection. Replies are collected and flushed only when
//! the client has no more pipelined commands waiting (RFC 2920 §3.2), so a pipelined
//! batch costs one write. Every write has a deadline (`smtp.write_timeout`): a client that
//! pipelines and never reads would otherwise hold its slot for ever once the socket's
//! send buffer is full.

use super::data::DataParser;
use super::pace::Pace;
use super::reply::Reply;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const READ_CHUNK: usize = 16 * 1024;

pub enum LineRead {
    /// A line including its LF terminator.
    Line(Vec<u8>),
    /// The line was longer than allowed; it has been read to its end and dropped.
    TooLong,
    Eof,
}

pub enum DataRead {
    Done,
    /// The parser holds [`super::data::DRAIN_AT`] bytes of output: hand them on, then call
    /// again (the message streams to the spool instead of gathering in memory).
    Drain,
    Eof,
    /// The DATA deadline passed (too slow, or too long in total).
    TimedOut,
}

pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    /// Longest one flush may take.
    write_timeout: Duration,
    /// A write failed or ran out of time: the stream is unusable, later flushes fail at
    /// once instead of waiting out the deadline again.
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, write_timeout: Duration) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            out: Vec::with_capacity(512),
            write_timeout,
            broken: false,
        }
    }

    /// The bare stream; unread input and unsent output are dropped (STARTTLS).
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Whether the client has sent bytes not read yet.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.buf.len()
    }

    pub fn queue_reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "an earlier write failed",
            ));
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let result = match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!(
                    "the client did not read its replies within smtp.write_timeout; closing"
                );
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write deadline passed",
                ))
            }
        };
        self.out.clear();
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Reads more bytes from the client, flushing pending replies first: the client may be
    /// waiting for them before it sends anything else.
    async fn fill(&mut self) -> std::io::Result<usize> {
        self.flush().await?;
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        n
    }

    /// Reads one line (up to and including LF) of at most `max` bytes.
    pub async fn read_line(&mut self, max: usize) -> std::io::Result<LineRead> {
        let mut skipping = false;
        loop {
            let pending = &self.buf[self.start..];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line = pending[..=i].to_vec();
                self.start += i + 1;
                return Ok(if skipping || line.len() > max {
                    LineRead::TooLong
                } else {
                    LineRead::Line(line)
                });
            }
            if pending.len() > max {
                // Drop what we have and keep reading until the line ends.
                skipping = true;
                self.start = self.buf.len();
            }
            if self.fill().await? == 0 {
                return Ok(LineRead::Eof);
            }
        }
    }

    /// Feeds the DATA parser until the end of data, the client's EOF, `pace`'s deadline
    /// (which each received chunk pushes out), or enough output to hand on.
    pub async fn read_data(
        &mut self,
        parser: &mut DataParser,
        pace: &mut Pace,
    ) -> std::io::Result<DataRead> {
        loop {
            let used = parser.feed(&self.buf[self.start..]);
            self.start += used;
            if parser.is_done() {
                return Ok(DataRead::Done);
            }
            if parser.wants_drain() {
                return Ok(DataRead::Drain);
            }
            match tokio::time::timeout_at(pace.deadline(), self.fill()).await {
                Err(_) => return Ok(DataRead::TimedOut),
                Ok(read) => match read? {
                    0 => return Ok(DataRead::Eof),
                    n => pace.received(n),
                },
            }
        }
    }
}
