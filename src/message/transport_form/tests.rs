use super::*;
use mail_parser::{MessageParser, MimeHeaders};

const SEVEN: Form = Form {
    smtputf8: false,
    encode_headers: true,
    body_8bitmime: false,
    body_to_qp: true,
};

fn converted(message: &str, form: Form) -> Vec<u8> {
    let out = convert(message.as_bytes(), form).unwrap().into_owned();
    for line in out.split(|&b| b == b'\n') {
        assert!(line.len() <= 998, "line over 998");
    }
    out
}

fn assert_7bit(out: &[u8]) {
    assert!(out.is_ascii(), "{}", String::from_utf8_lossy(out));
}

#[test]
fn the_form_follows_what_the_upstream_offers() {
    let uses = Uses {
        utf8: true,
        utf8_headers: true,
        eight_bit: true,
    };
    let both = Offer {
        smtputf8: true,
        eight_bit_mime: true,
    };
    let f = Form::for_upstream(uses, both);
    assert!(f.smtputf8 && f.body_8bitmime && !f.converts());
    let f = Form::for_upstream(uses, Offer::default());
    assert!(!f.smtputf8 && f.encode_headers && f.body_to_qp);
    let f = Form::for_upstream(
        uses,
        Offer {
            smtputf8: false,
            eight_bit_mime: true,
        },
    );
    assert!(f.encode_headers && !f.body_to_qp && f.body_8bitmime);
    // ASCII mail is never touched.
    let f = Form::for_upstream(Uses::default(), Offer::default());
    assert!(!f.converts());
    let ascii = "Subject: hi\r\n\r\nbody\r\n";
    assert!(matches!(
        convert(ascii.as_bytes(), SEVEN).unwrap(),
        Cow::Borrowed(_)
    ));
}

#[test]
fn a_utf8_subject_and_8bit_body_become_7bit_and_read_the_same() {
    let msg = "From: Jörg <j@example.com>\r\nSubject: Grüße\r\nX-Note:\r\n folded ä\r\n\r\nLiebe Grüße\r\n.\r\nZeile mit Leerzeichen am Ende \r\n";
    let out = converted(msg, SEVEN);
    assert_7bit(&out);
    let parsed = MessageParser::new().parse(&out[..]).unwrap();
    assert_eq!(parsed.subject(), Some("Grüße"));
    assert_eq!(parsed.from().unwrap().first().unwrap().name(), Some("Jörg"));
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "Liebe Grüße\r\n.\r\nZeile mit Leerzeichen am Ende \r\n"
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
        "{text}"
    );
}

#[test]
fn headers_only_when_the_body_may_stay_8bit() {
    let msg = "Subject: Grüße\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n";
    let form = Form {
        body_to_qp: false,
        body_8bitmime: true,
        ..SEVEN
    };
    let out = String::from_utf8(converted(msg, form)).unwrap();
    assert!(out.starts_with("Subject: =?UTF-8?B?"), "{out}");
    assert!(out.ends_with("8bit\r\n\r\nGrüße\r\n"), "{out}");
}

#[test]
fn long_8bit_lines_get_soft_breaks() {
    let line = "ä".repeat(400);
    let msg = format!("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{line}\r\n");
    let out = converted(&msg, SEVEN);
    assert_7bit(&out);
    assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= 78));
    let parsed = MessageParser::new().parse(&out[..]).unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), line);
}

const MULTIPART: &str = "From: a@example.com\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
preamble\r\n\
--outer\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Grüße oben\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
innen grün\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
<p>gr=C3=BCn</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAEC\r\n\
--outer--\r\n\
epilogue\r\n";

#[test]
fn nested_8bit_parts_are_converted_and_encoded_parts_kept() {
    let out = converted(MULTIPART, SEVEN);
    assert_7bit(&out);
    let text = String::from_utf8(out.clone()).unwrap();
    // Parts already in 7 bits are byte for byte the same.
    assert!(
        text.contains(
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>gr=C3=BCn</p>\r\n--inner--"
        ),
        "{text}"
    );
    assert!(
        text.contains("Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--outer--\r\nepilogue\r\n"),
        "{text}"
    );
    // The multipart itself now says 7bit; no part keeps its old 8bit field.
    assert!(!text.contains("8bit"), "{text}");
    let parsed = MessageParser::new().parse(&out[..]).unwrap();
    let texts: Vec<String> = parsed
        .text_bodies()
        .map(|p| p.text_contents().unwrap_or("").to_string())
        .collect();
    assert!(
        texts.iter().any(|t| t.starts_with("Grüße oben")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("innen grün")),
        "{texts:?}"
    );
    assert_eq!(parsed.attachment(0).unwrap().contents(), [0, 1, 2]);
    assert_eq!(
        parsed
            .attachment(0)
            .unwrap()
            .content_type()
            .unwrap()
            .ctype(),
        "application"
    );
}

#[test]
fn signed_or_broken_parts_are_refused_not_altered() {
    let signed = "Content-Type: multipart/signed; boundary=b; protocol=\"application/pgp-signature\"\r\n\r\n--b\r\n\r\nGrüße\r\n--b--\r\n";
    assert!(matches!(
        convert(signed.as_bytes(), SEVEN),
        Err(Unconvertible::Protected(_))
    ));
    let bad_qp = "Content-Transfer-Encoding: quoted-printable\r\n\r\nGrüße\r\n";
    assert!(matches!(
        convert(bad_qp.as_bytes(), SEVEN),
        Err(Unconvertible::BadEncoding(_))
    ));
    let preamble =
        "Content-Type: multipart/mixed; boundary=b\r\n\r\nGrüße\r\n--b\r\n\r\nx\r\n--b--\r\n";
    assert_eq!(
        convert(preamble.as_bytes(), SEVEN),
        Err(Unconvertible::OutsideParts)
    );
    let utf8_from = "From: jörg@example.com\r\n\r\nx\r\n";
    assert!(matches!(
        convert(utf8_from.as_bytes(), SEVEN),
        Err(Unconvertible::Header(Unencodable::Address(_)))
    ));
    let latin1 = b"Subject: caf\xe9\r\n\r\nx\r\n";
    assert!(matches!(
        convert(latin1, SEVEN),
        Err(Unconvertible::Header(Unencodable::NotUtf8(_)))
    ));
}

#[test]
fn hostile_structure_does_not_panic() {
    let mut deep = String::new();
    for n in 0..100 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{n}\r\n\r\n--b{n}\r\n"
        ));
    }
    deep.push_str("\r\nä\r\n");
    assert_eq!(convert(deep.as_bytes(), SEVEN), Err(Unconvertible::TooDeep));
    for msg in [
        "Content-Type: multipart/mixed; boundary=\r\n\r\nä\r\n",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nä",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n--b\r\n\r\nä\r\n--b--",
        "Content-Type: message/rfc822\r\n\r\nSubject: ä\r\n\r\nö\r\n",
        "\r\nä\r\n",
        "Subject: ä",
        "",
    ] {
        if let Ok(out) = convert(msg.as_bytes(), SEVEN) {
            assert_7bit(&out);
        }
    }
}
