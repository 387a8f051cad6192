//! Signing checked against published vectors (RFC 8463 Appendix A, kept in
//! tests/data/rfc8463-vectors.txt) and against an independent relaxed body hash, including
//! the mail-auth 0.13.3 trailing-blank-line bug (its issue #62).

mod common;

use base64::Engine;
use common::verify::{relaxed_body_hash, tag_values, verify, TxtCache};
use dkim_relay::dkim::{sign, DomainKeys, LoadedKey};
use dkim_relay::keys::Algorithm;
use mail_auth::DkimResult;

const VECTORS: &str = include_str!("data/rfc8463-vectors.txt");

fn value(name: &str) -> String {
    let line = VECTORS
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].trim_start().starts_with('='))
        .unwrap_or_else(|| panic!("{name} not in the vectors"));
    let v = line[name.len()..].trim_start()[1..].trim();
    // Drop trailing "<- comment" and "(comment)" annotations.
    let v = v.split("   ").next().unwrap().trim();
    v.replace("<CRLF>", "\r\n")
}

/// The n-th "BEGIN PRIVATE KEY" PEM block of the file.
fn pkcs8_pem(n: usize) -> String {
    let start = VECTORS
        .match_indices("-----BEGIN PRIVATE KEY-----")
        .nth(n)
        .unwrap()
        .0;
    let end = VECTORS[start..].find("-----END PRIVATE KEY-----").unwrap() + start + 25;
    VECTORS[start..end].to_string()
}

fn block(name: &str) -> Vec<u8> {
    let start = VECTORS.find(&format!("-----BEGIN {name}-----\n")).unwrap() + name.len() + 17;
    let end = VECTORS.find(&format!("-----END {name}-----")).unwrap();
    VECTORS[start..end].replace('\n', "\r\n").into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn rfc8463_ed25519_signature_is_reproduced_byte_exact() {
    let key = LoadedKey::from_pem("brisbane", Algorithm::Ed25519, &pkcs8_pem(0)).unwrap();
    let data = value("ED25519_DATA");
    assert_eq!(
        sha256_hex(data.as_bytes()),
        value("ED25519_DATA_SHA256_HEX")
    );
    let signature = key.sign_raw(data.as_bytes()).unwrap();
    assert_eq!(b64(&signature), value("ED25519 b="));
}

#[test]
fn supplementary_rsa2048_signature_is_reproduced_byte_exact() {
    let key = LoadedKey::from_pem("test2048", Algorithm::Rsa, &pkcs8_pem(2)).unwrap();
    // Same header-hash input as the RFC's RSA signature, with the 2048-bit selector.
    let data = value("RSA_DATA").replace("s=test;", "s=test2048;");
    assert_eq!(
        sha256_hex(data.as_bytes()),
        value("RSA2048_DATA_SHA256_HEX")
    );
    let signature = key.sign_raw(data.as_bytes()).unwrap();
    assert_eq!(b64(&signature), value("RSA2048 b="));
}

#[test]
fn the_rfcs_1024_bit_rsa_key_is_refused_with_the_size_it_needs() {
    let err = LoadedKey::from_pem("test", Algorithm::Rsa, &pkcs8_pem(1)).unwrap_err();
    assert!(err.contains("test:") && err.contains("2048"), "{err}");
}

fn football_keys() -> DomainKeys {
    DomainKeys {
        domain: "football.example.com".into(),
        keys: vec![
            LoadedKey::from_pem("test2048", Algorithm::Rsa, &pkcs8_pem(2)).unwrap(),
            LoadedKey::from_pem("brisbane", Algorithm::Ed25519, &pkcs8_pem(0)).unwrap(),
        ],
    }
}

fn football_dns() -> TxtCache {
    let cache = TxtCache::default();
    for line in VECTORS.lines() {
        if let Some(rest) = line.strip_prefix("brisbane._domainkey.football.example.com") {
            cache.add("brisbane._domainkey.football.example.com", rest.trim());
        }
        for selector in ["test2048", "test"] {
            let name = format!("{selector}._domainkey.football.example.com");
            if let Some(rest) = line.strip_prefix(&format!("{name} ")) {
                cache.add(&name, rest.trim());
            }
        }
    }
    cache
}

fn signed(message: &[u8]) -> Vec<u8> {
    let signatures = sign(&football_keys(), message, &[], false).unwrap();
    let mut out: Vec<u8> = signatures.iter().flat_map(|s| s.header.bytes()).collect();
    out.extend_from_slice(message);
    out
}

#[tokio::test]
async fn the_rfc_message_signed_by_the_relay_verifies_with_the_rfc_records() {
    let message = block("UNSIGNED");
    let out = signed(&message);
    let bh = tag_values(&out, "bh");
    assert_eq!(bh, [value("BH (both sigs)"), value("BH (both sigs)")]);
    let results = verify(&out, &football_dns()).await;
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r.3 == DkimResult::Pass),
        "{results:?}"
    );
    // And the RFC's own signed message verifies with the same records and verifier.
    let published = block("SIGNED");
    let results = verify(&published, &football_dns()).await;
    assert_eq!(results[0].3, DkimResult::Pass, "{results:?}");
}

/// mail-auth #62: bodies ending in whitespace-only lines. The relay's signature must carry
/// the body hash RFC 6376 §3.4.4 defines, computed here independently of mail-auth.
#[test]
fn trailing_whitespace_only_lines_get_the_correct_relaxed_body_hash() {
    let bodies: &[&str] = &[
        "Hi.\r\n  \r\n",
        "Hi.\r\n\t\r\n \t \r\n\r\n",
        "Hi.\r\n\r\n \r\nBye.  \r\n \r\n",
        " \r\n",
        "",
        "\r\n\r\n",
        "no final newline  ",
        "Hi.\r\n   \r\nno final newline",
    ];
    for body in bodies {
        let message = format!("From: Joe <joe@football.example.com>\r\nSubject: s\r\n\r\n{body}");
        let out = signed(message.as_bytes());
        let expected = relaxed_body_hash(&out);
        for bh in tag_values(&out, "bh") {
            assert_eq!(bh, expected, "body {body:?}");
        }
    }
    let empty = signed(b"From: joe@football.example.com\r\n\r\n");
    assert_eq!(
        tag_values(&empty, "bh")[0],
        value("BH relaxed, empty body (canonical form is the empty string)")
    );
}

/// Documents why the workaround exists: signing the raw message with mail-auth 0.13.3
/// gives a different (wrong) body hash. When this starts failing, the bug is fixed
/// upstream and `dkim::signable_prefix` can go.
#[test]
fn mail_auth_0_13_still_needs_the_workaround() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::{Canonicalization, DkimSigner};
    let message = b"From: joe@football.example.com\r\n\r\nHi.\r\n  \r\n";
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            pkcs8_pem(0)
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).unwrap();
    let raw = DkimSigner::from_key(key)
        .domain("football.example.com")
        .selector("brisbane")
        .headers(["From"])
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .unwrap()
        .to_header();
    let mut out = raw.into_bytes();
    out.extend_from_slice(message);
    assert_ne!(tag_values(&out, "bh")[0], relaxed_body_hash(&out));
}

/// DESIGN §5: every `h=` entry in one spelling. Postfix and nullmailer write `Message-Id:`;
/// go-msgauth counts `Message-Id` and `Message-ID` as different fields, so a signature
/// whose over-signing entry is spelled otherwise than the field fails there. The signature
/// must still verify over the message as sent, with its names as the client wrote them.
#[tokio::test]
async fn h_lists_every_field_name_in_lower_case_and_still_verifies() {
    let message = b"From: Joe <joe@football.example.com>\r\nMessage-Id: <1@h.example>\r\n\
SUBJECT: s\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nHi.\r\n";
    let out = signed(message);
    for h in tag_values(&out, "h") {
        let names: Vec<&str> = h.split(':').map(str::trim).collect();
        assert!(names.iter().all(|n| *n == n.to_ascii_lowercase()), "h={h}");
        assert_eq!(
            names.iter().filter(|n| **n == "message-id").count(),
            2,
            "h={h}"
        );
        assert_eq!(
            names.iter().filter(|n| **n == "subject").count(),
            2,
            "h={h}"
        );
    }
    let results = verify(&out, &football_dns()).await;
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r.3 == DkimResult::Pass),
        "{results:?}"
    );
}
