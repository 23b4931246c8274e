//! A Web Push service (RFC 8030) as the sandbox serves it, answering as Mozilla's autopush does.
//!
//! `POST /webpush/{subscription_id}`, one push message:
//! - `Authorization: vapid t=<JWT>, k=<public key>` (RFC 8292): missing, unparseable, a bad ES256
//!   signature under `k`, `aud` other than this service's origin, `exp` past or more than 24 h
//!   ahead, or no `sub` → 401; a valid signature by another key than the one the subscription was
//!   made with ([`TEST_VAPID_PUBLIC_KEY`]) → 403.
//! - A `TTL` header is required (400); a body must be `Content-Encoding: aes128gcm` (400), at most
//!   4096 bytes (413), and must decrypt (RFC 8291) with the subscription's TEST key (400).
//! - A subscription id starting with [`GONE_PREFIX`] is expired: 410.
//! - Faults: 503, 429 with `Retry-After: 1`, a held timeout, accept-then-timeout, and bad token =
//!   410. Success is 201 with a `Location` header naming the message. Stats under `webpush`,
//!   keyed by the `X-Herald-Delivery-Id` header.
//!
//! Every subscription of the sandbox shares one fixed TEST key pair and auth secret
//! ([`test_subscription`]); they are for the sandbox only.

use super::{Fate, State};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// TEST ONLY: the VAPID private key (base64url, raw P-256) the sandbox's subscriptions were made for.
pub const TEST_VAPID_PRIVATE_KEY: &str = "7apAatKX_y2TJEd9Fl6mFqghj-zXdpmuBRXtXrnMQxY";
/// Its public key (base64url, uncompressed point): the `applicationServerKey`.
pub const TEST_VAPID_PUBLIC_KEY: &str =
    "BHMXhqJskWl0-6h31S-Y9-eFhwOdCcuX3cIVowgXFBcBQEDAsBuJ3VEP-YJVmyGLe2RLyWUNJ3NBFQRhHyaQlZo";
/// A subscription id starting with this has expired (410 Gone).
pub const GONE_PREFIX: &str = "gone";

/// TEST ONLY: the browser's side of every sandbox subscription (P-256 key pair, auth secret).
const SUBSCRIPTION_PRIVATE_KEY: &str = "meTdmXvWt--SWl7RtgRqgQgkoPjVuHoGwNhpcBwjhc0";
const SUBSCRIPTION_PUBLIC_KEY: &str =
    "BHGO5Ql8oQztSSyhyByU2kNxSc3ahlnT76u9MZkVGGZDoDAs-97nUiD4agCakxRIYaUfdoQW4lQ2LN_kfCX_zU0";
const SUBSCRIPTION_AUTH: &str = "bAkTiRUm934ioha575c6Xg";
const MAX_BODY_BYTES: usize = 4096;
const MAX_VAPID_LIFETIME: u64 = 24 * 3600;

/// The subscription JSON a browser would hand over for subscription `id` on the sandbox at
/// `base_url`; the sandbox can decrypt what is sent to it.
pub fn test_subscription(base_url: &str, id: &str) -> String {
    json!({
        "endpoint": format!("{}/webpush/{id}", base_url.trim_end_matches('/')),
        "expirationTime": null,
        "keys": { "p256dh": SUBSCRIPTION_PUBLIC_KEY, "auth": SUBSCRIPTION_AUTH },
    })
    .to_string()
}

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/webpush/{subscription_id}", post(push))
}

/// An autopush error body.
fn error(status: StatusCode, errno: u32, message: &str) -> Response {
    let body = json!({
        "code": status.as_u16(),
        "errno": errno,
        "error": status.canonical_reason().unwrap_or_default(),
        "message": message,
        "more_info": "http://autopush.readthedocs.io/en/latest/http.html#error-codes",
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct VapidClaims {
    exp: u64,
    sub: String,
}

/// The `t` and `k` of `Authorization: vapid t=…, k=…`.
fn vapid_parts(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let params = value.strip_prefix("vapid ")?;
    let (mut t, mut k) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("k", v)) => k = Some(v.to_string()),
            _ => {}
        }
    }
    Some((t?, k?))
}

/// Checks the VAPID header; the status and message to answer when it does not hold.
fn check_vapid(headers: &HeaderMap, origin: &str) -> Result<(), (StatusCode, String)> {
    let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, format!("Unauthorized: {why}"));
    let (token, key) = vapid_parts(headers).ok_or_else(|| unauthorized("missing or malformed VAPID header"))?;
    let point = URL_SAFE_NO_PAD.decode(key.trim_end_matches('=')).map_err(|_| unauthorized("k is not base64url"))?;
    if point.len() != 65 || point[0] != 4 {
        return Err(unauthorized("k is not an uncompressed P-256 point"));
    }
    let decoding =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&point[1..33]), &URL_SAFE_NO_PAD.encode(&point[33..]))
            .map_err(|_| unauthorized("k is not a P-256 key"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[origin]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<VapidClaims>(&token, &decoding, &validation)
        .map_err(|e| unauthorized(&format!("invalid VAPID JWT ({:?})", e.kind())))?
        .claims;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    if claims.exp > now + MAX_VAPID_LIFETIME {
        return Err(unauthorized("exp more than 24 hours ahead"));
    }
    if claims.sub.is_empty() {
        return Err(unauthorized("empty sub"));
    }
    if key.trim_end_matches('=') != TEST_VAPID_PUBLIC_KEY {
        let why = "The VAPID credentials do not correspond to the credentials used to create the subscription.";
        return Err((StatusCode::FORBIDDEN, why.to_string()));
    }
    Ok(())
}

/// Decrypts an aes128gcm body with the subscription's TEST key.
fn decrypt(body: &[u8]) -> Option<Vec<u8>> {
    let private = URL_SAFE_NO_PAD.decode(SUBSCRIPTION_PRIVATE_KEY).ok()?;
    let public = URL_SAFE_NO_PAD.decode(SUBSCRIPTION_PUBLIC_KEY).ok()?;
    let auth = URL_SAFE_NO_PAD.decode(SUBSCRIPTION_AUTH).ok()?;
    ece::decrypt(&ece::EcKeyComponents::new(private, public), &auth, body).ok()
}

async fn push(
    AxState(state): AxState<Arc<State>>,
    Path(subscription): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let stats = state.stats("webpush");
    stats.request();
    let faults = state.faults();
    faults.delay().await;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let origin = format!("http://{host}");
    let refused = |response: Response| {
        stats.rejected();
        response
    };
    if let Err((status, message)) = check_vapid(&headers, &origin) {
        return refused(error(status, 109, &message));
    }
    let ttl = headers.get("ttl").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if ttl.is_none() {
        return refused(error(StatusCode::BAD_REQUEST, 111, "Missing TTL header"));
    }
    if !body.is_empty() {
        let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
        if encoding != Some("aes128gcm") {
            return refused(error(StatusCode::BAD_REQUEST, 110, "Unknown Content-Encoding (use aes128gcm)"));
        }
        if body.len() > MAX_BODY_BYTES {
            return refused(error(StatusCode::PAYLOAD_TOO_LARGE, 104, "Data payload too large"));
        }
    }
    if subscription.starts_with(GONE_PREFIX) {
        return refused(error(StatusCode::GONE, 106, "Subscription has expired"));
    }
    let fate = faults.draw(&mut rand::rng());
    match fate {
        Fate::Unavailable => return refused(error(StatusCode::SERVICE_UNAVAILABLE, 201, "Service Unavailable")),
        Fate::Throttled => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, 201, "Too Many Requests");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return refused(response);
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            return refused(error(StatusCode::SERVICE_UNAVAILABLE, 201, "Service Unavailable"));
        }
        Fate::BadToken => return refused(error(StatusCode::GONE, 106, "Subscription has expired")),
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    if !body.is_empty() && decrypt(&body).is_none() {
        return refused(error(StatusCode::BAD_REQUEST, 110, "The payload does not decrypt for this subscription"));
    }
    let delivery_id = headers.get(DELIVERY_ID_HEADER).and_then(|v| v.to_str().ok());
    stats.accepted(delivery_id);
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    let mut response = StatusCode::CREATED.into_response();
    let location = format!("{origin}/m/{:032x}", rand::random::<u128>());
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_subscription_decrypts_what_is_encrypted_for_it() {
        let public = URL_SAFE_NO_PAD.decode(SUBSCRIPTION_PUBLIC_KEY).unwrap();
        let auth = URL_SAFE_NO_PAD.decode(SUBSCRIPTION_AUTH).unwrap();
        let sealed = ece::encrypt(&public, &auth, b"hello").unwrap();
        assert_eq!(decrypt(&sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(decrypt(b"not encrypted at all, not even a header"), None);
        let subscription: serde_json::Value = serde_json::from_str(&test_subscription("http://h:1/", "abc")).unwrap();
        assert_eq!(subscription["endpoint"], "http://h:1/webpush/abc");
    }

    /// [`TEST_VAPID_PRIVATE_KEY`] as PKCS#8, to sign test JWTs with.
    const TEST_VAPID_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7apAatKX/y2TJEd9
Fl6mFqghj+zXdpmuBRXtXrnMQxahRANCAARzF4aibJFpdPuod9UvmPfnhYcDnQnL
l93CFaMIFxQXAUBAwLAbid1RD/mCVZshi3tkS8llDSdzQRUEYR8mkJWa
-----END PRIVATE KEY-----
";

    fn vapid_header(claims: serde_json::Value, k: &str) -> HeaderMap {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(TEST_VAPID_PEM.as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::ES256), &claims, &key).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("vapid t={t}, k={k}").parse().unwrap());
        headers
    }

    #[test]
    fn vapid_is_checked_as_push_services_do() {
        let origin = "http://127.0.0.1:9";
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let check = |claims, k| check_vapid(&vapid_header(claims, k), origin).map_err(|(status, _)| status.as_u16());
        let good = json!({"aud": origin, "exp": now + 3600, "sub": "mailto:ops@example.com"});
        assert_eq!(check(good.clone(), TEST_VAPID_PUBLIC_KEY), Ok(()));
        let other_origin = json!({"aud": "http://127.0.0.1:10", "exp": now + 3600, "sub": "mailto:a@b.c"});
        assert_eq!(check(other_origin, TEST_VAPID_PUBLIC_KEY), Err(401));
        let too_long = json!({"aud": origin, "exp": now + 2 * 86_400, "sub": "mailto:a@b.c"});
        assert_eq!(check(too_long, TEST_VAPID_PUBLIC_KEY), Err(401));
        let expired = json!({"aud": origin, "exp": now - 3600, "sub": "mailto:a@b.c"});
        assert_eq!(check(expired, TEST_VAPID_PUBLIC_KEY), Err(401));
        let no_sub = json!({"aud": origin, "exp": now + 3600});
        assert_eq!(check(no_sub, TEST_VAPID_PUBLIC_KEY), Err(401));
        // Signed by the test key but presented with another: the signature does not verify.
        assert_eq!(check(good, SUBSCRIPTION_PUBLIC_KEY), Err(401));
        assert_eq!(check_vapid(&HeaderMap::new(), origin).map_err(|(s, _)| s.as_u16()), Err(401));
    }
}
