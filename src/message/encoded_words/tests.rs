use super::*;
use mail_parser::MessageParser;

/// The field as encoded, checked for 7 bits and line lengths, and parsed back.
fn encoded(name: &str, value: &str) -> (String, mail_parser::Message<'static>) {
    let field = encode_field(name, value.as_bytes()).unwrap();
    assert!(field.is_ascii(), "{field}");
    for line in field.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(line.len() <= MAX_LINE, "line too long: {line:?}");
    }
    for word in field.split([' ', '\r', '\n', '(', ')']) {
        if word.starts_with("=?UTF-8") {
            assert!(word.len() <= MAX_WORD, "{word}");
        }
    }
    let msg = format!("{field}\r\nbody\r\n");
    let parsed = MessageParser::new()
        .parse(msg.as_bytes())
        .unwrap()
        .into_owned();
    (field, parsed)
}

fn subject(value: &str) -> String {
    let (_, parsed) = encoded("Subject", value);
    parsed.subject().unwrap().to_string()
}

#[test]
fn a_utf8_subject_reads_back_the_same() {
    assert_eq!(subject(" Grüße"), "Grüße");
    assert_eq!(
        subject(" Re: Grüße aus Köln, 3 Tage"),
        "Re: Grüße aus Köln, 3 Tage"
    );
    // ASCII words keep their spelling outside the encoded run.
    let field = encode_field("Subject", " Re: Grüße aus Köln, 3 Tage".as_bytes()).unwrap();
    assert!(field.starts_with("Subject: Re: =?UTF-8?B?"), "{field}");
    assert!(field.ends_with(" 3 Tage\r\n"), "{field}");
}

#[test]
fn a_long_subject_takes_several_words_folded_under_76() {
    let long: String = "Größenänderung 🎉 ".repeat(20);
    let (field, parsed) = encoded("Subject", &format!(" {long}"));
    assert!(field.matches("=?UTF-8?B?").count() > 5, "{field}");
    assert!(field.contains("\r\n "), "{field}");
    assert_eq!(parsed.subject().unwrap(), long.trim_end());
    // Every word holds whole characters: each decodes as UTF-8 on its own.
    let engine = base64::engine::general_purpose::STANDARD;
    for word in field
        .split([' ', '\r', '\n'])
        .filter(|w| w.starts_with("=?"))
    {
        let b64 = word.trim_start_matches(PREFIX).trim_end_matches("?=");
        let bytes = engine.decode(b64).unwrap();
        assert!(String::from_utf8(bytes).is_ok(), "{word}");
    }
}

#[test]
fn a_value_folded_across_lines_is_unfolded_first() {
    assert_eq!(subject(" Grüße\r\n aus\r\n\tKöln"), "Grüße aus Köln");
}

#[test]
fn existing_encoded_words_stay_and_spaces_next_to_them_survive() {
    let value = " =?ISO-8859-1?Q?J=F6rg?= grüßt =?ISO-8859-1?Q?J=F6rg?=";
    let field = encode_field("Subject", value.as_bytes()).unwrap();
    assert_eq!(
        field.matches("=?ISO-8859-1?Q?J=F6rg?=").count(),
        2,
        "{field}"
    );
    assert_eq!(subject(value), "Jörg grüßt Jörg");
}

#[test]
fn display_names_and_comments_are_encoded_addresses_are_not() {
    let (field, parsed) = encoded("From", " Jörg Müller <joerg@example.com>");
    assert!(field.contains("<joerg@example.com>"), "{field}");
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Jörg Müller"));
    assert_eq!(from.address(), Some("joerg@example.com"));

    let (_, parsed) = encoded("To", " \"Müller, Jörg\" <j@example.com>, plain@example.com");
    let to: Vec<_> = parsed.to().unwrap().iter().collect();
    assert_eq!(to[0].name(), Some("Müller, Jörg"));
    assert_eq!(to[1].address(), Some("plain@example.com"));

    let (field, _) = encoded("From", " root@example.com (Crön Dæmon)");
    assert!(
        field.starts_with("From: root@example.com (=?UTF-8?B?"),
        "{field}"
    );

    for bad in [
        " jörg@example.com",
        " Jörg <jörg@example.com>",
        " <joerg@bücher.example>",
        " \"jörg\"@example.com",
    ] {
        assert_eq!(
            encode_field("From", bad.as_bytes()),
            Err(Unencodable::Address("From".into())),
            "{bad}"
        );
    }
}

#[test]
fn a_group_name_is_a_phrase() {
    let (_, parsed) = encoded("To", " Empfänger: a@example.com, b@example.com;");
    let group = parsed.to().unwrap().as_group().unwrap();
    assert_eq!(group[0].name.as_deref(), Some("Empfänger"));
}

#[test]
fn structured_fields_and_invalid_utf8_are_refused() {
    assert_eq!(
        encode_field("Message-ID", " <grüße@example.com>".as_bytes()),
        Err(Unencodable::Structured("Message-ID".into()))
    );
    assert!(matches!(
        encode_field("Content-Type", b" text/plain; name=\"gr\xc3\xbc.txt\""),
        Err(Unencodable::Structured(_))
    ));
    assert_eq!(
        encode_field("Subject", b" caf\xe9"),
        Err(Unencodable::NotUtf8("Subject".into()))
    );
}

#[test]
fn hostile_values_do_not_panic() {
    for value in [
        " (unclosed cömment",
        " \"unclosed quöte",
        " <unclosed ängle",
        " Jörg (nested (cömment) here) <a@example.com>",
        " ((((ä",
        " ä\\",
        " \"\\ä\" <a@example.com>",
        " ,,,ä,,,",
        " :;ä:;",
    ] {
        let _ = encode_field("From", value.as_bytes());
        let _ = encode_field("Subject", value.as_bytes());
    }
    // A word far over 76 bytes still becomes words that fit.
    let huge = "ä".repeat(2000);
    let field = encode_field("Subject", format!(" {huge}").as_bytes()).unwrap();
    assert!(field.split("\r\n").all(|l| l.len() <= MAX_LINE));
}
