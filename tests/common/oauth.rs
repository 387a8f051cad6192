//! A test CA, and an OAuth 2.0 token endpoint over HTTPS on 127.0.0.1 that answers the
//! client-credentials grant (RFC 6749 §4.4) as Microsoft's does, including its
//! `invalid_client` refusal. Dev-only: it reads the request by hand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const CLIENT_ID: &str = "0f1e2d3c-app-id";
pub const CLIENT_SECRET: &str = "Xy8Q~client-secret-value";

#[derive(Default)]
struct State {
    /// Token requests that reached the handler (a full HTTP request was read).
    requests: usize,
    /// Tokens handed out, in order.
    issued: Vec<String>,
    /// While set, every connection is closed at once: the endpoint is down.
    down: bool,
    expires_in: u64,
    /// The form fields of each request, as received.
    forms: Vec<Vec<(String, String)>>,
    /// For the JWT bearer grant: the service account's email and RSA public key (PKCS#1).
    service_account: Option<(String, Vec<u8>)>,
    /// The claims of each assertion that verified.
    claims: Vec<serde_json::Value>,
}

#[derive(Clone)]
pub struct TokenEndpoint {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Tokens the fake upstream takes: every one issued, until the test revokes it.
    pub valid: Arc<Mutex<Vec<String>>>,
}

impl TokenEndpoint {
    pub async fn start(acceptor: TlsAcceptor) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            expires_in: 3599,
            ..State::default()
        }));
        let valid = Arc::new(Mutex::new(Vec::new()));
        let endpoint = TokenEndpoint {
            addr,
            state: state.clone(),
            valid: valid.clone(),
        };
        let shared = endpoint.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if shared.state.lock().unwrap().down {
                    continue; // dropped: the client sees the connection closed
                }
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        shared.serve(tls).await;
                    }
                });
            }
        });
        endpoint
    }

    /// The URL the relay is configured with (path as Microsoft's).
    pub fn url(&self) -> String {
        format!("https://{}/tenant-id/oauth2/v2.0/token", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    pub fn forms(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().forms.clone()
    }

    /// Take JWT bearer assertions (RFC 7523) signed by this account's key.
    pub fn trust_service_account(&self, email: &str, public_key: Vec<u8>) {
        self.state.lock().unwrap().service_account = Some((email.to_string(), public_key));
    }

    pub fn claims(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().claims.clone()
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The upstream stops taking `token`, as when it has expired.
    pub fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().retain(|t| t != token);
    }

    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, stream: S) {
        let mut r = BufReader::new(stream);
        let mut length = 0usize;
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length.min(64 * 1024)];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let form = parse_form(&String::from_utf8_lossy(&body));
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (status, json) = {
            let mut s = self.state.lock().unwrap();
            s.requests += 1;
            s.forms.push(form.clone());
            let (status, json) = if !request_line.starts_with("POST /tenant-id/oauth2/v2.0/token ")
            {
                (
                    404,
                    r#"{"error":"invalid_request","error_description":"no such tenant"}"#
                        .to_string(),
                )
            } else if field("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer" {
                match verify_assertion(&field("assertion"), s.service_account.as_ref(), &self.url())
                {
                    Ok(claims) => {
                        s.claims.push(claims);
                        (200, String::new())
                    }
                    Err(why) => (
                        400,
                        format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#),
                    ),
                }
            } else if field("grant_type") != "client_credentials" {
                (400, r#"{"error":"unsupported_grant_type"}"#.to_string())
            } else if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
                (
                    401,
                    r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.","error_codes":[7000215]}"#.to_string(),
                )
            } else {
                (200, String::new())
            };
            if status == 200 {
                let token = format!("eyJ0eXAiOiJKV1Qi.token-{}", s.issued.len() + 1);
                s.issued.push(token.clone());
                self.valid.lock().unwrap().push(token.clone());
                (
                    200,
                    format!(
                        r#"{{"token_type":"Bearer","expires_in":{},"ext_expires_in":3599,"access_token":"{token}"}}"#,
                        s.expires_in
                    ),
                )
            } else {
                (status, json)
            }
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        let _ = r.get_mut().write_all(response.as_bytes()).await;
        let _ = r.get_mut().shutdown().await;
    }
}

/// Checks an RS256 JWT as Google does: signature by the account's key, iss, aud, exp.
fn verify_assertion(
    jwt: &str,
    account: Option<&(String, Vec<u8>)>,
    url: &str,
) -> Result<serde_json::Value, String> {
    use base64::Engine;
    let (email, public_key) = account.ok_or("no service account is trusted")?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(header).map_err(|_| "header")?).map_err(|_| "header")?;
    if header["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &b64.decode(signature).map_err(|_| "signature")?,
    )
    .map_err(|_| "Invalid JWT Signature.")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(claims).map_err(|_| "claims")?).map_err(|_| "claims")?;
    if claims["iss"] != email.as_str() || claims["aud"] != url {
        return Err("iss or aud wrong".into());
    }
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp <= iat || exp - iat > 3600 {
        return Err("Invalid JWT: exp".into());
    }
    Ok(claims)
}

/// application/x-www-form-urlencoded, decoded.
fn parse_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}
