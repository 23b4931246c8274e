//! APNs' provider API as the sandbox serves it.
//!
//! `POST /3/device/{device token}` with APNs' checks and answers (`{"reason": …}` bodies, the
//! `apns-id` header echoed or made up):
//! - `apns-topic` missing: 400 `MissingTopic`; `apns-id` not a UUID: 400 `BadMessageId`.
//! - `authorization: bearer <jwt>`: missing, 403 `MissingProviderToken`; not ES256-signed by the
//!   test key [`TEST_PRIVATE_KEY`] with `kid` [`TEST_KEY_ID`] and `iss` [`TEST_TEAM_ID`], 403
//!   `InvalidProviderToken`; `iat` older than the max token age (1 h, [`ApnsState::set_max_token_age`]),
//!   403 `ExpiredProviderToken`; a new token whose `iat` is less than the update interval (20 min,
//!   [`ApnsState::set_token_update_interval`]) after the key's previous one, 429
//!   `TooManyProviderTokenUpdates`.
//! - The device token must be 64 hex digits (400 `BadDeviceToken`); one starting with
//!   [`UNREGISTERED_PREFIX`] (`dead`) is an uninstalled app: 410 `Unregistered` with `timestamp`.
//! - A payload over 4096 bytes: 413 `PayloadTooLarge`; not a JSON object with `aps`: 400 `BadPayload`.
//! - Faults: 503 `ServiceUnavailable`, 429 `TooManyRequests` with `Retry-After: 1`, a hold then
//!   503, accept then hold, 400 `BadDeviceToken`. Success is 200 with an empty body.
//!
//! It also counts the HTTP versions requests came in ([`ApnsState::http_versions`]) and the most
//! requests in flight at once ([`ApnsState::most_in_flight`]).

use super::{Fate, State};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The sandbox's APNs signing key (PKCS#8 PEM, a `.p8` file). TEST ONLY: generated for the
/// sandbox, published in the repository, trusted by nothing but the sandbox.
pub const TEST_PRIVATE_KEY: &str = include_str!("keys/apns-test.p8");
/// The public half the sandbox verifies provider tokens with.
const TEST_PUBLIC_KEY: &str = include_str!("keys/apns-test.pub.pem");
/// The key id (`kid`) the sandbox knows [`TEST_PRIVATE_KEY`] by.
pub const TEST_KEY_ID: &str = "HERALDKEY1";
/// The team id (`iss`) the test key belongs to.
pub const TEST_TEAM_ID: &str = "HERALDTEAM";
/// Device tokens starting with this (64 hex digits in all) belong to an uninstalled app: 410.
pub const UNREGISTERED_PREFIX: &str = "dead";
/// APNs' limit on an alert payload, in bytes.
pub const MAX_PAYLOAD: usize = 4096;

/// The `[providers.apns]` section of a Herald configuration that pushes to a sandbox at
/// `base_url` with the test key (for `--print-config`).
pub fn config_toml(base_url: &str) -> String {
    let key = TEST_PRIVATE_KEY.trim_end();
    format!(
        "[providers.apns]\n\
         topic = \"com.example.herald\"\n\
         base_url = \"{base_url}\"\n\
         \n\
         [providers.apns.auth]\n\
         kind = \"token\"\n\
         key_id = \"{TEST_KEY_ID}\"\n\
         team_id = \"{TEST_TEAM_ID}\"\n\
         key = \"\"\"\n{key}\n\"\"\"\n"
    )
}

/// The APNs endpoint's own state.
pub struct ApnsState {
    key: Option<DecodingKey>,
    max_token_age: Mutex<Duration>,
    token_update_interval: Mutex<Duration>,
    /// Per key id: the token in use and its `iat`.
    tokens: Mutex<HashMap<String, (String, u64)>>,
    http1: AtomicU64,
    http2: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

impl Default for ApnsState {
    fn default() -> Self {
        ApnsState {
            // The key is compiled in; were it broken every token would be refused, and the tests say so.
            key: DecodingKey::from_ec_pem(TEST_PUBLIC_KEY.as_bytes()).ok(),
            max_token_age: Mutex::new(Duration::from_secs(3600)),
            token_update_interval: Mutex::new(Duration::from_secs(20 * 60)),
            tokens: Mutex::new(HashMap::new()),
            http1: AtomicU64::new(0),
            http2: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        }
    }
}

impl ApnsState {
    /// Tokens issued longer ago than this are refused as expired (APNs: one hour).
    pub fn set_max_token_age(&self, age: Duration) {
        *self.max_token_age.lock().unwrap_or_else(PoisonError::into_inner) = age;
    }

    /// A key's new token must be issued at least this long after its previous one (APNs: 20 min).
    pub fn set_token_update_interval(&self, interval: Duration) {
        *self.token_update_interval.lock().unwrap_or_else(PoisonError::into_inner) = interval;
    }

    /// Requests received over (HTTP/1.x, HTTP/2).
    pub fn http_versions(&self) -> (u64, u64) {
        (self.http1.load(Ordering::Relaxed), self.http2.load(Ordering::Relaxed))
    }

    /// The most requests that were in the handler at once (a client's concurrency, seen from here).
    pub fn most_in_flight(&self) -> u64 {
        self.most_in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in until the guard drops.
    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Checks a bearer token: the APNs reason it is refused for, if it is.
    fn check_token(&self, jwt: &str, now: u64) -> Result<(), (StatusCode, &'static str)> {
        const INVALID: (StatusCode, &str) = (StatusCode::FORBIDDEN, "InvalidProviderToken");
        #[derive(serde::Deserialize)]
        struct Claims {
            iss: String,
            iat: u64,
        }
        let max_age = *self.max_token_age.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = |iat: u64| now.saturating_sub(iat) > max_age.as_secs();
        // Like APNs, the token a team is currently using was verified when it first came: only
        // its age is checked again (an ES256 verification per request would be most of the cost).
        let known = {
            let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            tokens.values().find(|(current, _)| current == jwt).map(|(_, iat)| *iat)
        };
        if let Some(iat) = known {
            return if expired(iat) { Err((StatusCode::FORBIDDEN, "ExpiredProviderToken")) } else { Ok(()) };
        }
        let key = self.key.as_ref().ok_or(INVALID)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(jwt, key, &validation).map_err(|_| INVALID)?;
        let kid = data.header.kid.unwrap_or_default();
        if kid != TEST_KEY_ID || data.claims.iss != TEST_TEAM_ID {
            return Err(INVALID);
        }
        let iat = data.claims.iat;
        if expired(iat) {
            return Err((StatusCode::FORBIDDEN, "ExpiredProviderToken"));
        }
        let interval = *self.token_update_interval.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        match tokens.get(&kid) {
            Some((current, _)) if current == jwt => Ok(()),
            Some((_, previous_iat)) if iat < previous_iat.saturating_add(interval.as_secs()) => {
                Err((StatusCode::TOO_MANY_REQUESTS, "TooManyProviderTokenUpdates"))
            }
            _ => {
                tokens.insert(kid, (jwt.to_string(), iat));
                Ok(())
            }
        }
    }
}

/// One request in the handler.
struct InFlight<'a>(&'a ApnsState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/3/device/{token}", post(send))
}

fn answer(status: StatusCode, apns_id: &str, reason: Option<&str>) -> Response {
    let body = match reason {
        Some(reason) if status == StatusCode::GONE => {
            let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            serde_json::json!({ "reason": reason, "timestamp": ms }).to_string()
        }
        Some(reason) => serde_json::json!({ "reason": reason }).to_string(),
        None => String::new(),
    };
    let mut response = (status, body).into_response();
    if let Ok(value) = HeaderValue::from_str(apns_id) {
        response.headers_mut().insert("apns-id", value);
    }
    if reason.is_some() {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

fn is_device_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn send(
    AxState(state): AxState<Arc<State>>,
    Path(device_token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stats = state.stats("apns");
    stats.request();
    let apns = &state.apns;
    let counter = if version == Version::HTTP_2 { &apns.http2 } else { &apns.http1 };
    counter.fetch_add(1, Ordering::Relaxed);
    let _in_flight = apns.enter();
    let faults = state.faults();
    faults.delay().await;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let apns_id = match header("apns-id") {
        Some(id) => match uuid::Uuid::parse_str(id) {
            Ok(id) => id.hyphenated().to_string().to_uppercase(),
            Err(_) => {
                stats.rejected();
                return answer(StatusCode::BAD_REQUEST, "", Some("BadMessageId"));
            }
        },
        None => uuid::Uuid::from_u128(rand::random()).hyphenated().to_string().to_uppercase(),
    };
    let refuse = |status, reason| {
        stats.rejected();
        answer(status, &apns_id, Some(reason))
    };
    if header("apns-topic").is_none_or(str::is_empty) {
        return refuse(StatusCode::BAD_REQUEST, "MissingTopic");
    }
    let Some(authorization) = header("authorization") else {
        return refuse(StatusCode::FORBIDDEN, "MissingProviderToken");
    };
    let jwt = authorization.strip_prefix("bearer ").or_else(|| authorization.strip_prefix("Bearer ")).unwrap_or("");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if let Err((status, reason)) = apns.check_token(jwt, now) {
        return refuse(status, reason);
    }
    if !is_device_token(&device_token) {
        return refuse(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if device_token.to_ascii_lowercase().starts_with(UNREGISTERED_PREFIX) {
        return refuse(StatusCode::GONE, "Unregistered");
    }
    if body.len() > MAX_PAYLOAD {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    if body.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    let payload: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if !payload.is_some_and(|p| p.get("aps").is_some_and(serde_json::Value::is_object)) {
        return refuse(StatusCode::BAD_REQUEST, "BadPayload");
    }
    let fate = faults.draw(&mut rand::rng());
    match fate {
        Fate::Unavailable => return refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        Fate::Throttled => {
            let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        Fate::BadToken => return refuse(StatusCode::BAD_REQUEST, "BadDeviceToken"),
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    stats.accepted(header(DELIVERY_ID_HEADER));
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    answer(StatusCode::OK, &apns_id, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(kid: &str, iss: &str, iat: u64, pem: &str) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &serde_json::json!({"iss": iss, "iat": iat}), &key).unwrap()
    }

    #[test]
    fn tokens_are_checked_for_signature_identity_age_and_update_rate() {
        let state = ApnsState::default();
        let now = 1_800_000_000;
        let good = sign(TEST_KEY_ID, TEST_TEAM_ID, now - 60, TEST_PRIVATE_KEY);
        assert_eq!(state.check_token(&good, now), Ok(()));
        assert_eq!(state.check_token(&good, now + 3000), Ok(()));
        assert_eq!(state.check_token(&good, now + 3600), Err((StatusCode::FORBIDDEN, "ExpiredProviderToken")));
        let invalid = Err((StatusCode::FORBIDDEN, "InvalidProviderToken"));
        assert_eq!(state.check_token("not.a.jwt", now), invalid);
        assert_eq!(state.check_token(&sign("OTHERKEY00", TEST_TEAM_ID, now, TEST_PRIVATE_KEY), now), invalid);
        assert_eq!(state.check_token(&sign(TEST_KEY_ID, "OTHERTEAM0", now, TEST_PRIVATE_KEY), now), invalid);
        // A second token 10 minutes after the first is one update too many; 20 minutes is fine.
        let early = sign(TEST_KEY_ID, TEST_TEAM_ID, now + 540, TEST_PRIVATE_KEY);
        assert_eq!(
            state.check_token(&early, now + 540),
            Err((StatusCode::TOO_MANY_REQUESTS, "TooManyProviderTokenUpdates"))
        );
        let later = sign(TEST_KEY_ID, TEST_TEAM_ID, now + 1140, TEST_PRIVATE_KEY);
        assert_eq!(state.check_token(&later, now + 1140), Ok(()));
        state.set_token_update_interval(Duration::ZERO);
        let next = sign(TEST_KEY_ID, TEST_TEAM_ID, now + 1141, TEST_PRIVATE_KEY);
        assert_eq!(state.check_token(&next, now + 1141), Ok(()));
        state.set_max_token_age(Duration::from_secs(10));
        assert_eq!(state.check_token(&next, now + 1152), Err((StatusCode::FORBIDDEN, "ExpiredProviderToken")));
    }
}
