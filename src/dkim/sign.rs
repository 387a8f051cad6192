//! Turning a spooled message into DKIM-Signature header fields.

use super::{header_list, signable_prefix, DomainKeys};
use crate::keys::Algorithm;
use crate::message::HeaderBlock;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};

/// One signature made for a message.
#[derive(Debug, Clone)]
pub struct Signature {
    pub selector: String,
    pub algorithm: Algorithm,
    /// The complete field, `DKIM-Signature: …\r\n`, folded.
    pub header: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the message header cannot be read: {0}")]
    Headers(#[from] crate::message::HeaderError),
    #[error("signing with selector {selector} ({algorithm}) failed: {reason}")]
    Failed {
        selector: String,
        algorithm: Algorithm,
        reason: String,
    },
}

/// Signs `message` with every key of `keys` (RSA first), relaxed/relaxed, `t=` set, no
/// `l=`. `leave_out` names header fields the upstream rewrites; `rsa_only` is for
/// upstreams that refuse a second DKIM-Signature (Amazon SES).
pub fn sign(
    keys: &DomainKeys,
    message: &[u8],
    leave_out: &[&str],
    rsa_only: bool,
) -> Result<Vec<Signature>, SignError> {
    let headers = HeaderBlock::parse(message)?;
    let list = header_list(&headers.names(), leave_out);
    let signable = signable_prefix(message);
    // mail-auth reads chained parts as header fields, and the body from the last part: so
    // the fields go first and the last part starts at the empty line that ends them.
    let mut fields_end = headers.body_offset.min(signable.len());
    if signable[..fields_end].ends_with(b"\r\n\r\n") {
        fields_end -= 2;
    }
    let lowered = lowercase_field_names(&signable[..fields_end]);
    let parts = [lowered.as_slice(), &signable[fields_end..]];
    let mut out = Vec::with_capacity(keys.keys.len());
    for key in &keys.keys {
        if rsa_only && key.algorithm != Algorithm::Rsa {
            continue;
        }
        let failed = |reason: String| SignError::Failed {
            selector: key.selector.clone(),
            algorithm: key.algorithm,
            reason,
        };
        let signature = DkimSigner::from_key(key.signing_key())
            .domain(keys.domain.as_str())
            .selector(key.selector.as_str())
            .headers(list.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .sign_chained(parts)
            .map_err(|e| failed(e.to_string()))?;
        out.push(Signature {
            selector: key.selector.clone(),
            algorithm: key.algorithm,
            header: close_b_tag(signature.to_header()),
        });
    }
    Ok(out)
}

/// The header section with every field name in lower case, so that mail-auth writes each
/// `h=` entry in the same spelling as our lists (DESIGN §5; go-msgauth compares names by
/// spelling). With relaxed header canonicalization (RFC 6376 §3.4.2, the only one we sign
/// with) names are lower-cased before hashing anyway, so the signature over this copy is
/// the signature over the message as it is sent, names as the client wrote them.
fn lowercase_field_names(header_section: &[u8]) -> Vec<u8> {
    let mut out = header_section.to_vec();
    let mut line_start = true;
    let mut in_name = false;
    for byte in &mut out {
        if line_start {
            // A continuation line starts with white space; a field line with its name.
            in_name = *byte != b' ' && *byte != b'\t';
        }
        line_start = *byte == b'\n';
        if in_name {
            if *byte == b':' {
                in_name = false;
            } else {
                byte.make_ascii_lowercase();
            }
        }
    }
    out
}

/// mail-auth folds the header so that the `;` after `b=` can land alone on the last line
/// (`…==\r\n\t;`). RFC 6376 §3.7 says to drop whitespace around the removed b= value,
/// which mail-auth does, but dkimpy (and verifiers like it) keep the fold and hash `b= ;`,
/// so those signatures fail there. mail-auth signed as if it read `b=;`, so joining the
/// `;` back onto the b= line is safe after signing and verifies everywhere.
fn close_b_tag(header: String) -> String {
    let body = header.trim_end_matches("\r\n");
    let Some(without_semicolon) = body.strip_suffix(';') else {
        return header;
    };
    let mut fixed = without_semicolon
        .trim_end_matches([' ', '\t', '\r', '\n'])
        .to_string();
    fixed.push_str(";\r\n");
    fixed
}

#[cfg(test)]
mod tests {
    use super::{close_b_tag, lowercase_field_names};

    #[test]
    fn only_field_names_are_lower_cased() {
        assert_eq!(
            lowercase_field_names(b"Message-Id: <A@B>\r\nSubject: Hi\r\n There: X\r\n\r\n"),
            b"message-id: <A@B>\r\nsubject: Hi\r\n There: X\r\n\r\n"
        );
    }

    #[test]
    fn a_lone_semicolon_is_joined_to_the_b_line() {
        assert_eq!(
            close_b_tag("DKIM-Signature: a=x;\r\n\tb=AAAA\r\n\t;\r\n".into()),
            "DKIM-Signature: a=x;\r\n\tb=AAAA;\r\n"
        );
        assert_eq!(
            close_b_tag("DKIM-Signature: a=x; b=AAAA;\r\n".into()),
            "DKIM-Signature: a=x; b=AAAA;\r\n"
        );
    }
}
