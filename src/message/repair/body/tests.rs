//! The body repair from an attacker's side: boundaries in quotes and comments, nested and
//! unclosed multiparts, long boundary lines, sealed parts, and a deterministic fuzz loop.

use super::*;
use crate::message::repair::mime::PartType;
use crate::message::HeaderBlock;

/// Runs both passes over a whole message; returns the plan and the repaired message.
fn repair(message: &[u8]) -> (Plan, Vec<u8>) {
    let block = HeaderBlock::parse(message).unwrap();
    let top = PartType::of(block.fields.iter().map(|f| (f.name, f.value)));
    let (head, body) = message.split_at(block.body_offset);
    let mut scan = Scan::new(top.clone(), 1 << 16);
    // In uneven pieces, as the network gives them.
    for piece in body.chunks(7) {
        scan.feed(piece);
    }
    let plan = scan.finish();
    let mut out = if plan.reencode.contains(&0) {
        let h = &head[..head.len() - 2];
        let mut v = set_qp(h);
        v.extend_from_slice(b"\r\n");
        v
    } else {
        head.to_vec()
    };
    let mut rw = Rewrite::new(top, 1 << 16, &plan);
    for piece in body.chunks(13) {
        rw.feed(piece);
    }
    rw.finish();
    out.extend_from_slice(&rw.out);
    (plan, out)
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn max_line(message: &[u8]) -> usize {
    message
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_single_part_body_with_a_long_line_becomes_quoted_printable() {
    let msg = format!(
        "From: a@example.com\r\nContent-Transfer-Encoding: 8bit\r\n\r\nshort a=b\r\n{}\r\n",
        long(2000)
    );
    let (plan, out) = repair(msg.as_bytes());
    assert_eq!(plan.problem, None);
    assert!(plan.reencode.contains(&0));
    assert!(max_line(&out) <= 76);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert!(!text.contains("8bit"));
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        qp::decode(body.as_bytes()),
        format!("short a=b\r\n{}\r\n", long(2000)).into_bytes()
    );
}

#[test]
fn only_the_offending_part_of_a_multipart_is_reencoded() {
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"b 1\"\r\n\r\n\
         preamble\r\n--b 1\r\nContent-Type: text/plain\r\n\r\nfine = line\r\n\
         --b 1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{}\r\n\
         --b 1--\r\nepilogue\r\n",
        long(2000)
    );
    let (plan, out) = repair(msg.as_bytes());
    assert_eq!(plan.problem, None);
    assert_eq!(plan.reencode.iter().copied().collect::<Vec<_>>(), [2]);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("fine = line\r\n"),
        "the first part is untouched"
    );
    assert!(text.contains(
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    ));
    assert!(max_line(text.as_bytes()) <= 998);
    assert!(text.ends_with("--b 1--\r\nepilogue\r\n"));
}

#[test]
fn a_long_line_under_a_signature_is_not_repairable() {
    for kind in [
        "signed; protocol=\"application/pgp-signature\"",
        "encrypted",
    ] {
        let msg = format!(
            "From: a@example.com\r\nContent-Type: multipart/{kind}; boundary=s\r\n\r\n\
             --s\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n--inner\r\n\r\n{}\r\n--inner--\r\n--s\r\n\r\nsig\r\n--s--\r\n",
            long(1200)
        );
        let (plan, _) = repair(msg.as_bytes());
        assert_eq!(plan.problem, Some(Unrepairable::Sealed), "{kind}");
    }
}

#[test]
fn boundary_tricks_are_read_as_mime_readers_read_them() {
    // A boundary= inside a comment is no boundary; the quoted one is.
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed (boundary=fake);\r\n boundary=\"real\"\r\n\r\n\
         --fake\r\n\r\n--real\r\n\r\n{}\r\n--real--\r\n",
        long(1000)
    );
    let (plan, out) = repair(msg.as_bytes());
    assert_eq!(plan.problem, None);
    assert_eq!(plan.reencode.len(), 1);
    assert!(max_line(&out) <= 998);
    // "--fake" is preamble text, untouched.
    assert!(String::from_utf8_lossy(&out).contains("\r\n\r\n--fake\r\n"));

    // A line that merely starts with the boundary is content, not a boundary.
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\n\r\n--bx{}\r\n--b--\r\n",
        long(1000)
    );
    let (plan, _) = repair(msg.as_bytes());
    assert_eq!(plan.reencode.len(), 1);
}

#[test]
fn a_missing_final_boundary_and_nested_parts_are_followed() {
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n\
         --outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n\
         --inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n\
         --outer\r\nContent-Type: text/plain\r\n\r\n{}\r\n",
        long(3000)
    );
    let (plan, out) = repair(msg.as_bytes());
    assert_eq!(plan.problem, None);
    assert_eq!(plan.reencode.iter().copied().collect::<Vec<_>>(), [3]);
    assert!(max_line(&out) <= 998);
}

#[test]
fn a_boundary_line_padded_past_998_loses_its_padding() {
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b{}\r\n\r\ntext\r\n--b--\r\n",
        " ".repeat(1500)
    );
    let (plan, out) = repair(msg.as_bytes());
    assert!(plan.needs_rewrite());
    assert!(String::from_utf8_lossy(&out).contains("\r\n--b\r\n\r\ntext\r\n"));
}

#[test]
fn encoded_preamble_and_message_parts_are_refused_with_the_reason() {
    for (ct, cte, want) in [
        ("text/plain", "base64", Unrepairable::Encoded),
        ("text/plain", "quoted-printable", Unrepairable::Encoded),
        ("text/plain", "x-custom", Unrepairable::Encoded),
        ("message/rfc822", "8bit", Unrepairable::Message),
    ] {
        let msg = format!(
            "From: a@example.com\r\nContent-Type: {ct}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{}\r\n",
            long(1000)
        );
        assert_eq!(repair(msg.as_bytes()).0.problem, Some(want), "{ct} {cte}");
    }
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b--\r\n",
        long(1000)
    );
    assert_eq!(
        repair(msg.as_bytes()).0.problem,
        Some(Unrepairable::Structure)
    );
}

#[test]
fn a_long_part_header_line_is_folded() {
    let words: String = (0..300).map(|i| format!(" w{i}")).collect();
    let msg = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain; x-note=\"{words}\"\r\n\r\nx\r\n--b--\r\n"
    );
    let (plan, out) = repair(msg.as_bytes());
    assert_eq!(plan.problem, None);
    assert!(plan.fold.contains(&1));
    assert!(max_line(&out) <= 998);
}

/// A small deterministic fuzz loop: random mutations of a corpus never panic, and what
/// the rewrite gives has no line over 998 octets (when the plan has no problem) and
/// walks again to a plan with nothing left to do.
#[test]
fn mutations_never_panic_and_repaired_output_is_clean() {
    let corpus: Vec<Vec<u8>> = vec![
        format!("From: a@example.com\r\n\r\n{}\r\n", long(1500)).into_bytes(),
        format!(
            "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"q\"\r\n\r\n\
             --q\r\nContent-Type: text/plain\r\n\r\n{}\r\n--q\r\nContent-Type: multipart/signed; boundary=s\r\n\r\n--s\r\n\r\nx\r\n--s--\r\n--q--\r\n",
            long(1100)
        )
        .into_bytes(),
        b"From: a@example.com\r\nContent-Type: multipart/alternative; boundary=z\r\n\r\n--z\r\n\r\n--z--\r\n".to_vec(),
    ];
    let alphabet: &[&[u8]] = &[
        b"\r\n",
        b"--q",
        b"--z--",
        b"--s",
        b"\r\n\r\n",
        b"x",
        b" ",
        b"=",
        b"\"",
        b"(",
        b")",
        b"Content-Type: multipart/mixed; boundary=q\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        &[0xc3, 0xa9],
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let mut m = corpus[round % corpus.len()].clone();
        let header_end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for _ in 0..(next() % 6 + 1) {
            let at = header_end + (next() as usize) % (m.len() - header_end + 1);
            match next() % 3 {
                0 => {
                    let piece = alphabet[(next() as usize) % alphabet.len()];
                    m.splice(at..at, piece.iter().copied());
                }
                1 if at < m.len() => {
                    let n = ((next() as usize) % 8).min(m.len() - at);
                    m.drain(at..at + n);
                }
                _ => {
                    let n = (next() % 1500) as usize;
                    m.splice(at..at, std::iter::repeat_n(b'y', n));
                }
            }
        }
        let (plan, out) = repair(&m);
        if plan.problem.is_none() {
            assert!(max_line(&out) <= 998, "round {round}");
            let (again, _) = repair(&out);
            assert_eq!(again.problem, None, "round {round}");
            assert!(!again.needs_rewrite(), "round {round}");
        }
    }
}
