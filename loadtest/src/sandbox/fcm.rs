//! Firebase Cloud Messaging HTTP v1 and Google's OAuth2 token endpoint, as the sandbox serves
//! them.
//!
//! - `POST /token`: the service-account flow (RFC 7523), form `grant_type=urn:ietf:params:oauth:
//!   grant-type:jwt-bearer&assertion=<RS256 JWT>`. The assertion must be signed by the fixed TEST
//!   service account ([`test_service_account`], key in `keys/`), with `iss` its client email,
//!   `aud` this endpoint's URL, `scope` including FCM's, and `exp` in the future at most an hour
//!   after `iat`. Answers `{"access_token", "expires_in", "token_type": "Bearer"}` with a random
//!   token living [`Tokens::set_lifetime`] (3600 s unless changed), or Google's
//!   `{"error": "invalid_grant", "error_description"}` with 400.
//! - `POST /v1/projects/{project}/messages:send`, bearer token from `/token`: 401
//!   `UNAUTHENTICATED` for a missing, unknown, revoked or expired token; 403 `PERMISSION_DENIED`
//!   for a project other than [`TEST_PROJECT`]; 400 `INVALID_ARGUMENT` for a malformed message,
//!   or one over 4096 bytes ("Message is too big"); else 200 `{"name":
//!   "projects/{project}/messages/0:…"}`. Errors carry FCM's `FcmError` detail with its
//!   `errorCode`.
//! - Magic registration tokens: a token starting with [`UNREGISTERED_PREFIX`] answers 404
//!   `UNREGISTERED`; with [`INVALID_TOKEN_PREFIX`], 400 `INVALID_ARGUMENT` "The registration
//!   token is not a valid FCM registration token"; with [`SENDER_MISMATCH_PREFIX`], 403
//!   `SENDER_ID_MISMATCH`.
//! - Faults: 503 `UNAVAILABLE`, 429 `QUOTA_EXCEEDED` with `Retry-After: 1`, a held timeout,
//!   accept-then-timeout, and bad token = 404 `UNREGISTERED`. Stats under `fcm`, keyed by the
//!   `X-Herald-Delivery-Id` header.

use super::{Fate, State};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The project of the test service account; the only one the sandbox sends for.
pub const TEST_PROJECT: &str = "herald-sandbox";
/// The test service account's `client_email`.
pub const TEST_CLIENT_EMAIL: &str = "herald-sandbox@herald-sandbox.iam.gserviceaccount.com";
/// A registration token starting with this is no longer registered (404 `UNREGISTERED`).
pub const UNREGISTERED_PREFIX: &str = "unregistered";
/// A registration token starting with this is not a token (400 `INVALID_ARGUMENT`).
pub const INVALID_TOKEN_PREFIX: &str = "invalid";
/// A registration token starting with this belongs to another sender (403 `SENDER_ID_MISMATCH`).
pub const SENDER_MISMATCH_PREFIX: &str = "mismatch";
/// FCM's limit on a message.
const MAX_MESSAGE_BYTES: usize = 4096;
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// TEST ONLY: generated for the sandbox, never used with Google.
const TEST_PRIVATE_KEY: &str = include_str!("keys/fcm-test-service-account.key.pem");
const TEST_PUBLIC_KEY: &str = include_str!("keys/fcm-test-service-account.pub.pem");

/// The TEST service-account JSON, whose `token_uri` is the sandbox at `base_url`.
pub fn test_service_account(base_url: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": TEST_PROJECT,
        "private_key_id": "sandbox-test-key",
        "private_key": TEST_PRIVATE_KEY,
        "client_email": TEST_CLIENT_EMAIL,
        "client_id": "100000000000000000000",
        "token_uri": format!("{}/token", base_url.trim_end_matches('/')),
    })
    .to_string()
}

/// The access tokens the sandbox issued.
pub struct Tokens {
    /// Revocations so far: a token names the epoch it was issued in.
    epoch: AtomicU64,
    lifetime_secs: AtomicU64,
    grants: AtomicU64,
}

/// The key the sandbox signs its access tokens with. Tokens carry their own expiry and
/// signature, as Google's do, so a restarted sandbox (each `herald-loadtest run`) still accepts
/// the token a long-running Herald holds.
const TOKEN_KEY: &[u8] = b"herald-sandbox-fcm-access-tokens";

impl Default for Tokens {
    fn default() -> Self {
        Tokens { epoch: AtomicU64::new(0), lifetime_secs: AtomicU64::new(3600), grants: AtomicU64::new(0) }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn mac(body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, TOKEN_KEY);
    hex::encode(aws_lc_rs::hmac::sign(&key, body.as_bytes()))
}

impl Tokens {
    /// How long tokens issued from now on live.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_secs.store(lifetime.as_secs().max(1), Ordering::Relaxed);
    }

    /// Tokens granted so far.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// Revokes every token issued (FCM then answers 401 until a new one is fetched).
    pub fn revoke_all(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn issue(&self) -> (String, u64) {
        let lifetime = self.lifetime_secs.load(Ordering::Relaxed);
        let expires = unix_ms() + lifetime * 1_000;
        let body =
            format!("ya29.sandbox.{}.{expires}.{:016x}", self.epoch.load(Ordering::Relaxed), rand::random::<u64>());
        self.grants.fetch_add(1, Ordering::Relaxed);
        (format!("{body}.{}", mac(&body)), lifetime)
    }

    fn valid(&self, token: &str) -> bool {
        let Some((body, signature)) = token.rsplit_once('.') else { return false };
        let signed = aws_lc_rs::constant_time::verify_slices_are_equal(mac(body).as_bytes(), signature.as_bytes());
        let mut fields = body.split('.').skip(2);
        let epoch = fields.next().and_then(|e| e.parse::<u64>().ok());
        let expires = fields.next().and_then(|e| e.parse::<u64>().ok());
        signed.is_ok()
            && epoch == Some(self.epoch.load(Ordering::Relaxed))
            && expires.is_some_and(|expires| unix_ms() < expires)
    }
}

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/token", post(token)).route("/v1/projects/{project}/messages:send", post(send))
}

/// `http://host:port` of this request, as the client addressed it.
fn origin(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    format!("http://{host}")
}

fn oauth_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

#[derive(Deserialize)]
struct AssertionClaims {
    scope: String,
    iat: u64,
    exp: u64,
}

async fn token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or_default();
    if grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error("unsupported_grant_type", &format!("Invalid grant_type: {grant_type}"));
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let Ok(key) = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sandbox test key unreadable").into_response();
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", origin(&headers, &uri))]);
    validation.set_issuer(&[TEST_CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(error) => {
            use jsonwebtoken::errors::ErrorKind;
            let description = match error.kind() {
                ErrorKind::InvalidSignature => "Invalid JWT Signature.".to_string(),
                ErrorKind::InvalidAudience => "Invalid JWT: Failed audience check.".to_string(),
                ErrorKind::ExpiredSignature => "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                                                reasonable timeframe."
                    .to_string(),
                other => format!("Invalid JWT: {other:?}"),
            };
            return oauth_error("invalid_grant", &description);
        }
    };
    if claims.exp.saturating_sub(claims.iat) > 3600 {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return oauth_error("invalid_scope", "The service account may not be used for the requested scope.");
    }
    let (access_token, expires_in) = state.fcm.issue();
    axum::Json(json!({"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"})).into_response()
}

/// An FCM error body, with the `FcmError` detail when `error_code` is given.
fn error(status: StatusCode, canonical: &str, error_code: Option<&str>, message: &str) -> Response {
    let details: Vec<Value> =
        error_code.map(|code| json!({"@type": FCM_ERROR_TYPE, "errorCode": code})).into_iter().collect();
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": canonical, "details": details}});
    (status, axum::Json(body)).into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), message)
}

/// Checks a message as FCM does; the registration token, or the `INVALID_ARGUMENT` message.
fn validate(body: &[u8]) -> Result<String, String> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err("Message is too big".to_string());
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    let message = &json["message"];
    if !message.is_object() {
        return Err("Invalid JSON payload received. Missing 'message'.".to_string());
    }
    let token = message["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return Err("Recipient of the message is not set.".to_string());
    }
    let notification = &message["notification"];
    if !notification.is_null()
        && ["title", "body"].iter().any(|f| !(notification[f].is_null() || notification[f].is_string()))
    {
        return Err("Invalid value at 'message.notification'".to_string());
    }
    let android = &message["android"];
    if let Some(priority) = android.get("priority") {
        let known =
            priority.as_str().is_some_and(|p| p.eq_ignore_ascii_case("high") || p.eq_ignore_ascii_case("normal"));
        if !known {
            return Err(format!("Invalid value at 'message.android.priority' ({priority})"));
        }
    }
    if let Some(ttl) = android.get("ttl") {
        let seconds = ttl.as_str().and_then(|t| t.strip_suffix('s')).and_then(|t| t.parse::<f64>().ok());
        if !seconds.is_some_and(|s| s >= 0.0) {
            return Err(format!("Invalid value at 'message.android.ttl' ({ttl})"));
        }
    }
    if let Some(data) = message.get("data") {
        let all_strings = data.as_object().is_some_and(|d| d.values().all(Value::is_string));
        if !all_strings {
            return Err("Invalid value at 'message.data': values must be strings".to_string());
        }
    }
    Ok(token.to_string())
}

async fn send(
    AxState(state): AxState<Arc<State>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stats = state.stats("fcm");
    stats.request();
    let faults = state.faults();
    faults.delay().await;
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| state.fcm.valid(token)) {
        stats.rejected();
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other \
             valid authentication credential.",
        );
    }
    if project != TEST_PROJECT {
        stats.rejected();
        let message = format!(
            "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}'"
        );
        return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", None, &message);
    }
    let token = match validate(&body) {
        Ok(token) => token,
        Err(message) => {
            stats.rejected();
            return invalid(&message);
        }
    };
    let unregistered =
        || error(StatusCode::NOT_FOUND, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found.");
    if token.starts_with(UNREGISTERED_PREFIX) {
        stats.rejected();
        return unregistered();
    }
    if token.starts_with(INVALID_TOKEN_PREFIX) {
        stats.rejected();
        return invalid("The registration token is not a valid FCM registration token");
    }
    if token.starts_with(SENDER_MISMATCH_PREFIX) {
        stats.rejected();
        return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), "SenderId mismatch");
    }
    let fate = faults.draw(&mut rand::rng());
    match fate {
        Fate::Unavailable => {
            stats.rejected();
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                Some("UNAVAILABLE"),
                "The service is currently unavailable.",
            );
        }
        Fate::Throttled => {
            stats.rejected();
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                Some("QUOTA_EXCEEDED"),
                "Quota exceeded for quota metric 'Send requests'.",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            stats.rejected();
            return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", Some("UNAVAILABLE"), "Deadline exceeded.");
        }
        Fate::BadToken => {
            stats.rejected();
            return unregistered();
        }
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    let delivery_id = headers.get(DELIVERY_ID_HEADER).and_then(|v| v.to_str().ok());
    stats.accepted(delivery_id);
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    let name = format!("projects/{project}/messages/0:{:x}", rand::random::<u64>());
    axum::Json(json!({ "name": name })).into_response()
}
