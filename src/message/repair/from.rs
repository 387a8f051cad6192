//! Changes to the address of a From value: qualifying a bare user or host name (cron's
//! `root (Cron Daemon)`, `root@localhost`) with the network's `qualify_domain`, and the
//! private-namespace rewrite (`root@web01.corp.internal` to a configured address). Only
//! the address is replaced; the display name and comments stay. The caller reads the
//! result again with the strict From reader, so a value this reads wrongly is refused,
//! never signed.

use std::ops::Range;

/// Where the address of a From value is: inside the `<>` of an angle address, else the
/// one run of address characters outside comments and quoted strings. None when it is
/// not one plain address (several words without `<>`, a group, an unclosed quote…).
pub fn address_span(value: &[u8]) -> Option<Range<usize>> {
    let mut i = 0;
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut angle: Option<Range<usize>> = None;
    while i < value.len() {
        match value[i] {
            b'"' => {
                i += 1;
                while i < value.len() && value[i] != b'"' {
                    i += if value[i] == b'\\' { 2 } else { 1 };
                }
                if i >= value.len() {
                    return None;
                }
                // A quoted word is part of a display name: only an angle address may follow.
                runs.push(i..i);
                i += 1;
            }
            b'(' => {
                let mut depth = 0usize;
                loop {
                    match value.get(i)? {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
            }
            b'<' => {
                if angle.is_some() {
                    return None;
                }
                let close = value[i..].iter().position(|&b| b == b'>')? + i;
                angle = Some(i + 1..close);
                i = close + 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b',' | b';' | b':' | b'>' | b'[' | b']' | b'\\' => return None,
            _ => {
                let start = i;
                while i < value.len() && !b" \t\r\n\"(<>,;:[]\\".contains(&value[i]) {
                    i += 1;
                }
                runs.push(start..i);
            }
        }
    }
    match (angle, runs.as_slice()) {
        (Some(a), _) => Some(a),
        (None, [one]) if !one.is_empty() => Some(one.clone()),
        _ => None,
    }
}

/// `local` or `local@host` where host has no dot: a name only the sending host knows.
fn unqualified_local(address: &[u8]) -> Option<&[u8]> {
    let (local, domain) = match address.iter().position(|&b| b == b'@') {
        Some(at) => (&address[..at], Some(&address[at + 1..])),
        None => (address, None),
    };
    let local_ok = !local.is_empty()
        && std::str::from_utf8(local).is_ok_and(crate::message::address::is_dot_atom);
    let domain_unqualified = domain.is_none_or(|d| {
        !d.contains(&b'.') && d.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    });
    (local_ok && domain_unqualified).then_some(local)
}

/// The value with its unqualified address made `local@domain`; None when the address is
/// not unqualified (or not found). The second item is the address as it was.
pub fn qualify(value: &[u8], domain: &str) -> Option<(Vec<u8>, String)> {
    let span = address_span(value)?;
    let address = &value[span.clone()];
    let local = unqualified_local(address)?;
    let mut new = Vec::with_capacity(value.len() + domain.len() + 1);
    new.extend_from_slice(&value[..span.start]);
    new.extend_from_slice(local);
    new.push(b'@');
    new.extend_from_slice(domain.as_bytes());
    new.extend_from_slice(&value[span.end..]);
    Some((new, String::from_utf8_lossy(address).into_owned()))
}

/// A bare user name or `user@host` (no dot) as an envelope sender, qualified.
pub fn qualify_path(address: &str, domain: &str) -> Option<String> {
    let local = unqualified_local(address.as_bytes())?;
    Some(format!("{}@{domain}", String::from_utf8_lossy(local)))
}

/// The value with its address replaced by `to`; the old address is returned.
pub fn replace(value: &[u8], to: &str) -> Option<(Vec<u8>, String)> {
    let span = address_span(value)?;
    let old = String::from_utf8_lossy(&value[span.clone()]).into_owned();
    let mut new = Vec::with_capacity(value.len() + to.len());
    new.extend_from_slice(&value[..span.start]);
    new.extend_from_slice(to.as_bytes());
    new.extend_from_slice(&value[span.end..]);
    Some((new, old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(value: &str) -> Option<String> {
        qualify(value.as_bytes(), "example.com").map(|(v, _)| String::from_utf8(v).unwrap())
    }

    #[test]
    fn bare_names_are_qualified_in_place() {
        for (from, want) in [
            (" root (Cron Daemon)", " root@example.com (Cron Daemon)"),
            (" root", " root@example.com"),
            (" root@localhost", " root@example.com"),
            (" root@web01", " root@example.com"),
            (" Cron Daemon <root>", " Cron Daemon <root@example.com>"),
            (
                " \"Cron <x> Daemon\" <root@host>",
                " \"Cron <x> Daemon\" <root@example.com>",
            ),
            (
                " (comment (nested \\) ) still) root",
                " (comment (nested \\) ) still) root@example.com",
            ),
            (
                "\r\n root (Cron\r\n Daemon)",
                "\r\n root@example.com (Cron\r\n Daemon)",
            ),
        ] {
            assert_eq!(q(from).as_deref(), Some(want), "{from}");
        }
    }

    #[test]
    fn qualified_or_unclear_values_are_left_alone() {
        for from in [
            " root@example.org",
            " Joe Bloggs",
            " a, b",
            " \"unclosed <root>",
            " (unclosed root",
            " team: root;",
            " <root> <other>",
            " root@host_name",
            " \"root\"",
            " ro..ot",
            " root@[192.0.2.1]",
            "",
        ] {
            assert_eq!(q(from), None, "{from}");
        }
    }

    #[test]
    fn the_address_is_replaced_and_the_name_kept() {
        let (v, old) = replace(b" Web 01 <root@web01.corp.internal>", "relay@example.com").unwrap();
        assert_eq!(v, b" Web 01 <relay@example.com>");
        assert_eq!(old, "root@web01.corp.internal");
        let (v, _) = replace(b" root@web01.corp.internal (cron)", "relay@example.com").unwrap();
        assert_eq!(v, b" relay@example.com (cron)");
    }

    #[test]
    fn envelope_senders_are_qualified() {
        assert_eq!(
            qualify_path("root", "example.com").as_deref(),
            Some("root@example.com")
        );
        assert_eq!(
            qualify_path("root@localhost", "example.com").as_deref(),
            Some("root@example.com")
        );
        assert_eq!(qualify_path("root@example.org", "example.com"), None);
    }
}
