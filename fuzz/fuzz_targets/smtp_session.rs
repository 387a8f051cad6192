//! The SMTP session on arbitrary client input, in memory: command parsing, the state
//! machine, DATA with its smuggling checks, the message policy and the spool. Also the
//! DATA parser alone, checking that how the input is split into reads never changes
//! the outcome (a smuggling defence that depends on packet boundaries is no defence).
#![no_main]

use dkim_relay::config::{Config, LiveConfig};
use dkim_relay::delivery::{self, DeliveryContext, Outbox, SharedTransport, Transport};
use dkim_relay::dkim::{KeyRing, SharedKeyRing};
use dkim_relay::keys::KeyStore;
use dkim_relay::smtp::connection::serve_stream;
use dkim_relay::smtp::ClientInfo;
use dkim_relay::smtp::data::DataParser;
use dkim_relay::smtp::SmtpContext;
use dkim_relay::spool::Spool;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    runtime: tokio::runtime::Runtime,
    ctx: Arc<SmtpContext>,
    queue_dir: std::path::PathBuf,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _keep: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            hostname: "fuzz.test".into(),
            ..Config::default()
        };
        config.spool.dir = dir.path().join("spool");
        config.spool.fsync = false;
        config.keys.dir = dir.path().join("keys");
        config.delivery.outbox_dir = dir.path().join("outbox");
        config.smtp.command_timeout = dkim_relay::config::HumanDuration(Duration::from_secs(1));
        config.smtp.max_errors = 1000;
        config.validate().unwrap();
        let store = KeyStore::new(&config.keys.dir);
        // Ed25519 only: RSA key generation under the sanitizer takes minutes. A domain
        // without RSA is "unusable" for signing but still accepted (it waits in the queue),
        // so the whole accept path runs.
        store
            .generate_key(
                "example.com",
                "e1",
                dkim_relay::keys::Algorithm::Ed25519,
                2048,
                dkim_relay::keys::SlotState::Active,
                0,
            )
            .unwrap();
        let keys = Arc::new(SharedKeyRing::new(KeyRing::load(&store, &config)));
        let spool = Spool::open(&config.spool.dir, false).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let live = Arc::new(LiveConfig::new(config.clone()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (runner_stop_tx, runner_stop_rx) = tokio::sync::watch::channel(false);
        let delivery_ctx = Arc::new(DeliveryContext {
            spool: spool.clone(),
            keys: keys.clone(),
            dns: Arc::new(dkim_relay::keys::DnsSeen::default()),
            transport: Arc::new(SharedTransport::new(Transport::Outbox(
                Outbox::open(&config.delivery.outbox_dir, false).unwrap(),
            ))),
            live: live.clone(),
            events: tokio::sync::broadcast::channel(1).0,
            clock: dkim_relay::clock::Clock::System,
        });
        // The runner stops at once: accepted messages stay in the spool, which each run
        // empties, so the fuzzer does not fill the disk.
        let queue = runtime.block_on(async {
            let (queue, runner) = delivery::start(delivery_ctx, 1, Vec::new(), runner_stop_rx);
            let _ = runner_stop_tx.send(true);
            let _ = runner.await;
            queue
        });
        let ctx = SmtpContext::new(live.clone(), keys, spool.clone(), queue).unwrap();
        World {
            runtime,
            ctx: Arc::new(ctx),
            queue_dir: dir.path().join("spool/queue"),
            shutdown: stop_rx,
            _keep: stop_tx,
            _dir: dir,
        }
    })
}

fn session(input: &[u8]) {
    let w = world();
    let output = w.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rx, mut tx) = tokio::io::split(client);
        let info = ClientInfo {
            ip: "127.0.0.1".parse().unwrap(),
            config: w.ctx.snapshot().config,
            grant: Some(dkim_relay::auth::DomainGrant::Any),
            started: tokio::time::Instant::now(),
            outsider: None,
        };
        let task = tokio::spawn(serve_stream(
            server,
            info,
            w.ctx.clone(),
            w.shutdown.clone(),
        ));
        let writer = async {
            let _ = tx.write_all(input).await;
            let _ = tx.shutdown().await;
        };
        let mut out = Vec::new();
        let (_, read) = tokio::join!(writer, async {
            // Reads and writes interleave, or a reply backlog could block the session.
            tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(&mut out)).await
        });
        drop(rx);
        let _ = task.await;
        read.expect("session hung").ok();
        out
    });
    // Every reply line is CRLF-terminated and starts with a 3-digit code.
    assert!(output.is_empty() || output.ends_with(b"\r\n"));
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "{:?}", String::from_utf8_lossy(line));
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
        assert!(line[3] == b' ' || line[3] == b'-');
    }
    if let Ok(entries) = std::fs::read_dir(&w.queue_dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The parser's verdict for `input` fed in pieces cut at `cuts`.
fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> (usize, bool, Vec<u8>, String) {
    let mut p = DataParser::new(4096, 998, 0);
    let mut used = 0;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = cut.clamp(start, input.len());
        used += p.feed(&input[start..end]);
        start = end;
        if p.is_done() {
            break;
        }
    }
    let done = p.is_done();
    let verdict = format!(
        "{:?} {} {} {}",
        p.taint, p.too_big, p.long_line, p.eight_bit
    );
    (used, done, p.into_message(), verdict)
}

fn data_parser(input: &[u8]) {
    let whole = parse_in_pieces(input, &[]);
    // Cut points derived from the input itself, so the fuzzer controls them.
    let cuts: Vec<usize> = input
        .iter()
        .enumerate()
        .filter(|(_, &b)| b % 7 == 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(whole, parse_in_pieces(input, &cuts));
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(whole, parse_in_pieces(input, &bytewise));
    let (used, done, message, _) = whole;
    if done {
        // The end of data is only ever CRLF.CRLF (or .CRLF at the very start).
        let consumed = &input[..used];
        assert!(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n"));
    }
    assert!(message.len() <= 4096);
}

fuzz_target!(|input: &[u8]| {
    data_parser(input);
    session(input);
});
