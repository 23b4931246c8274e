//! OAuth2 for a service account (RFC 7523): an RS256 assertion exchanged at the token endpoint
//! for a bearer access token.
//!
//! [`TokenSource::token`] returns the cached token until shortly before it expires (a margin of
//! five minutes, or half the lifetime when that is shorter); then the first caller fetches a new
//! one while every other caller waits for it, so a burst of sends costs one token request (and
//! one failed request fails the whole burst, rather than each send trying again in turn).
//! [`TokenSource::reject`] drops a token FCM refused, so the next send fetches a fresh one.

use super::FcmConfigError;
use super::config::ServiceAccount;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scope that lets a token send FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// How long an assertion is valid: Google's maximum.
const ASSERTION_LIFETIME: u64 = 3600;
/// Renew this long before expiry at most.
const MAX_MARGIN: Duration = Duration::from_secs(300);
/// A longer `expires_in` than this is taken as this (Google's tokens live an hour).
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Unreachable, timed out, 5xx or 429: worth retrying.
    #[error("oauth token endpoint unavailable: {0}")]
    Unavailable(String),
    /// The endpoint refused the assertion (a revoked key, a wrong account): a configuration fault.
    #[error("oauth token endpoint refused the service account: {0}")]
    Refused(String),
}

/// The claims of an assertion.
#[derive(Debug, Serialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Signs assertions for one service account at one token endpoint.
pub struct Assertion {
    client_email: String,
    token_url: String,
    key: EncodingKey,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("client_email", &self.client_email)
            .field("token_url", &self.token_url)
            .finish()
    }
}

impl Assertion {
    /// Checks the key by signing once.
    pub(super) fn new(account: &ServiceAccount, token_url: String) -> Result<Assertion, FcmConfigError> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| FcmConfigError::PrivateKey(e.to_string()))?;
        let assertion = Assertion { client_email: account.client_email.clone(), token_url, key };
        assertion.sign().map_err(FcmConfigError::PrivateKey)?;
        Ok(assertion)
    }

    fn sign(&self) -> Result<String, String> {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let claims = Claims {
            iss: self.client_email.clone(),
            scope: SCOPE.into(),
            aud: self.token_url.clone(),
            iat,
            exp: iat + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct Grant {
    access_token: String,
    expires_in: u64,
}

struct Cached {
    token: Arc<str>,
    renew_at: Instant,
}

/// The access token shared by every send of one channel.
pub struct TokenSource {
    client: reqwest::Client,
    assertion: Assertion,
    current: RwLock<Option<Cached>>,
    /// Held while fetching, so one request serves every waiting send; it keeps the last failure
    /// and when it ended, for the sends that waited on that request.
    fetching: tokio::sync::Mutex<Option<(Instant, TokenError)>>,
}

impl TokenSource {
    pub(super) fn new(client: reqwest::Client, assertion: Assertion) -> TokenSource {
        TokenSource { client, assertion, current: RwLock::new(None), fetching: tokio::sync::Mutex::new(None) }
    }

    fn cached(&self) -> Option<Arc<str>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().filter(|c| Instant::now() < c.renew_at).map(|c| Arc::clone(&c.token))
    }

    /// A valid access token, fetched when none is cached or it is about to expire.
    pub async fn token(&self) -> Result<Arc<str>, TokenError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let waited_from = Instant::now();
        let mut last_failure = self.fetching.lock().await;
        // Another send may have fetched it, or failed to, while this one waited.
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        if let Some((at, error)) = &*last_failure
            && *at >= waited_from
        {
            return Err(error.clone());
        }
        let started = Instant::now();
        let grant = match self.fetch().await {
            Ok(grant) => grant,
            Err(error) => {
                *last_failure = Some((Instant::now(), error.clone()));
                return Err(error);
            }
        };
        let lifetime = Duration::from_secs(grant.expires_in).min(MAX_LIFETIME);
        let margin = MAX_MARGIN.min(lifetime / 2);
        let token: Arc<str> = grant.access_token.into();
        let cached = Cached { token: Arc::clone(&token), renew_at: started + lifetime - margin };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cached);
        tracing::debug!(lifetime_s = lifetime.as_secs(), "fcm access token fetched");
        Ok(token)
    }

    /// Forgets `token` after FCM refused it (unless a newer one already replaced it).
    pub fn reject(&self, token: &str) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| &*c.token == token) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Result<Grant, TokenError> {
        let assertion = self.assertion.sign().map_err(TokenError::Refused)?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let response = self
            .client
            .post(&self.assertion.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| TokenError::Unavailable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&body)
                .map_err(|e| TokenError::Unavailable(format!("unreadable token response: {e}")));
        }
        let reason = format!("http {}: {}", status.as_u16(), body.chars().take(200).collect::<String>());
        if status.is_server_error() || status.as_u16() == 429 {
            Err(TokenError::Unavailable(reason))
        } else {
            Err(TokenError::Refused(reason))
        }
    }
}
