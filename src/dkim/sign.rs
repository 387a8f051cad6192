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
            .sign(signable)
            .map_err(|e| failed(e.to_string()))?;
        out.push(Signature {
            selector: key.selector.clone(),
            algorithm: key.algorithm,
            header: signature.to_header(),
        });
    }
    Ok(out)
}
