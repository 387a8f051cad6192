//! OAuth 2.0 access tokens for upstreams that take `AUTH XOAUTH2` (Microsoft 365, Google).
//!
//! A [`TokenSource`] belongs to one upstream: it fetches a token from the token endpoint
//! (`http`) with the configured grant (`grant`), keeps it until shortly before it expires,
//! and lets only one fetch run at a time, so concurrent connections wait for the same
//! answer instead of asking again. Failures come back as a [`TokenError`] (`error`);
//! delivery turns them into a deferral. Tokens and secrets are held in [`Secret`], which
//! no `Debug` or log line shows.

mod error;
mod grant;
mod http;

pub use error::{TokenError, TokenProblem};

use crate::config::OAuthSettings;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use zeroize::Zeroizing;

/// Lifetime assumed for a token whose answer gave none (RFC 6749 makes expires_in
/// optional); a token refused earlier is renewed on the upstream's 535 anyway.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest lifetime believed, so a wrong expires_in cannot keep a token for ever.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token or secret: its `Debug` shows nothing, and its memory is zeroed when dropped.
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Arc::new(Zeroizing::new(value)))
    }

    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The first line of a secret file, like `password_file`. Errors name `field`.
    pub fn first_line_of(path: &std::path::Path, field: &str) -> Result<Secret, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{field} {}: {e}", path.display()))?,
        );
        let first = text.lines().next().unwrap_or("").trim_end();
        if first.is_empty() {
            return Err(format!("{field} {} is empty", path.display()));
        }
        Ok(Secret::new(first.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a token endpoint gave.
pub struct Fetched {
    pub token: Secret,
    pub expires_in: Option<Duration>,
}

/// A token handed to a connection; `generation` tells a renewal which one was refused.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    /// It came from the cache, not from a fetch for this request: if the upstream refuses
    /// it, a new one may help.
    pub cached: bool,
    generation: u64,
}

/// Where tokens come from: the HTTPS endpoint, or a stand-in in unit tests.
pub trait Fetch: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Fetched, TokenError>> + Send + '_>>;
}

struct HttpFetch {
    endpoint: http::Endpoint,
    grant: grant::Grant,
}

impl Fetch for HttpFetch {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Fetched, TokenError>> + Send + '_>> {
        Box::pin(self.endpoint.fetch(&self.grant))
    }
}

/// When a token of this lifetime is renewed: 5 minutes before it expires, or at 80% of
/// its lifetime when that is later (short-lived tokens).
pub fn renew_after(lifetime: Duration) -> Duration {
    let lifetime = lifetime.min(MAX_LIFETIME);
    lifetime.saturating_sub((lifetime / 5).min(Duration::from_secs(300)))
}

struct Cached {
    token: AccessToken,
    renew_at: Instant,
}

#[derive(Default)]
struct Slot {
    current: Option<Cached>,
    generation: u64,
}

/// Where `now` comes from: the monotonic clock, or a test's hand-moved one.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct TokenSource {
    fetcher: Box<dyn Fetch>,
    clock: Clock,
    /// Held across a fetch: that is what makes it single-flight.
    slot: tokio::sync::Mutex<Slot>,
    /// Token requests made (answered or not), for tests and `upstream check`.
    fetches: AtomicU64,
    endpoint: String,
    /// The client secret, if any, so callers can take it out of texts they pass on.
    secret: Option<Secret>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.endpoint)
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token source of an upstream: reads its secret or key file now, so a bad one is
    /// an error at start (naming the field), not at the first delivery.
    pub fn from_settings(
        settings: &OAuthSettings,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<TokenSource, String> {
        let grant = grant::Grant::load(settings)?;
        let endpoint = http::Endpoint::new(&settings.token_url, tls, connect_timeout, timeout)?;
        let host = endpoint.host().to_string();
        let secret = grant.secret().map(|s| Secret::new(s.to_string()));
        let mut source = TokenSource::with_fetcher(Box::new(HttpFetch { endpoint, grant }), &host);
        source.secret = secret;
        Ok(source)
    }

    pub fn with_fetcher(fetcher: Box<dyn Fetch>, endpoint: &str) -> TokenSource {
        TokenSource {
            fetcher,
            clock: Arc::new(Instant::now),
            slot: tokio::sync::Mutex::new(Slot::default()),
            fetches: AtomicU64::new(0),
            endpoint: endpoint.to_string(),
            secret: None,
        }
    }

    /// The same source reading `now` from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> TokenSource {
        self.clock = clock;
        self
    }

    /// The token endpoint's host.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn client_secret(&self) -> Option<&str> {
        self.secret.as_ref().map(Secret::expose)
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token that is not due for renewal: the cached one, or a new one.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = &slot.current {
            if (self.clock)() < cached.renew_at {
                return Ok(AccessToken {
                    cached: true,
                    ..cached.token.clone()
                });
            }
        }
        self.refill(&mut slot).await
    }

    /// The upstream refused `rejected`: forget it and fetch another, unless another
    /// connection already did.
    pub async fn renew(&self, rejected: &AccessToken) -> Result<AccessToken, TokenError> {
        let mut slot = self.slot.lock().await;
        match &slot.current {
            Some(cached) if cached.token.generation != rejected.generation => {
                return Ok(AccessToken {
                    cached: true,
                    ..cached.token.clone()
                })
            }
            _ => slot.current = None,
        }
        self.refill(&mut slot).await
    }

    async fn refill(&self, slot: &mut Slot) -> Result<AccessToken, TokenError> {
        slot.current = None;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetcher.fetch().await?;
        let lifetime = fetched.expires_in.unwrap_or(ASSUMED_LIFETIME);
        slot.generation += 1;
        let token = AccessToken {
            value: fetched.token,
            cached: false,
            generation: slot.generation,
        };
        tracing::info!(token_endpoint = %self.endpoint, expires_in_s = lifetime.as_secs(), renew_in_s = renew_after(lifetime).as_secs(), "OAuth token fetched");
        slot.current = Some(Cached {
            token: token.clone(),
            renew_at: (self.clock)() + renew_after(lifetime),
        });
        Ok(token)
    }
}

#[cfg(test)]
mod tests;
