//! Our own upstream credentials taken out of upstream replies. A server may echo what it
//! was sent ("535 5.7.8 authentication failed for AHJlbGF5AHMzY3JldA=="); that text
//! becomes a delivery reason, which is logged, stored in the queue state as `last_error`
//! and shown by `queue` commands. Every reply text passes [`Redactor::redact`] where it
//! leaves the upstream client (see `Upstream::send`), before anything else sees it.

use super::verdict::{Cause, Verdict};
use base64::Engine;
use zeroize::Zeroizing;

/// What replaces a credential in a reply.
const REDACTED: &str = "[redacted]";

/// The forms in which our password travels: as is, base64 alone (AUTH LOGIN) and inside
/// the AUTH PLAIN token (with and without an authorisation identity), padded or not.
#[derive(Default)]
pub struct Redactor {
    forms: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    pub fn new(username: Option<&str>, password: Option<&str>) -> Redactor {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Redactor::default();
        };
        let b64 = |s: &str| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(s);
            // Unpadded, so a reply that drops the padding is caught too.
            Zeroizing::new(encoded.trim_end_matches('=').to_string())
        };
        let user = username.unwrap_or("");
        let mut forms = vec![
            b64(&format!("\0{user}\0{password}")),
            b64(&format!("{user}\0{user}\0{password}")),
            b64(password),
            Zeroizing::new(password.to_string()),
        ];
        // Longest first, so a token is replaced whole before a shorter form inside it.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.retain(|f| f.len() >= 4);
        Redactor { forms }
    }

    /// The forms an OAuth bearer token travels in: as is, and inside the AUTH XOAUTH2
    /// initial response for `user` (base64, padded or not).
    pub fn bearer(user: &str, token: &str) -> Redactor {
        let xoauth2 = format!("user={user}\x01auth=Bearer {token}\x01\x01");
        let encoded = base64::engine::general_purpose::STANDARD.encode(xoauth2);
        let mut forms = vec![
            Zeroizing::new(encoded.trim_end_matches('=').to_string()),
            Zeroizing::new(token.to_string()),
        ];
        forms.retain(|f| f.len() >= 4);
        Redactor { forms }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for form in &self.forms {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), REDACTED);
            }
        }
        out
    }

    /// The cause with the reply's text and our detail redacted.
    pub fn cause(&self, mut cause: Cause) -> Cause {
        if let Some(reply) = cause.reply.as_mut() {
            reply.text = self.redact(&reply.text);
        }
        cause.detail = self.redact(&cause.detail);
        cause
    }

    pub fn verdict(&self, v: Verdict) -> Verdict {
        match v {
            Verdict::Delivered(t) => Verdict::Delivered(self.redact(&t)),
            Verdict::Deferred(c) => Verdict::Deferred(self.cause(c)),
            Verdict::Failed(c) => Verdict::Failed(self.cause(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_password_is_taken_out() {
        let r = Redactor::new(Some("relay"), Some("s3cret-pw"));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let plain = b64("\0relay\0s3cret-pw");
        for reply in [
            format!("535 5.7.8 authentication failed for {plain}"),
            format!("535 5.7.8 bad token {}", plain.trim_end_matches('=')),
            format!("535 5.7.8 bad {}", b64("relay\0relay\0s3cret-pw")),
            format!("535 5.7.8 password {} refused", b64("s3cret-pw")),
            "535 5.7.8 password s3cret-pw refused".to_string(),
        ] {
            let out = r.redact(&reply);
            assert!(out.contains(REDACTED), "{out}");
            assert!(
                !out.contains("s3cret") && !out.contains(&plain[..12]),
                "{out}"
            );
        }
        assert_eq!(r.redact("250 2.0.0 ok relay"), "250 2.0.0 ok relay");
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn a_bearer_token_is_taken_out_alone_and_inside_xoauth2() {
        let r = Redactor::bearer("box@example.com", "eyJ0eXAi.tok-en");
        let b64 = base64::engine::general_purpose::STANDARD
            .encode("user=box@example.com\x01auth=Bearer eyJ0eXAi.tok-en\x01\x01");
        for reply in [
            format!("535 5.7.3 bad {b64}"),
            "535 5.7.3 token eyJ0eXAi.tok-en expired".to_string(),
        ] {
            let out = r.redact(&reply);
            assert!(out.contains(REDACTED) && !out.contains("tok-en"), "{out}");
            assert!(!out.contains(&b64[..20]), "{out}");
        }
    }
}
