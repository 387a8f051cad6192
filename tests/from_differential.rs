//! The From reader against a second opinion: Python's RFC 5322 parser
//! (`email.headerregistry`) reads a generated set of From values (comments, groups,
//! encoded words, quoted strings, folds, obsolete syntax, several addresses). For every
//! value the relay accepts, Python must see exactly one mailbox, not in a group, with the
//! same domain. Values the relay refuses need no agreement.

use dkim_relay::message::{from_domain, HeaderBlock};
use std::io::Write;
use std::process::{Command, Stdio};

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// From values (what follows "From:") built from pieces an attacker or an odd mailer uses.
fn generated_forms() -> Vec<String> {
    let names = [
        "",
        "Joe",
        "Joe Q. Public",
        "\"Doe, Joe\"",
        "=?UTF-8?Q?J=C3=B6e?=",
        "=?UTF-8?B?eUBvdGhlci5vcmc=?=",
        "\"x@other.org\"",
        "y@other.org",
        "(c) Joe",
        "Joe (y@other.org)",
        "\"<y@other.org>\"",
        "\"Joe\\\" <y@other.org>\"",
        "Joe\r\n Bloggs",
        ".Joe",
        "Joe:",
        "<y@other.org>",
    ];
    let addrs = [
        "x@example.com",
        "x@Example.COM",
        "x.y+z@mail.example.com",
        "x@other.org",
        "\"x\"@example.com",
        "\"x@other.org\"@example.com",
        "x@@example.com",
        "a@b@example.com",
        "x@example.com.",
        "x @ example.com",
        "x@exa\r\n mple.com",
        "x@example\r\n .com",
        "x(c)@example.com",
        "x@(c)example.com",
        "=?utf-8?q?y=40other.org?=@example.com",
        "x@[192.0.2.1]",
        "x",
        "x@localhost",
        "",
        "x..y@example.com",
        "x\\@other.org@example.com",
        "x%other.org@example.com",
        "@other.org:x@example.com",
    ];
    let shapes = [
        "{a}",
        " {a}",
        " {n} <{a}>",
        " {n}<{a}>",
        " <{a}>",
        " {n} <{a}> (cron)",
        " {a} ({n})",
        " <{a}> <y@other.org>",
        " <y@other.org> <{a}>",
        " {a}, y@other.org",
        " {n} <{a}>, y@other.org",
        " grp: {n} <{a}>;",
        " grp:;",
        "\r\n {n}\r\n <{a}>",
        " {n} <{a}> y@other.org",
        " {n} <{a}>>",
        " <> {n} <{a}>",
        " {n} <{a} >",
        " {n} < {a}>",
        " ({n}) {a}",
        " {a} (unclosed",
        " \"{n} <{a}>",
    ];
    let mut out = Vec::new();
    for shape in shapes {
        for n in names {
            for a in addrs {
                let form = shape.replace("{n}", n).replace("{a}", a);
                if !out.contains(&form) {
                    out.push(form);
                }
            }
        }
    }
    out
}

#[test]
fn every_accepted_from_is_read_as_the_same_single_mailbox_by_python() {
    let forms = generated_forms();
    let ours: Vec<Option<String>> = forms
        .iter()
        .map(|value| {
            let message = format!("From:{value}\r\nTo: u@example.net\r\n\r\nbody\r\n");
            let headers = HeaderBlock::parse(message.as_bytes()).ok()?;
            from_domain(&headers).ok()
        })
        .collect();

    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/read_from.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (the second RFC 5322 parser)");
    let mut input = String::new();
    for form in &forms {
        input.push_str(&json_string(form));
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let theirs: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), forms.len());

    let mut accepted = 0;
    let mut disagreements = Vec::new();
    for ((form, ours), theirs) in forms.iter().zip(&ours).zip(&theirs) {
        let Some(domain) = ours else { continue };
        accepted += 1;
        let groups = theirs["groups"].as_array();
        let single = match groups.map(Vec::as_slice) {
            Some([g]) if g["group"] == false => {
                match g["mailboxes"].as_array().map(Vec::as_slice) {
                    Some([m]) => m[1].as_str().map(str::to_ascii_lowercase),
                    _ => None,
                }
            }
            _ => None,
        };
        if single.as_deref() != Some(domain.as_str()) {
            disagreements.push(format!("{form:?}: ours {domain}, python {theirs}"));
        }
    }
    eprintln!(
        "{} forms, {accepted} accepted, {} refused, {} disagreements",
        forms.len(),
        forms.len() - accepted,
        disagreements.len()
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    // The everyday forms are among the accepted: the check is not vacuous.
    assert!(accepted >= 40, "only {accepted} accepted");
    for everyday in [
        " x@example.com",
        " Joe <x@example.com>",
        " \"Doe, Joe\" <x@example.com> (cron)",
        " =?UTF-8?Q?J=C3=B6e?= <x@example.com>",
        " Joe Q. Public <x@example.com>",
    ] {
        let i = forms.iter().position(|f| f == everyday).unwrap();
        assert_eq!(ours[i].as_deref(), Some("example.com"), "{everyday}");
    }
}

/// The interop corpus holds what real mailers send: every From in it is still accepted.
#[test]
fn every_from_in_the_interop_corpus_is_still_accepted() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/corpus");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        // repair-*.eml hold what the relay repairs before this check (issue 14), such as
        // cron's bare From, qualified with qualify_domain.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("repair-"))
        {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        // The corpus files are stored with LF; the relay sees CRLF.
        let text = String::from_utf8_lossy(&raw)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        let headers = HeaderBlock::parse(text.as_bytes()).unwrap();
        let domain = from_domain(&headers);
        assert!(domain.is_ok(), "{}: {domain:?}", path.display());
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");
}
