//! From what a receiver sends to the reports found in it. One input (a file, a Maildir,
//! standard input) is recognised by its first bytes, not its name: gzip (`1f 8b`), zip
//! (`PK\3\4`), XML (`<`), an mbox (`From `), else an RFC 5322 message whose attachments are
//! looked at the same way. Bytes are counted as they are read and decompressed
//! ([`Bounded`]), so a zip or gzip bomb, or a 2 GB pipe, stops at a limit of [`Limits`]
//! with [`ImportError::TooLarge`] instead of filling memory.

use super::{parse, Feedback, ImportError, Limits};
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::Path;

/// A reader that fails (rather than stops) once more than `limit` bytes came through.
pub struct Bounded<R> {
    inner: R,
    left: u64,
    over: Overflow,
}

/// The error a [`Bounded`] reader raises, carried inside an `io::Error` through the
/// decompressors and the XML reader, and turned back into [`ImportError::TooLarge`].
#[derive(Debug, Clone, Copy)]
pub struct Overflow {
    what: &'static str,
    limit: u64,
    why: &'static str,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is over {} bytes", self.what, self.limit)
    }
}

impl std::error::Error for Overflow {}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, limit: u64, what: &'static str, why: &'static str) -> Self {
        Bounded {
            inner,
            left: limit,
            over: Overflow { what, limit, why },
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed may be asked for, to tell "exactly the limit" from "over".
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(self.over));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The [`ImportError::TooLarge`] an `io::Error` carries, if it came from a [`Bounded`].
pub fn overflow_of(e: &io::Error) -> Option<ImportError> {
    let over = e.get_ref()?.downcast_ref::<Overflow>()?;
    Some(ImportError::TooLarge {
        what: over.what,
        limit: over.limit,
        why: over.why,
    })
}

fn io_error(e: io::Error) -> ImportError {
    overflow_of(&e).unwrap_or(ImportError::Io(e))
}

/// One report found in an input, or why a part of it was refused; `label` says where
/// (the file, "message 3 of the mbox", "report.xml in the zip").
#[derive(Debug)]
pub struct Found {
    pub label: String,
    pub result: Result<Feedback, ImportError>,
}

/// What kind of data the first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gzip,
    Zip,
    Xml,
    Mbox,
    Mail,
}

fn kind(head: &[u8]) -> Kind {
    let trimmed = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let trimmed = &trimmed[trimmed
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count()..];
    if head.starts_with(&[0x1f, 0x8b]) {
        Kind::Gzip
    } else if head.starts_with(b"PK\x03\x04") {
        Kind::Zip
    } else if trimmed.starts_with(b"<") {
        Kind::Xml
    } else if head.starts_with(b"From ") {
        Kind::Mbox
    } else {
        Kind::Mail
    }
}

/// Reads every report in `path`: a file, a Maildir (its `cur` and `new`), a folder of
/// files, or `-` for standard input.
pub fn read_path(path: &Path, limits: &Limits) -> Vec<Found> {
    if path == Path::new("-") {
        let stdin = io::stdin();
        return read_stream(stdin.lock(), "standard input", limits);
    }
    let label = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return vec![Found {
                label,
                result: Err(ImportError::Io(e)),
            }]
        }
    };
    if meta.is_dir() {
        return read_folder(path, limits);
    }
    match std::fs::File::open(path) {
        Ok(file) => read_stream(BufReader::with_capacity(64 << 10, file), &label, limits),
        Err(e) => vec![Found {
            label,
            result: Err(ImportError::Io(e)),
        }],
    }
}

/// A Maildir's `new` and `cur` (or the folder's own files), in name order.
fn read_folder(dir: &Path, limits: &Limits) -> Vec<Found> {
    let maildir = ["cur", "new"].iter().any(|s| dir.join(s).is_dir());
    let folders: Vec<std::path::PathBuf> = if maildir {
        vec![dir.join("new"), dir.join("cur")]
    } else {
        vec![dir.to_path_buf()]
    };
    let mut files = Vec::new();
    for folder in folders {
        if let Ok(entries) = std::fs::read_dir(&folder) {
            files.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path()),
            );
        }
    }
    files.sort();
    files.iter().flat_map(|f| read_path(f, limits)).collect()
}

/// Reads one stream by what its first bytes are.
pub fn read_stream(mut input: impl BufRead, label: &str, limits: &Limits) -> Vec<Found> {
    let one = |result| {
        vec![Found {
            label: label.to_string(),
            result,
        }]
    };
    let head = match input.fill_buf() {
        Ok(h) => h.get(..h.len().min(64)).unwrap_or_default().to_vec(),
        Err(e) => return one(Err(ImportError::Io(e))),
    };
    if head.is_empty() {
        return one(Err(ImportError::NotAReport("the input is empty".into())));
    }
    match kind(&head) {
        Kind::Gzip => one(gzip(input, limits)),
        Kind::Xml => one(xml(input, limits)),
        Kind::Mbox => mbox(input, label, limits),
        Kind::Zip | Kind::Mail => match read_whole(input, limits) {
            Err(e) => one(Err(e)),
            Ok(bytes) => bytes_reports(&bytes, label, limits, 0),
        },
    }
}

/// The whole input in memory (for a zip, which is read from its end, and a mail), at
/// most `max_input` bytes.
fn read_whole(input: impl Read, limits: &Limits) -> Result<Vec<u8>, ImportError> {
    let mut bytes = Vec::new();
    Bounded::new(input, limits.max_input, "the input", "one file or mail")
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(bytes)
}

fn xml(input: impl Read, limits: &Limits) -> Result<Feedback, ImportError> {
    let bounded = Bounded::new(input, limits.max_xml, "the XML report", "a report's XML");
    parse::parse(BufReader::with_capacity(16 << 10, bounded), limits)
}

fn gzip(input: impl Read, limits: &Limits) -> Result<Feedback, ImportError> {
    let compressed = Bounded::new(input, limits.max_input, "the gzip file", "one file or mail");
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    let bounded = Bounded::new(
        decoder,
        limits.max_xml,
        "the decompressed report",
        "a report's XML after gunzip",
    );
    parse::parse(BufReader::with_capacity(16 << 10, bounded), limits).map_err(|e| match e {
        ImportError::Io(io)
            if io.kind() == io::ErrorKind::InvalidInput
                || io.kind() == io::ErrorKind::InvalidData =>
        {
            ImportError::Gzip(io.to_string())
        }
        ImportError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            ImportError::Gzip("the data ends early".into())
        }
        other => other,
    })
}

/// Every XML file in a zip archive, each bounded by `max_xml` as it is inflated
/// (whatever sizes the archive claims).
fn zip(bytes: &[u8], label: &str, limits: &Limits) -> Vec<Found> {
    let one = |result| {
        vec![Found {
            label: label.to_string(),
            result,
        }]
    };
    let mut archive = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(a) => a,
        Err(e) => return one(Err(ImportError::Zip(e.to_string()))),
    };
    if archive.len() > limits.max_reports_per_container {
        return one(Err(ImportError::Zip(format!(
            "{} files in the archive (receivers send one report); at most {} are read",
            archive.len(),
            limits.max_reports_per_container
        ))));
    }
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let entry = match archive.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                out.push(Found {
                    label: label.to_string(),
                    result: Err(ImportError::Zip(e.to_string())),
                });
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .unwrap_or_default()
            .chars()
            .take(128)
            .collect::<String>();
        let entry_label = format!("{label}: {name}");
        let bounded = Bounded::new(
            entry,
            limits.max_xml,
            "the unzipped report",
            "a report's XML after unzip",
        );
        let result = parse::parse(BufReader::with_capacity(16 << 10, bounded), limits).map_err(
            |e| match e {
                ImportError::Io(io) => ImportError::Zip(io.to_string()),
                other => other,
            },
        );
        out.push(Found {
            label: entry_label,
            result,
        });
    }
    if out.is_empty() {
        return one(Err(ImportError::Zip("the archive holds no file".into())));
    }
    out
}

/// Reports in bytes already in memory: a zip, gzip, XML, or a mail's attachments.
fn bytes_reports(bytes: &[u8], label: &str, limits: &Limits, depth: usize) -> Vec<Found> {
    let one = |result| {
        vec![Found {
            label: label.to_string(),
            result,
        }]
    };
    match kind(bytes.get(..64).unwrap_or(bytes)) {
        Kind::Zip => zip(bytes, label, limits),
        Kind::Gzip => one(gzip(bytes, limits)),
        Kind::Xml => one(xml(bytes, limits)),
        Kind::Mbox | Kind::Mail => mail(bytes, label, limits, depth),
    }
}

/// A mail's report attachments: parts named or typed as XML, gzip or zip, or whose bytes
/// are gzip or zip. A forwarded report (message/rfc822) is looked into, once.
fn mail(bytes: &[u8], label: &str, limits: &Limits, depth: usize) -> Vec<Found> {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let Some(message) = MessageParser::default().parse(bytes) else {
        return vec![Found {
            label: label.to_string(),
            result: Err(ImportError::NotAReport(
                "neither XML, gzip, zip nor a mail message".into(),
            )),
        }];
    };
    let mut out = Vec::new();
    for part in &message.parts {
        if out.len() >= limits.max_reports_per_container {
            break;
        }
        let contents: &[u8] = match &part.body {
            PartType::Binary(b) | PartType::InlineBinary(b) => b,
            PartType::Text(t) => t.as_bytes(),
            PartType::Message(nested) if depth == 0 => {
                out.extend(
                    mail(
                        nested.raw_message(),
                        &format!("{label} (forwarded)"),
                        limits,
                        depth + 1,
                    )
                    .into_iter()
                    .filter(|f| !matches!(f.result, Err(ImportError::NoReportInMessage))),
                );
                continue;
            }
            PartType::Html(_) | PartType::Multipart(_) | PartType::Message(_) => continue,
        };
        let name = part
            .attachment_name()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let ctype = part
            .content_type()
            .map(|c| {
                format!("{}/{}", c.ctype(), c.subtype().unwrap_or_default()).to_ascii_lowercase()
            })
            .unwrap_or_default();
        let named = [".xml", ".xml.gz", ".gz", ".zip"]
            .iter()
            .any(|s| name.ends_with(s))
            || ["xml", "gzip", "zip"].iter().any(|t| ctype.contains(t));
        let head = contents.get(..64).unwrap_or(contents);
        let packed = matches!(kind(head), Kind::Gzip | Kind::Zip);
        if !(named || packed) || contents.is_empty() {
            continue;
        }
        let part_label = if name.is_empty() {
            label.to_string()
        } else {
            format!("{label}: {name}")
        };
        match kind(head) {
            Kind::Zip => out.extend(zip(contents, &part_label, limits)),
            Kind::Gzip => out.push(Found {
                label: part_label,
                result: gzip(contents, limits),
            }),
            Kind::Xml => out.push(Found {
                label: part_label,
                result: xml(contents, limits),
            }),
            Kind::Mbox | Kind::Mail => {}
        }
    }
    if out.is_empty() {
        out.push(Found {
            label: label.to_string(),
            result: Err(ImportError::NoReportInMessage),
        });
    }
    out
}

/// An mbox, message by message: a line `From ` at the start or after an empty line
/// begins the next. Each message is held in memory up to `max_input`; a longer one is
/// skipped (and said), never held whole. Lines are read in bounded pieces.
fn mbox(mut input: impl BufRead, label: &str, limits: &Limits) -> Vec<Found> {
    let mut out = Vec::new();
    let mut message: Vec<u8> = Vec::new();
    let mut too_large = false;
    let mut number = 0usize;
    let mut line_start = true;
    let mut previous_blank = true;
    let finish =
        |message: &mut Vec<u8>, too_large: &mut bool, number: usize, out: &mut Vec<Found>| {
            let here = format!("{label}: message {number}");
            if *too_large {
                out.push(Found {
                    label: here,
                    result: Err(ImportError::TooLarge {
                        what: "the message",
                        limit: limits.max_input,
                        why: "one mail",
                    }),
                });
            } else if !message.is_empty() {
                out.extend(mail(message, &here, limits, 0));
            }
            message.clear();
            *too_large = false;
        };
    loop {
        let chunk = match input.fill_buf() {
            Ok([]) => break,
            Ok(c) => c,
            Err(e) => {
                out.push(Found {
                    label: label.to_string(),
                    result: Err(ImportError::Io(e)),
                });
                return out;
            }
        };
        // One line, or the part of a long line that is buffered.
        let (piece, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        let len = piece.len();
        if line_start && previous_blank && piece.starts_with(b"From ") {
            if number > 0 {
                finish(&mut message, &mut too_large, number, &mut out);
            }
            number += 1;
        } else if !too_large {
            if (message.len() + len) as u64 > limits.max_input {
                too_large = true;
                message = Vec::new();
            } else {
                message.extend_from_slice(piece);
            }
        }
        if ends_line {
            previous_blank = line_start && (piece == b"\n" || piece == b"\r\n");
        }
        line_start = ends_line;
        input.consume(len);
    }
    finish(&mut message, &mut too_large, number.max(1), &mut out);
    out
}
