//! A deterministic fuzz of the XML parser and the unpacking, run by `cargo test`: the
//! samples mutated (bytes flipped, cut, spliced, repeated), random bytes, deep nesting and
//! long runs. Each input must end in a report or an [`ImportError`], never a panic; every
//! input is under 64 KB and the limits are small, so memory stays bounded however an input
//! is built. The generator is a fixed-seed xorshift, so a failure repeats exactly.

use super::unpack::read_stream;
use super::Limits;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn samples() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dmarc");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e != "py"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // The XML inside the compressed samples, so mutations reach the parser itself.
    let plain: Vec<Vec<u8>> = out
        .iter()
        .filter(|b| b.starts_with(&[0x1f, 0x8b]))
        .map(|b| {
            let mut x = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&b[..]), &mut x).unwrap();
            x
        })
        .collect();
    out.extend(plain);
    out
}

fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        if b.is_empty() {
            b.push(b'<');
        }
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => b[at] = rng.next() as u8,
            1 => b.truncate(at),
            2 => {
                let end = (at + rng.below(64)).min(b.len());
                let piece = b[at..end].to_vec();
                let times = rng.below(50);
                for _ in 0..times {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            3 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(256)).min(other.len());
                b.splice(at..at, other[from..end].iter().copied());
            }
            4 => {
                let tokens: [&[u8]; 8] = [
                    b"<",
                    b">",
                    b"</",
                    b"&",
                    b"&amp;",
                    b"&#0;",
                    b"<![CDATA[",
                    b"<!DOCTYPE x>",
                ];
                let t = tokens[rng.below(tokens.len())];
                b.splice(at..at, t.iter().copied());
            }
            5 => {
                b.remove(at);
            }
            _ => b[at] ^= 1 << rng.below(8),
        }
        b.truncate(64 << 10);
    }
    b
}

fn limits() -> Limits {
    Limits {
        max_input: 256 << 10,
        max_xml: 1 << 20,
        max_records: 1000,
        ..Limits::default()
    }
}

#[test]
fn mutated_samples_and_random_bytes_never_panic() {
    let pool = samples();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let limits = limits();
    for i in 0..3000 {
        let input = if i % 10 == 0 {
            (0..rng.below(4096)).map(|_| rng.next() as u8).collect()
        } else {
            let base = &pool[rng.below(pool.len())];
            mutate(&mut rng, base, &pool)
        };
        let _ = read_stream(&input[..], "fuzz", &limits);
        let _ = super::parse::parse(&input[..], &limits);
    }
}

#[test]
fn deep_nesting_and_long_runs_end_in_an_error() {
    let limits = limits();
    for input in [
        "<feedback>".to_string() + &"<x>".repeat(100_000),
        "<feedback>".to_string() + &"<x/>".repeat(100_000),
        "<".repeat(100_000),
        "<feedback>".to_string() + &"&amp;".repeat(100_000),
        "<feedback a='".to_string() + &"x".repeat(500_000),
        "<!--".to_string() + &"-".repeat(500_000),
    ] {
        let found = read_stream(input.as_bytes(), "deep", &limits);
        assert!(found.iter().all(|f| f.result.is_err()), "{found:?}");
    }
}
