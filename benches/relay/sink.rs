//! A fast SMTP sink on 127.0.0.1: answers 250 to everything, counts whole messages, and
//! records which DKIM signatures the first message carried. Replies are written when the
//! client has nothing more buffered, so a pipelining client gets them in one segment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const EHLO_REPLY: &[u8] =
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n";

/// The DKIM-Signature fields of the first message: the count and each `a=` tag.
#[derive(Debug, Clone, Default)]
pub struct FirstMessage {
    pub signatures: usize,
    pub algorithms: Vec<String>,
}

pub struct Sink {
    pub port: u16,
    /// Messages received completely (end of data seen, 250 sent).
    pub count: watch::Receiver<u64>,
    pub first: Arc<Mutex<Option<FirstMessage>>>,
}

pub async fn start(port: u16) -> std::io::Result<Sink> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let (tx, count) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let first = Arc::new(Mutex::new(None));
    let inspected = Arc::new(AtomicBool::new(false));
    let shared_first = first.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, first, inspected) = (tx.clone(), shared_first.clone(), inspected.clone());
            tokio::spawn(async move {
                let _ = serve(stream, &tx, &first, &inspected).await;
            });
        }
    });
    Ok(Sink { port, count, first })
}

async fn serve(
    stream: TcpStream,
    count: &watch::Sender<u64>,
    first: &Mutex<Option<FirstMessage>>,
    inspected: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut writer = BufWriter::new(write);
    writer.write_all(b"220 sink.bench ESMTP\r\n").await?;
    writer.flush().await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" => writer.write_all(EHLO_REPLY).await?,
            b"DATA" => {
                writer.write_all(b"354 go ahead\r\n").await?;
                writer.flush().await?;
                let inspect = !inspected.swap(true, Ordering::Relaxed);
                let signatures = read_data(&mut reader, inspect).await?;
                if let Some(found) = signatures {
                    *first.lock().unwrap() = Some(found);
                }
                writer.write_all(b"250 2.0.0 Ok: sunk\r\n").await?;
                count.send_modify(|n| *n += 1);
            }
            b"QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n").await?;
                writer.flush().await?;
                return Ok(());
            }
            _ => writer.write_all(b"250 2.0.0 Ok\r\n").await?,
        }
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// Reads a message up to the line holding only ".". With `inspect`, returns its DKIM
/// signatures (header fields up to the first empty line).
async fn read_data(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    inspect: bool,
) -> std::io::Result<Option<FirstMessage>> {
    let mut line = Vec::with_capacity(1024);
    let mut in_headers = true;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            break;
        }
        if inspect && in_headers {
            if line == b"\r\n" {
                in_headers = false;
            } else {
                headers.extend_from_slice(&line);
            }
        }
    }
    Ok(inspect.then(|| dkim_signatures(&String::from_utf8_lossy(&headers))))
}

fn dkim_signatures(headers: &str) -> FirstMessage {
    // Unfold, then look at each DKIM-Signature field's a= tag.
    let unfolded = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
    let mut found = FirstMessage::default();
    for field in unfolded.split("\r\n") {
        let Some(value) = field
            .split_once(':')
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("DKIM-Signature"))
            .map(|(_, v)| v)
        else {
            continue;
        };
        found.signatures += 1;
        let algorithm = value
            .split(';')
            .filter_map(|tag| tag.trim().strip_prefix("a="))
            .next()
            .unwrap_or("?");
        found.algorithms.push(algorithm.trim().to_string());
    }
    found
}
