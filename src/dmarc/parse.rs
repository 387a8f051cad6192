//! The aggregate report XML, read as a stream of events (quick-xml): entities are never
//! expanded and no DTD is read; a DOCTYPE is refused outright, so the billion-laughs and
//! external-entity attacks have nothing to work with. Every bound of [`Limits`] that
//! concerns XML (depth, text length, records) is checked as the events arrive, and the
//! bytes read are bounded by the caller ([`super::unpack`]), so memory stays bounded
//! however the input is built.

use super::feedback::{Disposition, DkimResult, Feedback, Format, Record, SpfResult};
use super::{ImportError, Limits};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::io::BufRead;

/// The DMARCbis aggregate schema's namespace.
const DMARCBIS_NS: &str = "urn:ietf:params:xml:ns:dmarc-2.0";

/// Parses one report from `input`. I/O errors from `input` (the caller's size limits)
/// come back as they were raised.
pub fn parse(input: impl BufRead, limits: &Limits) -> Result<Feedback, ImportError> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut report = Feedback::default();
    let mut record: Option<Record> = None;
    let mut root_seen = false;
    loop {
        buf.clear();
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| xml_error(e, reader.buffer_position()))?;
        match event {
            Event::DocType(_) => return Err(ImportError::DocType),
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if root_seen {
                        return Err(ImportError::NotAReport("more than one root element".into()));
                    }
                    root_seen = true;
                    if name != "feedback" {
                        return Err(ImportError::NotAReport(format!(
                            "the root element is <{}>, not <feedback>",
                            clip(&name)
                        )));
                    }
                    if start.attributes().flatten().any(|a| {
                        a.key.as_ref().starts_with(b"xmlns")
                            && a.value.as_ref() == DMARCBIS_NS.as_bytes()
                    }) {
                        report.format = Format::Dmarcbis;
                    }
                }
                if path.len() >= limits.max_depth {
                    return Err(ImportError::TooDeep(limits.max_depth));
                }
                path.push(name);
                text.clear();
                opened(&path, &mut record);
            }
            Event::Empty(start) => {
                if path.is_empty() {
                    return Err(ImportError::NotAReport(
                        "the document is one empty element".into(),
                    ));
                }
                if path.len() >= limits.max_depth {
                    return Err(ImportError::TooDeep(limits.max_depth));
                }
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                path.push(name);
                text.clear();
                opened(&path, &mut record);
                closed(&path, "", &mut report, &mut record, limits)?;
                path.pop();
            }
            Event::End(_) => {
                closed(&path, text.trim(), &mut report, &mut record, limits)?;
                text.clear();
                path.pop();
            }
            Event::Text(t) => {
                let s = t
                    .decode()
                    .map_err(|e| xml_error(e.into(), reader.buffer_position()))?;
                push_text(&mut text, &s, &path, limits)?;
            }
            Event::CData(t) => {
                let s = std::str::from_utf8(&t)
                    .map_err(|_| xml_problem("CDATA is not UTF-8", reader.buffer_position()))?;
                push_text(&mut text, s, &path, limits)?;
            }
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| xml_error(e, reader.buffer_position()))?
                } else {
                    let name = r.decode().unwrap_or_default();
                    match name.as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        other => return Err(ImportError::Entity(clip(other))),
                    }
                };
                let c = c.ok_or_else(|| {
                    xml_problem("a character reference to NUL", reader.buffer_position())
                })?;
                push_text(&mut text, c.encode_utf8(&mut [0; 4]), &path, limits)?;
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !path.is_empty() {
        return Err(xml_problem(
            "the document ends inside an element",
            reader.buffer_position(),
        ));
    }
    if !root_seen {
        return Err(ImportError::NotAReport("no XML element at all".into()));
    }
    for (missing, what) in [
        (report.org_name.is_empty(), "report_metadata/org_name"),
        (report.report_id.is_empty(), "report_metadata/report_id"),
        (report.policy.domain.is_empty(), "policy_published/domain"),
    ] {
        if missing {
            return Err(ImportError::NotAReport(format!("no <{what}>")));
        }
    }
    if report.end < report.begin {
        return Err(ImportError::NotAReport(
            "date_range ends before it begins".into(),
        ));
    }
    Ok(report)
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn xml_problem(problem: &str, position: u64) -> ImportError {
    ImportError::Xml {
        position,
        problem: problem.into(),
    }
}

/// quick-xml's error, except an I/O error raised by a size limit below it, which keeps
/// its own words.
fn xml_error(e: quick_xml::Error, position: u64) -> ImportError {
    match e {
        quick_xml::Error::Io(io) => match super::unpack::overflow_of(&io) {
            Some(over) => over,
            None => ImportError::Io(std::io::Error::new(io.kind(), io.to_string())),
        },
        other => ImportError::Xml {
            position,
            problem: other.to_string(),
        },
    }
}

fn push_text(
    text: &mut String,
    s: &str,
    path: &[String],
    limits: &Limits,
) -> Result<(), ImportError> {
    if text.len() + s.len() > limits.max_text {
        return Err(ImportError::TextTooLong {
            element: path.last().map(|n| clip(n)).unwrap_or_default(),
            limit: limits.max_text,
        });
    }
    text.push_str(s);
    Ok(())
}

fn names(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

/// An element opened: records and their result lists begin here.
fn opened(path: &[String], record: &mut Option<Record>) {
    match names(path).as_slice() {
        ["feedback", "record"] => *record = Some(Record::default()),
        ["feedback", "record", "auth_results", "dkim"] => {
            if let Some(r) = record {
                r.dkim.push(DkimResult::default());
            }
        }
        ["feedback", "record", "auth_results", "spf"] => {
            if let Some(r) = record {
                r.spf.push(SpfResult::default());
            }
        }
        _ => {}
    }
}

fn number(s: &str, what: &str) -> Result<u64, ImportError> {
    s.parse::<u64>()
        .map_err(|_| ImportError::NotAReport(format!("<{what}> is \"{}\", not a number", clip(s))))
}

/// An element closed with `text`: the one place fields are assigned.
fn closed(
    path: &[String],
    text: &str,
    report: &mut Feedback,
    record: &mut Option<Record>,
    limits: &Limits,
) -> Result<(), ImportError> {
    let t = || text.to_string();
    let lower = || text.to_ascii_lowercase();
    match names(path).as_slice() {
        ["feedback", "report_metadata", "org_name"] => report.org_name = t(),
        ["feedback", "report_metadata", "email"] => report.email = t(),
        ["feedback", "report_metadata", "report_id"] => report.report_id = t(),
        ["feedback", "report_metadata", "date_range", "begin"] => {
            report.begin = number(text, "begin")?
        }
        ["feedback", "report_metadata", "date_range", "end"] => report.end = number(text, "end")?,
        ["feedback", "policy_published", field] => {
            let p = &mut report.policy;
            match *field {
                "domain" => p.domain = crate::domain::normalise(text),
                "adkim" => p.adkim = lower(),
                "aspf" => p.aspf = lower(),
                "p" => p.p = lower(),
                "sp" => p.sp = lower(),
                "np" => {
                    p.np = lower();
                    report.format = Format::Dmarcbis;
                }
                "pct" => p.pct = t(),
                "testing" => {
                    p.testing = lower();
                    report.format = Format::Dmarcbis;
                }
                _ => {}
            }
        }
        ["feedback", "record"] => {
            if let Some(r) = record.take() {
                if report.records.len() >= limits.max_records {
                    return Err(ImportError::TooManyRecords(limits.max_records));
                }
                if r.source_ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(ImportError::NotAReport(format!(
                        "a record's <source_ip> is \"{}\", not an IP address",
                        clip(&r.source_ip)
                    )));
                }
                if r.header_from.is_empty() {
                    return Err(ImportError::NotAReport(
                        "a record has no <header_from>".into(),
                    ));
                }
                report.records.push(r);
            }
        }
        ["feedback", "record", rest @ ..] => {
            let Some(r) = record else { return Ok(()) };
            match rest {
                ["row", "source_ip"] => r.source_ip = t(),
                ["row", "count"] => r.count = number(text, "count")?,
                ["row", "policy_evaluated", "disposition"] => {
                    r.disposition = Disposition::parse(text).ok_or_else(|| {
                        ImportError::NotAReport(format!("unknown disposition \"{}\"", clip(text)))
                    })?
                }
                ["row", "policy_evaluated", "dkim"] => r.dkim_aligned = lower() == "pass",
                ["row", "policy_evaluated", "spf"] => r.spf_aligned = lower() == "pass",
                ["row", "policy_evaluated", "reason", "type"] => r.reasons.push(lower()),
                ["identifiers", "header_from"] => r.header_from = crate::domain::normalise(text),
                ["identifiers", "envelope_from"] => {
                    r.envelope_from = crate::domain::normalise(text)
                }
                ["auth_results", "dkim", field] => {
                    if let Some(d) = r.dkim.last_mut() {
                        match *field {
                            "domain" => d.domain = crate::domain::normalise(text),
                            "selector" => d.selector = lower(),
                            "result" => d.result = lower(),
                            _ => {}
                        }
                    }
                }
                ["auth_results", "spf", field] => {
                    if let Some(s) = r.spf.last_mut() {
                        match *field {
                            "domain" => s.domain = crate::domain::normalise(text),
                            "scope" => s.scope = lower(),
                            "result" => s.result = lower(),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}
