//! One token request over HTTPS (reqwest on the upstream's own rustls config, so its
//! `ca_file` applies here too), and its answer read as RFC 6749 §5.1/§5.2 JSON.

use super::error::{words, TokenError, TokenProblem};
use super::grant::Grant;
use super::{Fetched, Secret};
use std::sync::Arc;
use std::time::Duration;

/// The most of an answer read: a token answer is a few kilobytes; anything longer is
/// not one, and must not fill memory.
const MAX_ANSWER: usize = 64 * 1024;

pub(crate) struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    host: String,
}

impl Endpoint {
    pub fn new(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Endpoint, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("upstream.token_url: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .https_only(true)
            // A redirect would carry the secret somewhere token_url does not name.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("upstream.token_url: cannot build the HTTPS client: {e}"))?;
        Ok(Endpoint { client, url, host })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// One token request. An endpoint that echoes the client secret in its error text
    /// gets it taken out here, before any log line or cause sees it.
    pub async fn fetch(&self, grant: &Grant) -> Result<Fetched, TokenError> {
        self.request(grant)
            .await
            .map_err(|e| scrub(e, grant.secret()))
    }

    async fn request(&self, grant: &Grant) -> Result<Fetched, TokenError> {
        let fail = |problem| TokenError {
            endpoint: self.host.clone(),
            problem,
        };
        let form = grant
            .form(crate::clock::now_unix())
            .map_err(|e| fail(TokenProblem::Local(e)))?;
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut answer = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| fail(TokenProblem::Unreachable(chain(&e))))?;
        let status = answer.status().as_u16();
        let mut body = Vec::new();
        loop {
            match answer.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Err(fail(TokenProblem::BadAnswer {
                        status,
                        problem: format!("answer longer than {MAX_ANSWER} bytes"),
                    }))
                }
                Ok(None) => break,
                Err(e) => return Err(fail(TokenProblem::Unreachable(chain(&e)))),
            }
        }
        read_answer(status, &body).map_err(fail)
    }
}

/// `error` with every copy of `secret` (as is and form-encoded) replaced.
fn scrub(mut error: TokenError, secret: Option<&str>) -> TokenError {
    let Some(secret) = secret.filter(|s| s.len() >= 4) else {
        return error;
    };
    let encoded: String = reqwest::Url::parse_with_params("https://x/", [("s", secret)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("s=").to_string()))
        .unwrap_or_default();
    // Encoders differ on `~`; take both spellings out.
    let tilde = encoded.replace("%7E", "~");
    let clean = |text: &mut String| {
        for form in [secret, encoded.as_str(), tilde.as_str()] {
            if form.len() >= 4 && text.contains(form) {
                *text = text.replace(form, "[redacted]");
            }
        }
    };
    match &mut error.problem {
        TokenProblem::Unreachable(t) | TokenProblem::Local(t) => clean(t),
        TokenProblem::BadAnswer { problem, .. } => clean(problem),
        TokenProblem::Refused {
            error, description, ..
        } => {
            error.iter_mut().for_each(clean);
            description.iter_mut().for_each(clean);
        }
    }
    error
}

#[derive(serde::Deserialize)]
struct Answer {
    access_token: Option<String>,
    token_type: Option<String>,
    /// A number by RFC 6749; some endpoints send it as a string.
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

fn read_answer(status: u16, body: &[u8]) -> Result<Fetched, TokenProblem> {
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        return Err(TokenProblem::Refused {
            status,
            error: answer.as_ref().and_then(|a| a.error.as_deref()).map(words),
            description: answer
                .as_ref()
                .and_then(|a| a.error_description.as_deref())
                .map(words),
        });
    }
    let bad = |problem: &str| TokenProblem::BadAnswer {
        status,
        problem: problem.into(),
    };
    let answer = answer.ok_or_else(|| bad("not JSON"))?;
    let token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    // XOAUTH2 sends the token on one SMTP line: no spaces or control characters in it.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("access_token holds spaces or control characters"));
    }
    if let Some(kind) = answer.token_type.as_deref() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(bad(&format!(
                "token_type is \"{}\", not Bearer",
                words(kind)
            )));
        }
    }
    let expires_in = answer.expires_in.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Ok(Fetched {
        token: Secret::new(token),
        expires_in: expires_in.map(Duration::from_secs),
    })
}

/// An error and its sources in words ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    words(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oauth_error_answer_is_read_into_words() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"}"#;
        let Err(TokenProblem::Refused {
            status,
            error,
            description,
        }) = read_answer(401, body)
        else {
            panic!("not refused")
        };
        assert_eq!(status, 401);
        assert_eq!(error.as_deref(), Some("invalid_client"));
        assert_eq!(
            description.as_deref(),
            Some("AADSTS7000215: Invalid client secret provided.  Trace ID: 1")
        );
    }

    #[test]
    fn an_echoed_secret_is_taken_out_of_the_error() {
        let body = br#"{"error":"invalid_client","error_description":"secret Xy8Q~s3cr+t/= is not valid (Xy8Q~s3cr%2Bt%2F%3D)"}"#;
        let problem = read_answer(401, body).err().unwrap();
        let e = scrub(
            TokenError {
                endpoint: "login.test".into(),
                problem,
            },
            Some("Xy8Q~s3cr+t/="),
        );
        let text = e.to_string();
        assert!(!text.contains("s3cr"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn answers_without_a_usable_token_are_refused() {
        for (body, why) in [
            (&b"<html>login</html>"[..], "not JSON"),
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (br#"{"access_token":"a b"}"#, "spaces"),
            (
                br#"{"access_token":"abc","token_type":"mac"}"#,
                "not Bearer",
            ),
        ] {
            match read_answer(200, body) {
                Err(TokenProblem::BadAnswer { problem, .. }) => {
                    assert!(problem.contains(why), "{problem}")
                }
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("accepted {}", String::from_utf8_lossy(body)),
            }
        }
        let ok = read_answer(200, br#"{"access_token":"t0k","expires_in":"3599"}"#).unwrap();
        assert_eq!(ok.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(ok.token.expose(), "t0k");
    }
}
