//! Provider tokens: ES256 JWTs (`kid` = key id, `iss` = team id, `iat`), signed once and reused.
//!
//! Apple refuses a token older than an hour (`403 ExpiredProviderToken`) and new tokens more
//! often than every 20 minutes (`429 TooManyProviderTokenUpdates`), so [`TokenCache`] signs a
//! token when the last one is `refresh` old, and after APNs rejects it only once it is 20 minutes
//! old. Time is passed in (Unix seconds), so tests need not wait.
//!
//! Apple counts tokens per key, not per connection, so every connector of one key in a process
//! shares one cache ([`TokenCache::shared`]): the priority lane's connector, the normal lane's,
//! and those built again after a dispatcher restarts present the same token.

use super::config::TOKEN_REFRESH_RANGE;
use super::{ApnsConfigError, TokenError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

/// Signs provider tokens with the team's key.
pub struct Signer {
    key: EncodingKey,
    header: Header,
    team_id: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Signer {
    /// `pem` is the `.p8` file's text (PKCS#8, EC P-256).
    pub fn new(pem: &str, key_id: &str, team_id: &str) -> Result<Signer, ApnsConfigError> {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| ApnsConfigError::SigningKey(e.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.to_string());
        let signer = Signer { key, header, team_id: team_id.to_string() };
        // A key of the wrong curve parses but cannot sign: find out now, not at the first push.
        signer.sign(0).map_err(|e| ApnsConfigError::SigningKey(e.0))?;
        Ok(signer)
    }

    pub fn sign(&self, issued_at: u64) -> Result<String, TokenError> {
        let claims = Claims { iss: &self.team_id, iat: issued_at };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| TokenError(e.to_string()))
    }
}

struct Cached {
    jwt: Arc<str>,
    issued_at: u64,
    /// APNs answered 403 Expired/InvalidProviderToken to it: replace it as soon as allowed.
    rejected: bool,
}

/// The token in use, shared by every request; one signing at a time (callers arriving while a
/// token is signed wait and get that token).
pub struct TokenCache {
    signer: Signer,
    refresh: u64,
    least_interval: u64,
    current: Mutex<Option<Cached>>,
    signings: AtomicU64,
}

impl TokenCache {
    /// `refresh` is expected within Apple's [20m, 60m] (checked by the configuration).
    pub fn new(signer: Signer, refresh: Duration) -> TokenCache {
        TokenCache {
            signer,
            refresh: refresh.as_secs(),
            least_interval: TOKEN_REFRESH_RANGE.0.as_secs(),
            current: Mutex::new(None),
            signings: AtomicU64::new(0),
        }
    }

    /// The process's cache for this key (team, key id and the key itself), made on first use.
    /// A later call with the same key gets the same cache, whatever its `refresh`.
    pub fn shared(
        pem: &str,
        key_id: &str,
        team_id: &str,
        refresh: Duration,
    ) -> Result<Arc<TokenCache>, ApnsConfigError> {
        /// (team id, key id, key).
        type KeyOf = (String, String, String);
        /// One cache per key for the life of the process (a handful of keys at most).
        static CACHES: LazyLock<Mutex<HashMap<KeyOf, Arc<TokenCache>>>> = LazyLock::new(Mutex::default);
        let id = (team_id.to_string(), key_id.to_string(), pem.to_string());
        let mut caches = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = caches.get(&id) {
            return Ok(Arc::clone(cache));
        }
        let cache = Arc::new(TokenCache::new(Signer::new(pem, key_id, team_id)?, refresh));
        caches.insert(id, Arc::clone(&cache));
        Ok(cache)
    }

    /// The token to send at `now` (Unix seconds): the cached one unless it is due for renewal.
    pub fn token(&self, now: u64) -> Result<Arc<str>, TokenError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = current.as_ref() {
            let age = now.saturating_sub(cached.issued_at);
            let due = if cached.rejected { age >= self.least_interval } else { age >= self.refresh };
            if !due {
                return Ok(Arc::clone(&cached.jwt));
            }
        }
        let jwt: Arc<str> = self.signer.sign(now)?.into();
        self.signings.fetch_add(1, Ordering::Relaxed);
        *current = Some(Cached { jwt: Arc::clone(&jwt), issued_at: now, rejected: false });
        Ok(jwt)
    }

    /// APNs rejected `jwt` as expired or invalid at `now`: the next [`TokenCache::token`] signs a
    /// new one if Apple allows a new token yet. Returns how long until it does (zero: at once).
    /// A token already replaced is ignored, so a burst of rejections causes one signing.
    pub fn rejected(&self, jwt: &str, now: u64) -> Duration {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match current.as_mut() {
            Some(cached) if &*cached.jwt == jwt => {
                cached.rejected = true;
                let age = now.saturating_sub(cached.issued_at);
                Duration::from_secs(self.least_interval.saturating_sub(age))
            }
            _ => Duration::ZERO,
        }
    }

    /// How many tokens were signed.
    pub fn signings(&self) -> u64 {
        self.signings.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use base64::Engine;

    /// A fresh P-256 key as a `.p8` PEM.
    pub(crate) fn p8_pem() -> String {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    fn cache() -> TokenCache {
        let signer = Signer::new(&p8_pem(), "KEY1234567", "TEAM123456").unwrap();
        TokenCache::new(signer, Duration::from_secs(50 * 60))
    }

    #[test]
    fn one_key_has_one_cache_in_the_process() {
        let (pem, other) = (p8_pem(), p8_pem());
        let refresh = Duration::from_secs(50 * 60);
        let a = TokenCache::shared(&pem, "KEY1234567", "TEAM123456", refresh).unwrap();
        let b = TokenCache::shared(&pem, "KEY1234567", "TEAM123456", refresh).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.token(1_700_000_000).unwrap(), b.token(1_700_000_100).unwrap());
        assert_eq!(b.signings(), 1);
        let c = TokenCache::shared(&other, "KEY1234567", "TEAM123456", refresh).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let d = TokenCache::shared(&pem, "KEY7654321", "TEAM123456", refresh).unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
    }

    #[test]
    fn the_token_names_key_and_team_and_time() {
        let jwt = cache().token(1_700_000_000).unwrap();
        let header = jsonwebtoken::decode_header(&*jwt).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::ES256, Some("KEY1234567")));
        let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(&*jwt).unwrap().claims;
        assert_eq!(claims, serde_json::json!({"iss": "TEAM123456", "iat": 1_700_000_000}));
    }

    #[test]
    fn reused_within_the_interval_and_renewed_after_it() {
        let cache = cache();
        let t0 = 1_700_000_000;
        let first = cache.token(t0).unwrap();
        assert_eq!(cache.token(t0 + 49 * 60 + 59).unwrap(), first);
        assert_eq!(cache.signings(), 1);
        let second = cache.token(t0 + 50 * 60).unwrap();
        assert_ne!(second, first);
        assert_eq!(cache.signings(), 2);
        assert_eq!(cache.token(t0 + 51 * 60).unwrap(), second);
    }

    #[test]
    fn a_rejected_token_is_replaced_but_never_within_20_minutes() {
        let cache = cache();
        let t0 = 1_700_000_000;
        let first = cache.token(t0).unwrap();
        // Rejected 5 minutes in: kept for 15 more (a new one would be refused as too frequent).
        assert_eq!(cache.rejected(&first, t0 + 300), Duration::from_secs(15 * 60));
        assert_eq!(cache.token(t0 + 19 * 60).unwrap(), first);
        // At 20 minutes the rejected token goes; the fresh one lives its full interval.
        let second = cache.token(t0 + 20 * 60).unwrap();
        assert_ne!(second, first);
        assert_eq!(cache.token(t0 + 60 * 60).unwrap(), second);
        // A late rejection of the replaced token changes nothing.
        assert_eq!(cache.rejected(&first, t0 + 61 * 60), Duration::ZERO);
        assert_eq!(cache.token(t0 + 61 * 60).unwrap(), second);
        // Rejected once old enough: renewed at once, and only once for many rejections.
        assert_eq!(cache.rejected(&second, t0 + 45 * 60), Duration::ZERO);
        assert_eq!(cache.rejected(&second, t0 + 45 * 60), Duration::ZERO);
        let third = cache.token(t0 + 45 * 60).unwrap();
        assert_ne!(third, second);
        assert_eq!(cache.token(t0 + 45 * 60).unwrap(), third);
        assert_eq!(cache.signings(), 3);
    }

    #[test]
    fn concurrent_callers_share_one_signing() {
        let cache = Arc::new(cache());
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (cache, barrier) = (Arc::clone(&cache), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.token(1_700_000_000).unwrap()
                })
            })
            .collect();
        let tokens: Vec<Arc<str>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(tokens.iter().all(|t| *t == tokens[0]));
        assert_eq!(cache.signings(), 1);
    }

    #[test]
    fn a_key_that_is_not_an_ec_pkcs8_pem_is_refused() {
        let error = Signer::new("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "K", "T").err();
        assert!(matches!(error, Some(ApnsConfigError::SigningKey(_))), "{error:?}");
        assert!(error.unwrap().to_string().starts_with("providers.apns.auth.key"));
    }
}
