//! Why no token came back, in words an operator can act on. Whose fault that is (ours or
//! a passing outage) is decided once, in `delivery::verdict` (`Cause::from_token`).

/// A failed token request. Never holds the secret, the assertion or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// The token endpoint's host, for the log.
    pub endpoint: String,
    pub problem: TokenProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    /// No HTTP answer: connection refused or closed, TLS, a timeout.
    Unreachable(String),
    /// The endpoint answered an error status, with the OAuth error fields of its body
    /// (RFC 6749 §5.2) when it had them.
    Refused {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// A success status without a usable token (not JSON, no access_token, not Bearer).
    BadAnswer { status: u16, problem: String },
    /// The request could not be made on our side (the service-account key cannot sign).
    Local(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = &self.endpoint;
        match &self.problem {
            TokenProblem::Unreachable(why) => {
                write!(f, "OAuth token endpoint {host} unreachable: {why}")?;
                if why.contains("certificate") || why.contains("UnknownIssuer") {
                    f.write_str(" (a private CA: set ca_file)")?;
                }
                Ok(())
            }
            TokenProblem::Refused {
                status,
                error,
                description,
            } => {
                write!(f, "OAuth token endpoint {host} answered HTTP {status}")?;
                if let Some(error) = error {
                    write!(f, " {error}")?;
                }
                if let Some(text) = description {
                    write!(f, ": {text}")?;
                }
                if let Some(fix) = fix_for(*status, error.as_deref()) {
                    write!(f, "; {fix}")?;
                }
                Ok(())
            }
            TokenProblem::Local(why) => {
                write!(f, "OAuth token request to {host} not made: {why}")
            }
            TokenProblem::BadAnswer { status, problem } => write!(
                f,
                "OAuth token endpoint {host} answered HTTP {status} without a usable token ({problem}); check token_url"
            ),
        }
    }
}

/// The likely fix for the common refusals (RFC 6749 §5.2 error codes).
fn fix_for(status: u16, error: Option<&str>) -> Option<&'static str> {
    Some(match error {
        Some("invalid_client") => "check client_id and client_secret_file (Microsoft 365: the secret's Value, not its ID; secrets expire) or the service-account key",
        Some("unauthorized_client") => "the application may not use this grant or scope: Microsoft 365 needs admin consent for SMTP.SendAsApp; Google needs domain-wide delegation of the scope to the service account's client id",
        Some("invalid_grant") => "check username (the user the service account acts for), that the key is not revoked, and this machine's clock",
        Some("invalid_scope") => "check scope",
        Some("invalid_request") | Some("unsupported_grant_type") => "check token_url and tenant",
        _ if status == 404 => "check token_url and tenant",
        _ => return None,
    })
}

/// Text from the endpoint made safe for one log line: no control characters, bounded.
pub(crate) fn words(text: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out.trim().to_string()
}
