//! `cargo bench --bench spool -- [--n N] [--size S] [--concurrency C] [--rounds R] [--dir D]`:
//! the spool alone under the relay's pattern (C concurrent writers, each message streamed
//! in with `begin`/`write`/`commit` with fsync on, then read back and removed as delivery
//! does), a file per message against the segment log of issue 18 item 1, in one run:
//!
//! - `files, own dir fsync`: a file per message (temp file, fdatasync, rename) with every
//!   commit fsyncing the queue directory itself (the spool before group commit);
//! - `files, grouped dir fsync`: a file per message, concurrent commits sharing the
//!   directory fsync (the spool before the segment log);
//! - `segment log`: the spool as it is: a message up to 64 KiB is appended to the segment
//!   log, concurrent appends sharing one fdatasync; removal marks it done. (A larger
//!   `--size` goes to files in this variant too.)
//!
//! Prints, per variant and round, messages/s and process CPU (utime + stime of every
//! thread, from getrusage) per message, and the ratios to the segment log. Rounds
//! alternate the variants so that a shared machine's drift hits them alike.

use dkim_relay::spool::{Envelope, Origin, QueueId, Spool};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    n: usize,
    size: usize,
    concurrency: usize,
    rounds: usize,
    dir: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        n: 2000,
        size: 4000,
        concurrency: 20,
        rounds: 2,
        dir: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--bench" {
            continue;
        }
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--n" => args.n = value.parse().map_err(|e| bad(&e))?,
            "--size" => {
                args.size = dkim_relay::config::parse_size(&value).map_err(|e| bad(&e))? as usize
            }
            "--concurrency" => args.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--rounds" => args.rounds = value.parse().map_err(|e| bad(&e))?,
            "--dir" => args.dir = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into `usage`, a plain C struct that may start zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn envelope(i: usize, size: usize) -> Envelope {
    Envelope {
        utf8: Default::default(),
        id: QueueId::generate(std::time::SystemTime::now()),
        received: 1_700_000_000 + i as u64,
        client: "127.0.0.1".parse().expect("address"),
        helo: "load.bench".into(),
        mail_from: format!("load{i}@bench.test"),
        rcpts: vec![format!("rcpt{}@sink.bench", i % 97)],
        from_domain: "bench.test".into(),
        size: size as u64,
        eight_bit: false,
        origin: Origin::Client,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    OwnDirFsync,
    GroupedDirFsync,
    SegmentLog,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::OwnDirFsync => "files, own dir fsync",
            Variant::GroupedDirFsync => "files, grouped dir fsync",
            Variant::SegmentLog => "segment log",
        }
    }
}

struct Figures {
    rate: f64,
    cpu_us: f64,
    /// Directory fsyncs (files) or segment fdatasyncs (log) per message.
    syncs_per_msg: f64,
}

async fn run(root: &Path, args: &Args, variant: Variant) -> Figures {
    let mut spool = Spool::open(root, true).expect("spool");
    if variant != Variant::SegmentLog {
        spool = spool.with_a_file_per_message();
    }
    if variant == Variant::OwnDirFsync {
        spool = spool.with_ungrouped_dir_sync();
    }
    let message = Arc::new(vec![b'x'; args.size]);
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (spool, message, next, n) = (spool.clone(), message.clone(), next.clone(), args.n);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let env = envelope(i, message.len());
                let mut incoming = spool.begin(&env).await.expect("begin");
                incoming.write(&message).await.expect("write");
                incoming.commit(&env).await.expect("commit");
                let s = spool.clone();
                tokio::task::spawn_blocking(move || {
                    let read = s.read(&env.id).expect("read");
                    assert_eq!(read.message().len(), env.size as usize);
                    s.remove(&env.id).expect("remove");
                })
                .await
                .expect("delivery");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let (wall, cpu) = (t0.elapsed(), cpu_seconds() - cpu0);
    let syncs = match variant {
        Variant::OwnDirFsync => args.n as u64,
        Variant::GroupedDirFsync => spool.dir_sync_counts().0,
        Variant::SegmentLog => spool.segment_sync_counts().0 + spool.dir_sync_counts().0,
    };
    figures(args.n, wall, cpu, syncs)
}

fn figures(n: usize, wall: Duration, cpu: f64, syncs: u64) -> Figures {
    Figures {
        rate: n as f64 / wall.as_secs_f64(),
        cpu_us: cpu * 1e6 / n as f64,
        syncs_per_msg: syncs as f64 / n as f64,
    }
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "spool bench: {} messages x {} bytes, {} concurrent writers, fsync on, {cores} cores, under {}",
        args.n,
        args.size,
        args.concurrency,
        base.path().display()
    );
    let variants = [
        Variant::OwnDirFsync,
        Variant::GroupedDirFsync,
        Variant::SegmentLog,
    ];
    let mut totals = vec![(0.0f64, 0.0f64); variants.len()];
    for round in 0..args.rounds {
        for (k, v) in variants.iter().enumerate() {
            let dir = base.path().join(format!("r{round}-{k}"));
            let f = runtime.block_on(async { run(&dir, &args, *v).await });
            println!(
                "round {round}  {:<26} {:>8.1} msg/s  {:>7.1} us CPU/msg  {:.3} syncs/msg",
                v.name(),
                f.rate,
                f.cpu_us,
                f.syncs_per_msg
            );
            totals[k].0 += f.rate;
            totals[k].1 += f.cpu_us;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let r = args.rounds.max(1) as f64;
    let (log_rate, log_cpu) = (totals[2].0 / r, totals[2].1 / r);
    for (k, v) in variants.iter().enumerate() {
        let (rate, cpu) = (totals[k].0 / r, totals[k].1 / r);
        println!(
            "mean  {:<26} {rate:>8.1} msg/s ({:.2}x the log)  {cpu:>7.1} us CPU/msg ({:.2}x the log)",
            v.name(),
            rate / log_rate,
            cpu / log_cpu
        );
        let key = ["own_dir_fsync", "grouped_dir_fsync", "segment_log"][k];
        println!("bench.{key}_per_s={rate:.1}");
        println!("bench.{key}_cpu_us={cpu:.1}");
    }
}
