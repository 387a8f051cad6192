//! The parser and the unpacking on the samples in tests/data/dmarc and on hostile input.

use super::feedback::{Disposition, Format};
use super::unpack::{read_path, read_stream};
use super::{parse::parse, ImportError, Limits};
use std::io::Write;
use std::path::{Path, PathBuf};

fn sample(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dmarc");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(name))
        .unwrap_or_else(|| panic!("no sample {name}"))
}

fn one(path: &Path, limits: &Limits) -> Result<super::Feedback, ImportError> {
    let mut found = read_path(path, limits);
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0).result
}

#[test]
fn the_three_receivers_formats_parse() {
    let limits = Limits::default();
    let google = one(&sample("google.com!"), &limits).unwrap();
    assert_eq!(google.org_name, "google.com");
    assert_eq!(google.report_id, "4417320957291860437");
    assert_eq!(google.format, Format::Rfc7489);
    assert_eq!(google.records.len(), 2);
    assert_eq!(google.records[0].count, 9800);
    assert!(google.records[0].dkim_aligned && !google.records[0].spf_aligned);
    assert_eq!(google.records[0].dkim[0].selector, "s1");
    let microsoft = one(&sample("microsoft.eml"), &limits).unwrap();
    assert_eq!(microsoft.org_name, "Outlook.com");
    assert_eq!(
        microsoft.format,
        Format::Rfc7489,
        "version 1.0 alone is not DMARCbis"
    );
    assert_eq!(microsoft.records[1].source_ip, "203.0.113.9");
    let yahoo = one(&sample("yahoo.com!"), &limits).unwrap();
    assert_eq!(yahoo.records[1].reasons, ["mailing_list"]);
    let bis = one(&sample("dmarcbis.xml"), &limits).unwrap();
    assert_eq!(bis.format, Format::Dmarcbis);
    assert_eq!(bis.policy.np, "reject");
    assert_eq!(bis.records[0].disposition, Disposition::None);
    assert_eq!(bis.records[0].source_ip, "2001:db8::25");
}

#[test]
fn a_doctype_is_refused_before_any_entity_is_read() {
    for name in ["billion-laughs.xml", "external-entity.xml"] {
        let err = one(&sample(name), &Limits::default()).unwrap_err();
        assert!(matches!(err, ImportError::DocType), "{name}: {err}");
    }
}

#[test]
fn predefined_and_character_references_are_read_others_refused() {
    let xml = |org: &str| {
        format!("<feedback><report_metadata><org_name>{org}</org_name><report_id>1</report_id><date_range><begin>1</begin><end>2</end></date_range></report_metadata><policy_published><domain>example.com</domain></policy_published></feedback>")
    };
    let r = parse(xml("A&amp;B &#x43;&#68;").as_bytes(), &Limits::default()).unwrap();
    assert_eq!(r.org_name, "A&B CD");
    let err = parse(xml("&lol;").as_bytes(), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, ImportError::Entity(ref e) if e == "lol"),
        "{err}"
    );
}

#[test]
fn limits_on_depth_text_and_records_hold() {
    let limits = Limits {
        max_records: 2,
        ..Limits::default()
    };
    let deep = format!("<feedback>{}", "<a>".repeat(100));
    assert!(matches!(
        parse(deep.as_bytes(), &limits),
        Err(ImportError::TooDeep(16))
    ));
    let long = format!(
        "<feedback><report_metadata><org_name>{}</org_name>",
        "x".repeat(5000)
    );
    assert!(matches!(
        parse(long.as_bytes(), &limits),
        Err(ImportError::TextTooLong { .. })
    ));
    let record = "<record><row><source_ip>192.0.2.1</source_ip><count>1</count></row><identifiers><header_from>example.com</header_from></identifiers></record>";
    let many = format!("<feedback>{}</feedback>", record.repeat(3));
    assert!(matches!(
        parse(many.as_bytes(), &limits),
        Err(ImportError::TooManyRecords(2))
    ));
}

#[test]
fn not_reports_are_named() {
    for (input, words) in [
        ("<html><body/></html>", "root element is <html>"),
        ("<feedback></feedback>", "no <report_metadata/org_name>"),
        ("<feedback><record>", "ends inside an element"),
    ] {
        let err = parse(input.as_bytes(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains(words), "{input}: {err}");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A gzip of zeros far larger than the XML limit stops at the limit, not at its end.
#[test]
fn a_gzip_bomb_stops_at_the_decompressed_limit() {
    let limits = Limits {
        max_xml: 1 << 20,
        ..Limits::default()
    };
    let mut xml = b"<feedback><report_metadata><org_name>".to_vec();
    xml.extend(std::iter::repeat_n(b' ', 8 << 20));
    let bomb = gzip(&xml);
    assert!(bomb.len() < 64 << 10);
    let found = read_stream(
        &bomb[..],
        "bomb",
        &Limits {
            max_text: 16 << 20,
            ..limits
        },
    );
    let err = found.into_iter().next().unwrap().result.unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::TooLarge {
                what: "the decompressed report",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_zip_bomb_stops_at_the_decompressed_limit() {
    let limits = Limits {
        max_xml: 1 << 20,
        max_text: 16 << 20,
        ..Limits::default()
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("report.xml", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"<feedback><report_metadata><org_name>")
        .unwrap();
    zip.write_all(&vec![b' '; 8 << 20]).unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let err = read_stream(&bytes[..], "bomb.zip", &limits)
        .into_iter()
        .next()
        .unwrap()
        .result
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::TooLarge {
                what: "the unzipped report",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_input_over_the_limit_is_refused_whatever_it_is() {
    let limits = Limits {
        max_input: 1 << 16,
        ..Limits::default()
    };
    let mail = format!("Subject: x\r\n\r\n{}", "a".repeat(1 << 17));
    let err = read_stream(mail.as_bytes(), "big", &limits)
        .remove(0)
        .result
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::TooLarge {
                what: "the input",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_mbox_yields_each_messages_report_and_skips_an_oversized_one() {
    let eml = std::fs::read(sample("microsoft.eml")).unwrap();
    let mut mbox = b"From dmarcreport@microsoft.com Sun Nov 29 04:21:33 2026\n".to_vec();
    mbox.extend_from_slice(&eml);
    mbox.extend_from_slice(b"\nFrom someone Sun Nov 29 04:21:33 2026\nSubject: big\n\n");
    mbox.extend(std::iter::repeat_n(b'a', 100_000));
    mbox.extend_from_slice(b"\n\nFrom x Sun Nov 29 04:21:33 2026\nSubject: chat\n\nhello\n");
    let limits = Limits {
        max_input: 50_000,
        ..Limits::default()
    };
    let found = read_stream(&mbox[..], "inbox", &limits);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].result.as_ref().unwrap().org_name, "Outlook.com");
    assert!(matches!(found[1].result, Err(ImportError::TooLarge { .. })));
    assert!(matches!(
        found[2].result,
        Err(ImportError::NoReportInMessage)
    ));
}
