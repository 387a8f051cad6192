//! How the relay authenticates to an upstream: `auth = "password"` (AUTH PLAIN/LOGIN with
//! `password_file`, the default) or `auth = "oauth2"` (AUTH XOAUTH2 with an access token
//! the relay fetches itself, src/oauth). The presets for Microsoft 365 and Google, and every
//! rule about which OAuth fields go together, live here; [`UpstreamConfig::oauth2`] hands
//! delivery the settings already resolved.

use super::{ConfigError, UpstreamConfig};
use serde::Deserialize;
use std::path::PathBuf;

/// How AUTH is done with an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `username` and the password in `password_file` (no AUTH without a username).
    #[default]
    Password,
    /// AUTH XOAUTH2 as `username`, with a token from `token_url`.
    Oauth2,
}

/// Known token endpoints, so an operator writes a tenant id instead of two URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuthPreset {
    /// Microsoft Entra ID client-credentials grant for Exchange Online SMTP AUTH; needs
    /// `tenant`.
    Microsoft365,
    /// Google's token endpoint with a service-account key (domain-wide delegation).
    Google,
}

impl OAuthPreset {
    fn name(self) -> &'static str {
        match self {
            OAuthPreset::Microsoft365 => "microsoft365",
            OAuthPreset::Google => "google",
        }
    }

    /// (token_url, scope). Microsoft: the tenant's v2.0 endpoint and Exchange Online's
    /// `.default` scope, the one the client-credentials grant takes (the app needs the
    /// SMTP.SendAsApp permission). Google: the scope its XOAUTH2 document names for SMTP.
    fn endpoint(self, tenant: &str) -> (String, String) {
        match self {
            OAuthPreset::Microsoft365 => (
                format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
                "https://outlook.office365.com/.default".into(),
            ),
            OAuthPreset::Google => (
                "https://oauth2.googleapis.com/token".into(),
                "https://mail.google.com/".into(),
            ),
        }
    }
}

/// Which OAuth 2.0 grant gets the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthGrant {
    /// RFC 6749 §4.4: `client_id` and the secret in `secret_file` (first line).
    ClientSecret {
        client_id: String,
        secret_file: PathBuf,
    },
    /// RFC 7523: a JWT signed with a Google service-account key (the JSON file), acting for
    /// the upstream's `username` (`sub`).
    ServiceAccount { key_file: PathBuf },
}

/// The OAuth settings of one upstream with the preset applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub token_url: String,
    pub scope: String,
    /// The mailbox XOAUTH2 names (`user=`), and for a service account the user it acts for.
    pub user: String,
    pub grant: OAuthGrant,
}

impl UpstreamConfig {
    /// The AUTH method in force (`auth`, or password when unset).
    pub fn auth_method(&self) -> AuthMethod {
        self.auth.unwrap_or_default()
    }

    /// The resolved OAuth settings, for `auth = "oauth2"` (None otherwise). Call after
    /// validation: fields it checked are taken as present.
    pub fn oauth2(&self) -> Option<OAuthSettings> {
        if self.auth_method() != AuthMethod::Oauth2 {
            return None;
        }
        let (preset_url, preset_scope) = match self.oauth2_preset {
            Some(p) => {
                let (u, s) = p.endpoint(self.tenant.as_deref().unwrap_or(""));
                (Some(u), Some(s))
            }
            None => (None, None),
        };
        let grant = match (&self.client_secret_file, &self.service_account_file) {
            (Some(file), _) => OAuthGrant::ClientSecret {
                client_id: self.client_id.clone().unwrap_or_default(),
                secret_file: file.clone(),
            },
            (None, file) => OAuthGrant::ServiceAccount {
                key_file: file.clone().unwrap_or_default(),
            },
        };
        Some(OAuthSettings {
            token_url: self.token_url.clone().or(preset_url).unwrap_or_default(),
            scope: self.scope.clone().or(preset_scope).unwrap_or_default(),
            user: self.username.clone().unwrap_or_default(),
            grant,
        })
    }

    /// The rules of `auth` and the OAuth fields (field names as in `[upstream]`; the list
    /// form renames them).
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let oauth_fields = [
            ("oauth2_preset", self.oauth2_preset.is_some()),
            ("tenant", self.tenant.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("service_account_file", self.service_account_file.is_some()),
            ("scope", self.scope.is_some()),
        ];
        if self.auth_method() == AuthMethod::Password {
            if let Some((field, _)) = oauth_fields.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    format!("upstream.{field}"),
                    "is an OAuth setting: set upstream.auth = \"oauth2\" to use it",
                ));
            }
            return Ok(());
        }
        let field = |f: &str| format!("upstream.{f}");
        if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
            return Err(ConfigError::new(
                field("username"),
                "is required with auth = \"oauth2\": the mailbox to send as (XOAUTH2 user=; for Google also the user the service account acts for)",
            ));
        }
        if self.password_file.is_some() {
            return Err(ConfigError::new(
                field("password_file"),
                "is for auth = \"password\"; with auth = \"oauth2\" the token replaces it, remove it",
            ));
        }
        match (&self.client_secret_file, &self.service_account_file) {
            (None, None) => {
                return Err(ConfigError::new(
                    field("client_secret_file"),
                    "auth = \"oauth2\" needs client_secret_file (with client_id) or service_account_file (a Google service-account JSON key)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("service_account_file"),
                    "set either client_secret_file or service_account_file, not both",
                ))
            }
            (Some(_), None) if self.client_id.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError::new(
                    field("client_id"),
                    "is required with client_secret_file (Microsoft 365: the application (client) id)",
                ))
            }
            (None, Some(_)) if self.client_id.is_some() => {
                return Err(ConfigError::new(
                    field("client_id"),
                    "is read from service_account_file (client_email); remove it",
                ))
            }
            _ => {}
        }
        self.validate_preset()?;
        for (name, path) in [
            ("client_secret_file", &self.client_secret_file),
            ("service_account_file", &self.service_account_file),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| {
                    ConfigError::new(field(name), format!("{}: {e}", path.display()))
                })?;
            }
        }
        let Some(settings) = self.oauth2() else {
            return Ok(());
        };
        check_token_url(&settings.token_url)
            .map_err(|p| ConfigError::new(field("token_url"), p))?;
        if settings.scope.trim().is_empty() {
            return Err(ConfigError::new(
                field("scope"),
                "is required with auth = \"oauth2\" (or set oauth2_preset)",
            ));
        }
        Ok(())
    }

    fn validate_preset(&self) -> Result<(), ConfigError> {
        let field = |f: &str| format!("upstream.{f}");
        match (self.oauth2_preset, &self.tenant) {
            (Some(OAuthPreset::Microsoft365), None) => Err(ConfigError::new(
                field("tenant"),
                "is required with oauth2_preset = \"microsoft365\": the directory (tenant) id, or the tenant's domain",
            )),
            (Some(OAuthPreset::Microsoft365), Some(t)) if !is_tenant(t) => Err(ConfigError::new(
                field("tenant"),
                format!("\"{}\" is not a tenant id (a GUID or a domain name)", t.escape_default()),
            )),
            (Some(OAuthPreset::Microsoft365), Some(_)) if self.service_account_file.is_some() => {
                Err(ConfigError::new(
                    field("service_account_file"),
                    "is for Google; Microsoft 365 uses client_id and client_secret_file",
                ))
            }
            (Some(OAuthPreset::Google), _) if self.client_secret_file.is_some() => {
                Err(ConfigError::new(
                    field("client_secret_file"),
                    "Google's SMTP takes tokens for a user: use service_account_file (a service-account key with domain-wide delegation)",
                ))
            }
            (None, Some(_)) => Err(ConfigError::new(
                field("tenant"),
                "is only used with oauth2_preset = \"microsoft365\"",
            )),
            (Some(p @ OAuthPreset::Google), Some(_)) => Err(ConfigError::new(
                field("tenant"),
                format!("is not used with oauth2_preset = \"{}\"", p.name()),
            )),
            _ => Ok(()),
        }
    }
}

/// A tenant goes into the token URL's path: letters, digits, hyphens and dots only.
fn is_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 253
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The token request carries the client secret: HTTPS only, and a URL with a host.
fn check_token_url(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is required with auth = \"oauth2\" (or set oauth2_preset)".into());
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "\"{text}\" must be an https:// URL: the request carries the client secret"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials; use client_secret_file".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn with_files(body: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let key = dir.path().join("sa.json");
        std::fs::write(&secret, "s3cret\n").unwrap();
        std::fs::write(&key, "{}").unwrap();
        let text = format!(
            "[upstream]\nhost = \"smtp.office365.com\"\n{}",
            body.replace("SECRET", &secret.display().to_string())
                .replace("KEY", &key.display().to_string())
        );
        (dir, text)
    }

    fn refused(body: &str) -> ConfigError {
        let (_dir, text) = with_files(body);
        Config::from_toml(&text).unwrap_err()
    }

    #[test]
    fn the_microsoft365_preset_fills_token_url_and_scope_from_the_tenant() {
        let (_dir, text) = with_files(
            "auth = \"oauth2\"\noauth2_preset = \"microsoft365\"\ntenant = \"9b7e4f4e-1111-2222-3333-444455556666\"\nusername = \"relay@example.com\"\nclient_id = \"app\"\nclient_secret_file = \"SECRET\"\n",
        );
        let config = Config::from_toml(&text).unwrap();
        let s = config.upstream_list()[0].oauth2().unwrap();
        assert_eq!(
            s.token_url,
            "https://login.microsoftonline.com/9b7e4f4e-1111-2222-3333-444455556666/oauth2/v2.0/token"
        );
        assert_eq!(s.scope, "https://outlook.office365.com/.default");
        assert_eq!(s.user, "relay@example.com");
        assert!(
            matches!(s.grant, OAuthGrant::ClientSecret { ref client_id, .. } if client_id == "app")
        );
    }

    #[test]
    fn the_google_preset_takes_a_service_account_key() {
        let (_dir, text) = with_files(
            "auth = \"oauth2\"\noauth2_preset = \"google\"\nusername = \"box@example.com\"\nservice_account_file = \"KEY\"\n",
        );
        let config = Config::from_toml(&text).unwrap();
        let s = config.upstream_list()[0].oauth2().unwrap();
        assert_eq!(s.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(s.scope, "https://mail.google.com/");
        assert!(matches!(s.grant, OAuthGrant::ServiceAccount { .. }));
    }

    #[test]
    fn password_stays_the_default() {
        let (_dir, text) = with_files("username = \"u\"\npassword_file = \"SECRET\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.upstream_list()[0].auth_method(),
            AuthMethod::Password
        );
        assert!(config.upstream_list()[0].oauth2().is_none());
    }

    /// Every wrong combination is refused, naming the field to change.
    #[test]
    fn wrong_combinations_name_the_field() {
        let base = "auth = \"oauth2\"\nusername = \"u@example.com\"\n";
        for (body, field) in [
            ("client_id = \"x\"\n".to_string(), "upstream.client_id"),
            (format!("{base}client_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.token_url"),
            (format!("{base}token_url = \"http://login.test/token\"\nscope = \"s\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.token_url"),
            (format!("{base}token_url = \"https://login.test/token\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.scope"),
            (format!("{base}oauth2_preset = \"microsoft365\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.tenant"),
            (format!("{base}oauth2_preset = \"microsoft365\"\ntenant = \"x/../evil\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.tenant"),
            (format!("{base}oauth2_preset = \"google\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\n"), "upstream.client_secret_file"),
            (format!("{base}oauth2_preset = \"google\"\n"), "upstream.client_secret_file"),
            (format!("{base}oauth2_preset = \"google\"\nservice_account_file = \"KEY\"\nclient_secret_file = \"SECRET\"\n"), "upstream.service_account_file"),
            (format!("{base}oauth2_preset = \"microsoft365\"\ntenant = \"t\"\nclient_secret_file = \"SECRET\"\n"), "upstream.client_id"),
            (format!("{base}oauth2_preset = \"google\"\nclient_id = \"a\"\nservice_account_file = \"KEY\"\n"), "upstream.client_id"),
            (format!("{base}oauth2_preset = \"google\"\ntenant = \"t\"\nservice_account_file = \"KEY\"\n"), "upstream.tenant"),
            (format!("{base}oauth2_preset = \"microsoft365\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret_file = \"/nonexistent/secret\"\n"), "upstream.client_secret_file"),
            (format!("{base}oauth2_preset = \"microsoft365\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret_file = \"SECRET\"\npassword_file = \"SECRET\"\n"), "upstream.password_file"),
            ("auth = \"oauth2\"\noauth2_preset = \"google\"\nservice_account_file = \"KEY\"\n".to_string(), "upstream.username"),
            // The token would cross the network in clear text.
            (format!("{base}tls = \"none\"\noauth2_preset = \"google\"\nservice_account_file = \"KEY\"\n"), "upstream.tls"),
        ] {
            let err = refused(&body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn the_list_form_names_the_upstream_by_index() {
        let (_dir, text) = with_files("");
        let text = text.replace("[upstream]", "[[upstreams]]")
            + "auth = \"oauth2\"\nusername = \"u@example.com\"\n";
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.field, "upstreams[0].client_secret_file");
    }
}
