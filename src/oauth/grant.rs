//! The body of a token request for each grant: client credentials (RFC 6749 §4.4) or a
//! JWT assertion signed with a Google service-account key (RFC 7523, RS256 through ring,
//! as DKIM signing is).

use super::Secret;
use crate::config::{OAuthGrant, OAuthSettings};
use base64::Engine;
use zeroize::Zeroizing;

/// How long the assertion is valid: Google takes at most one hour.
const ASSERTION_LIFETIME_S: u64 = 3600;

pub(crate) enum Grant {
    ClientSecret {
        client_id: String,
        secret: Secret,
        scope: String,
    },
    ServiceAccount {
        // Boxed: the key pair is large, and a grant is made once per upstream.
        key: Box<ServiceAccountKey>,
        scope: String,
        /// The user the account acts for (domain-wide delegation).
        sub: String,
        /// The token endpoint, which the assertion names as its audience.
        aud: String,
    },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::ClientSecret { client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("client_id", client_id)
                .field("secret", &"<redacted>")
                .finish(),
            Grant::ServiceAccount { key, sub, .. } => f
                .debug_struct("ServiceAccount")
                .field("client_email", &key.client_email)
                .field("sub", sub)
                .finish(),
        }
    }
}

/// A form field value; zeroed when dropped, since some hold the secret.
pub(crate) type Form = Vec<(&'static str, Zeroizing<String>)>;

impl Grant {
    /// Reads the secret or key file named by the settings. Errors name the field.
    pub fn load(settings: &OAuthSettings) -> Result<Grant, String> {
        match &settings.grant {
            OAuthGrant::ClientSecret {
                client_id,
                secret_file,
            } => Ok(Grant::ClientSecret {
                client_id: client_id.clone(),
                secret: Secret::first_line_of(secret_file, "upstream.client_secret_file")?,
                scope: settings.scope.clone(),
            }),
            OAuthGrant::ServiceAccount { key_file } => Ok(Grant::ServiceAccount {
                key: Box::new(ServiceAccountKey::from_file(key_file)?),
                scope: settings.scope.clone(),
                sub: settings.user.clone(),
                aud: settings.token_url.clone(),
            }),
        }
    }

    /// The secrets that might come back in an error text, to take out of it.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Grant::ClientSecret { secret, .. } => Some(secret.expose()),
            Grant::ServiceAccount { .. } => None,
        }
    }

    /// The form fields of the token request at `now` (Unix seconds).
    pub fn form(&self, now: u64) -> Result<Form, String> {
        let z = |s: &str| Zeroizing::new(s.to_string());
        Ok(match self {
            Grant::ClientSecret {
                client_id,
                secret,
                scope,
            } => vec![
                ("grant_type", z("client_credentials")),
                ("client_id", z(client_id)),
                ("client_secret", z(secret.expose())),
                ("scope", z(scope)),
            ],
            Grant::ServiceAccount {
                key,
                scope,
                sub,
                aud,
            } => {
                let claims = serde_json::json!({
                    "iss": key.client_email,
                    "sub": sub,
                    "scope": scope,
                    "aud": aud,
                    "iat": now,
                    "exp": now + ASSERTION_LIFETIME_S,
                });
                vec![
                    (
                        "grant_type",
                        z("urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ),
                    ("assertion", Zeroizing::new(key.sign_jwt(&claims)?)),
                ]
            }
        })
    }
}

/// The parts of a Google service-account JSON key the JWT needs.
pub(crate) struct ServiceAccountKey {
    client_email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
}

impl ServiceAccountKey {
    pub fn from_file(path: &std::path::Path) -> Result<ServiceAccountKey, String> {
        let field = "upstream.service_account_file";
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{field} {}: {e}", path.display()))?,
        );
        // serde_json's error says where, never what: the text holds the private key.
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{field} {}: not a service-account JSON key (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        Self::from_parts(file).map_err(|problem| format!("{field} {}: {problem}", path.display()))
    }

    fn from_parts(file: KeyFile) -> Result<ServiceAccountKey, String> {
        use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "has type \"{kind}\", not \"service_account\" (create a key for a service account in the Google Cloud console)"
            ));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or("has no client_email")?;
        let pem = Zeroizing::new(file.private_key.ok_or("has no private_key")?);
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "private_key is not a PEM private key")?;
        let PrivateKeyDer::Pkcs8(pkcs8) = der else {
            return Err("private_key is not PKCS#8 (\"BEGIN PRIVATE KEY\")".into());
        };
        let key = ring::signature::RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der())
            .map_err(|e| format!("private_key is not a usable RSA key ({e})"))?;
        Ok(ServiceAccountKey {
            client_email,
            key_id: file.private_key_id,
            key,
        })
    }

    /// `header.claims.signature`, each base64url without padding (RFC 7515), RS256.
    fn sign_jwt(&self, claims: &serde_json::Value) -> Result<String, String> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the token request with the service-account key")?;
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }
}
