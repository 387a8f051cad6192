//! How the relay authenticates to an upstream after EHLO: not at all, AUTH with the
//! password from `password_file`, or AUTH XOAUTH2 with a token from the upstream's
//! [`TokenSource`] (`auth = "oauth2"`). A token failure, or a refusal of a token the
//! endpoint just issued, is a [`Cause`] that defers the mail; a cached token the upstream
//! refuses with 535 is dropped, and the AUTH tried once more with a new one.

use super::redact::Redactor;
use super::verdict::{Cause, Phase};
use crate::config::{AuthMethod, UpstreamConfig};
use crate::oauth::{AccessToken, Secret, TokenError, TokenProblem, TokenSource};
use mail_send::{Credentials, SmtpClient};
use smtp_proto::EhloResponse;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug)]
pub(super) enum Login {
    None,
    Password { user: String, password: Secret },
    OAuth2 { user: String, tokens: TokenSource },
}

impl Login {
    /// Reads the password or the OAuth secret now, so a bad file stops the start.
    pub fn from_config(
        config: &UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Login, String> {
        if let Some(settings) = config.oauth2() {
            let tokens = TokenSource::from_settings(
                &settings,
                tls,
                config.connect_timeout.0,
                config.command_timeout.0,
            )?;
            return Ok(Login::OAuth2 {
                user: settings.user,
                tokens,
            });
        }
        debug_assert_eq!(config.auth_method(), AuthMethod::Password);
        match (&config.username, &config.password_file) {
            (Some(user), Some(path)) => Ok(Login::Password {
                user: user.clone(),
                password: Secret::first_line_of(path, "upstream.password_file")?,
            }),
            _ => Ok(Login::None),
        }
    }

    /// Takes our long-lived credentials out of upstream replies (tokens are taken out
    /// where they are used, in [`Login::authenticate`]).
    pub fn redactor(&self) -> Redactor {
        match self {
            Login::None => Redactor::default(),
            Login::Password { user, password } => {
                Redactor::new(Some(user), Some(password.expose()))
            }
            Login::OAuth2 { user, tokens } => Redactor::new(Some(user), tokens.client_secret()),
        }
    }

    /// The user name AUTH uses, for `Debug`.
    pub fn user(&self) -> Option<&str> {
        match self {
            Login::None => None,
            Login::Password { user, .. } | Login::OAuth2 { user, .. } => Some(user),
        }
    }

    /// AUTH on a greeted connection to `host`; `upstream` names it in log lines.
    pub async fn authenticate<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        c: &mut SmtpClient<T>,
        caps: &EhloResponse<String>,
        host: &str,
        upstream: &str,
    ) -> Result<(), Cause> {
        match self {
            Login::None => Ok(()),
            Login::Password { user, password } => {
                let credentials = Credentials::new(user.as_str(), password.expose());
                c.authenticate(&credentials, caps)
                    .await
                    .map(|_| ())
                    .map_err(|e| Cause::from_send(&e, Phase::Auth, host))
            }
            Login::OAuth2 { user, tokens } => {
                if caps.auth_mechanisms & smtp_proto::AUTH_XOAUTH2 == 0 {
                    return Err(Cause::our_config(
                        "the upstream does not offer AUTH XOAUTH2, which upstream.auth = \"oauth2\" needs",
                    )
                    .with_fix("check upstream.host and port (Microsoft 365: smtp.office365.com:587)")
                    .at(Phase::Auth));
                }
                let token = tokens
                    .token()
                    .await
                    .map_err(|e| token_failed(&e, upstream).at(Phase::Auth))?;
                match xoauth2(c, caps, user, &token).await {
                    Ok(()) => Ok(()),
                    Err(e) if token.cached && is_535(&e) => {
                        tracing::info!(upstream = %upstream, token_endpoint = %tokens.endpoint(), "upstream refused the cached OAuth token (535); fetching a new one and trying once more");
                        let fresh = tokens
                            .renew(&token)
                            .await
                            .map_err(|e| token_failed(&e, upstream).at(Phase::Auth))?;
                        xoauth2(c, caps, user, &fresh).await.map_err(|e| {
                            Redactor::bearer(user, fresh.value.expose())
                                .cause(Cause::oauth_refused(&e, host))
                        })
                    }
                    Err(e) => Err(Redactor::bearer(user, token.value.expose())
                        .cause(Cause::oauth_refused(&e, host))),
                }
            }
        }
    }
}

async fn xoauth2<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    caps: &EhloResponse<String>,
    user: &str,
    token: &AccessToken,
) -> Result<(), mail_send::Error> {
    let credentials = Credentials::new_xoauth2(user, token.value.expose());
    c.authenticate(&credentials, caps).await.map(|_| ())
}

fn is_535(e: &mail_send::Error) -> bool {
    matches!(e, mail_send::Error::AuthenticationFailed(r) if r.code == 535)
}

/// The log line of a failed token request (its fields in words), and the deferral cause.
fn token_failed(e: &TokenError, upstream: &str) -> Cause {
    let (status, error) = match &e.problem {
        TokenProblem::Refused { status, error, .. } => (Some(*status), error.as_deref()),
        TokenProblem::BadAnswer { status, .. } => (Some(*status), None),
        TokenProblem::Unreachable(_) | TokenProblem::Local(_) => (None, None),
    };
    let cause = Cause::from_token(e);
    let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
    tracing::warn!(upstream = %upstream, token_endpoint = %e.endpoint, http_status = %status, oauth_error = %error.unwrap_or("none"), fault = %cause.fault.name(), reason = %e, "OAuth token request failed; mail waits and is retried");
    cause
}
