use super::*;
use std::borrow::Cow;

fn mail(line: &str) -> Result<CommandPath<'_>, PathError> {
    command_path(line.as_bytes())
}

fn wire(line: &str) -> String {
    mail(line).unwrap().path.to_string()
}

#[test]
fn plain_addresses_pass_unchanged() {
    assert_eq!(wire("MAIL FROM:<joe@example.com>\r\n"), "joe@example.com");
    assert_eq!(
        wire("MAIL FROM: <Joe.Q+x@Mail.Example.com>\r\n"),
        "Joe.Q+x@Mail.Example.com"
    );
    assert_eq!(mail("MAIL FROM:<>\r\n").unwrap().path, ReversePath::Null);
    let p = mail("MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\n").unwrap();
    assert_eq!(p.parameters, " SIZE=10 BODY=8BITMIME");
    // A source route is accepted and dropped (RFC 5321 §4.1.2, appendix C).
    assert_eq!(
        wire("RCPT TO:<@a.example,@b.example:u@example.net>\r\n"),
        "u@example.net"
    );
}

#[test]
fn quoted_local_parts_are_written_quoted_again() {
    assert_eq!(
        wire("MAIL FROM:<\"joe\"@example.com>\r\n"),
        "joe@example.com"
    );
    assert_eq!(
        wire("MAIL FROM:<\"a b\"@example.com>\r\n"),
        "\"a b\"@example.com"
    );
    assert_eq!(
        wire("MAIL FROM:<\"a\\\"b\"@example.com>\r\n"),
        "\"a\\\"b\"@example.com"
    );
    assert_eq!(
        wire("MAIL FROM:<\"a\\\\b\"@example.com>\r\n"),
        "\"a\\\\b\"@example.com"
    );
    assert_eq!(
        wire("MAIL FROM:<\"x@other.org\"@example.com>\r\n"),
        "\"x@other.org\"@example.com"
    );
    assert_eq!(
        wire("MAIL FROM:<\"a..b\"@example.com>\r\n"),
        "\"a..b\"@example.com"
    );
    assert_eq!(wire("MAIL FROM:<\"\\a\"@example.com>\r\n"), "a@example.com");
}

#[test]
fn parameter_injection_through_quotes_is_refused() {
    for line in [
        "MAIL FROM:<\"x@other.org> AUTH=<ceo\"@example.com>\r\n",
        "MAIL FROM:<\"x> RET=FULL ENVID=<y\"@example.com>\r\n",
        "RCPT TO:<\"x> NOTIFY=SUCCESS ORCPT=rfc822;<y\"@example.net>\r\n",
        "RCPT TO:<\"x\\>\"@example.net>\r\n",
    ] {
        assert_eq!(mail(line), Err(PathError::AngleBracket), "{line}");
    }
}

#[test]
fn malformed_paths_are_refused_with_the_reason() {
    // Found by the `addresses` fuzz target: smtp-proto refuses addresses over 256 octets.
    let long = format!("MAIL FROM:<{}joe@e.example>\r\n", "=".repeat(245));
    let cases: &[(&str, PathError)] = &[
        ("MAIL FROM:joe@example.com\r\n", PathError::NoBrackets),
        ("MAIL FROM:<joe@example.com\r\n", PathError::Unclosed),
        ("MAIL FROM:<joe@example.com>x\r\n", PathError::Trailing),
        ("MAIL FROM:<joe@example.com>>\r\n", PathError::Trailing),
        ("MAIL FROM:<joe>\r\n", PathError::NoDomain),
        ("MAIL FROM:<@example.com>\r\n", PathError::BadSourceRoute),
        (
            "MAIL FROM:<\"\"@example.com>\r\n",
            PathError::EmptyLocalPart,
        ),
        ("MAIL FROM:<a..b@example.com>\r\n", PathError::BadLocalPart),
        ("MAIL FROM:<.a@example.com>\r\n", PathError::BadLocalPart),
        ("MAIL FROM:<a.@example.com>\r\n", PathError::BadLocalPart),
        ("MAIL FROM:<a b@example.com>\r\n", PathError::BadLocalPart),
        ("MAIL FROM:<a(c)@example.com>\r\n", PathError::BadLocalPart),
        (
            "MAIL FROM:<\"a\tb\"@example.com>\r\n",
            PathError::ControlCharacter,
        ),
        (
            "MAIL FROM:<\"a\x7fb\"@example.com>\r\n",
            PathError::ControlCharacter,
        ),
        ("MAIL FROM:<\"ab@example.com\r\n", PathError::UnclosedQuote),
        ("MAIL FROM:<\"ab@example.com>\r\n", PathError::AngleBracket),
        ("MAIL FROM:<a@b@example.com>\r\n", PathError::BadDomain),
        ("MAIL FROM:<a@example.com.>\r\n", PathError::BadDomain),
        ("MAIL FROM:<a@[192.0.2.1]>\r\n", PathError::BadDomain),
        ("MAIL FROM:<a@exa$mple.com>\r\n", PathError::BadDomain),
        ("MAIL FROM:<a@-x.com>\r\n", PathError::BadDomain),
        ("MAIL FROM:<a@example.com >\r\n", PathError::BadDomain),
        (
            "MAIL FROM:<j\u{f6}e@b\u{fc}cher..example>\r\n",
            PathError::BadDomain,
        ),
        (&long, PathError::TooLong),
    ];
    for (line, want) in cases {
        assert_eq!(mail(line).err(), Some(*want), "{line:?}");
    }
}

/// Local parts from the classes that matter: atext, dots, specials, escapes, spaces.
fn generated_local_parts() -> Vec<String> {
    let pieces = [
        "a", "Z9", ".", "..", " ", "\"", "\\", "@", ",", ";", ":", "(", ")", "[", "]", "=", "+tag",
        "o'brien", "{x}", "%", "!", "~", "`", "#", "/", "?", "^", "|", "&", "*",
    ];
    let mut out = Vec::new();
    for a in pieces {
        for b in pieces {
            for c in ["", "x", ".", " ", "\\", "\""] {
                out.push(format!("{a}{b}{c}"));
            }
        }
    }
    out
}

/// Every mailbox the relay accepts is written so that smtp-proto (the server side of the
/// same protocol) reads back exactly that mailbox and no parameter, and so that our own
/// reader gives it back.
#[test]
fn every_written_path_reads_back_the_same_to_two_parsers() {
    let mut checked = 0;
    for local in generated_local_parts() {
        let quoted = local.replace('\\', "\\\\").replace('"', "\\\"");
        let line = format!("MAIL FROM:<\"{quoted}\"@example.com>\r\n");
        let Ok(read) = mail(&line) else {
            continue;
        };
        let mailbox = read.path.mailbox().unwrap().clone();
        assert_eq!(mailbox.local(), local);
        let written = format!("MAIL FROM:<{mailbox}> SIZE=1\r\n");
        assert_eq!(mail(&written).unwrap().path, read.path, "{written}");
        assert_eq!(Mailbox::parse(&mailbox.to_string()), Ok(mailbox.clone()));
        let Ok(smtp_proto::Request::Mail { from }) =
            smtp_proto::Request::parse(&mut written.as_bytes().iter())
        else {
            panic!("smtp-proto refused {written:?}");
        };
        assert_eq!(
            from.address,
            Cow::<str>::Owned(mailbox.unquoted()),
            "{written}"
        );
        assert_eq!(from.size, 1, "{written}");
        assert_eq!(written.matches('>').count(), 1, "{written}");
        checked += 1;
    }
    assert!(checked > 500, "only {checked} forms checked");
}

#[test]
fn utf8_addresses_read_as_rfc_6531_writes_them() {
    let m = match mail("MAIL FROM:<j\u{f6}rg@B\u{fc}cher.example> SMTPUTF8\r\n")
        .unwrap()
        .path
    {
        ReversePath::Mailbox(m) => m,
        ReversePath::Null => panic!("null"),
    };
    assert_eq!(m.local(), "j\u{f6}rg");
    assert!(!m.is_ascii());
    assert_eq!(m.ascii_form(), None, "a UTF-8 local part has no ASCII form");
    assert_eq!(Mailbox::parse(&m.to_string()).unwrap(), m);
    let joe = Mailbox::parse("joe@b\u{fc}cher.example").unwrap();
    assert_eq!(
        joe.ascii_form().unwrap().to_string(),
        "joe@xn--bcher-kva.example"
    );
    let quoted = Mailbox::parse("\"j\u{f6} rg\"@example.com").unwrap();
    assert_eq!(quoted.local(), "j\u{f6} rg");
    assert_eq!(quoted.to_string(), "\"j\u{f6} rg\"@example.com");
    // Not UTF-8 at all.
    assert_eq!(
        command_path(b"MAIL FROM:<j\xf6rg@example.com>\r\n").err(),
        Some(PathError::NonAscii)
    );
}
