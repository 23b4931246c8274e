//! Vonage's SMS API as the sandbox serves it.
//!
//! `POST /sms/json`, a form with `api_key`, `api_secret`, `from`, `to` (E.164 without `+`),
//! `text`, optional `type` and `client-ref`. Answers as Vonage does: HTTP 200 with
//! `{"message-count", "messages": [...]}`, one entry per segment, each with `status` `"0"` and a
//! `message-id`; or a single entry with a non-zero `status` and `error-text`. Credentials other
//! than [`API_KEY`] / [`API_SECRET`] get status 4. Magic `to` numbers: [`INVALID_NUMBER`]
//! (status 3, invalid to address), [`UNROUTABLE_NUMBER`] (status 6), [`BARRED_NUMBER`]
//! (status 7), and [`FAILING_NUMBER`], accepted but its receipt says `failed` with err-code 3
//! (absent subscriber, permanent).
//!
//! Faults: throttled is status 1 `Throttled` on HTTP 200 or HTTP 429 with `Retry-After: 1`
//! (Vonage does both); unavailable is status 5 `Internal Error` or HTTP 503; a bad token is
//! status 3. Receipts (when a callback URL is set): a signed DLR, POSTed as a form to
//! `{callback_url}/v1/receipts/vonage`, signed with [`SIGNATURE_SECRET`] by Vonage's HMAC-SHA256
//! method.

use super::{Fate, State};
use aws_lc_rs::hmac;
use axum::Router;
use axum::extract::{Form, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The sandbox account's API key.
pub const API_KEY: &str = "sandboxkey";
/// The sandbox account's API secret.
pub const API_SECRET: &str = "sandbox-secret";
/// The secret the sandbox signs its delivery receipts with (method `sha256`).
pub const SIGNATURE_SECRET: &str = "sandbox-signature-secret";
/// A `to` Vonage calls invalid: status 3.
pub const INVALID_NUMBER: &str = "15005550301";
/// A `to` Vonage cannot route: status 6.
pub const UNROUTABLE_NUMBER: &str = "15005550306";
/// A barred `to`: status 7.
pub const BARRED_NUMBER: &str = "15005550307";
/// A `to` that is accepted and then fails for good: its receipt is `failed`, err-code 3.
pub const FAILING_NUMBER: &str = "15005550310";

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/sms/json", post(send))
}

/// A refusal as Vonage answers it: HTTP 200, one message with a non-zero status.
fn refusal(status: u8, text: &str) -> Response {
    let body = json!({"message-count": "1", "messages": [{"status": status.to_string(), "error-text": text}]});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn send(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let stats = state.stats("vonage");
    stats.request();
    let faults = state.faults();
    faults.delay().await;
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    if field("api_key") != Some(API_KEY) || field("api_secret") != Some(API_SECRET) {
        stats.rejected();
        return refusal(4, "Bad Credentials");
    }
    let (Some(from), Some(to), Some(text)) = (field("from"), field("to"), field("text")) else {
        stats.rejected();
        return refusal(2, "Missing from, to or text param");
    };
    let magic = match to {
        INVALID_NUMBER => Some((3, "Invalid to address")),
        UNROUTABLE_NUMBER => Some((6, "Invalid Message")),
        BARRED_NUMBER => Some((7, "Number barred.")),
        _ if to.starts_with('+') || !to.bytes().all(|b| b.is_ascii_digit()) => Some((3, "Invalid to address")),
        _ => None,
    };
    if let Some((status, text)) = magic {
        stats.rejected();
        return refusal(status, text);
    }
    let fate = faults.draw(&mut rand::rng());
    let coin: bool = rand::rng().random();
    match fate {
        Fate::Unavailable => {
            stats.rejected();
            return if coin { refusal(5, "Internal Error") } else { StatusCode::SERVICE_UNAVAILABLE.into_response() };
        }
        Fate::Throttled => {
            stats.rejected();
            if coin {
                return refusal(1, "Throttled");
            }
            let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            stats.rejected();
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Fate::BadToken => {
            stats.rejected();
            return refusal(3, "Invalid to address");
        }
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    let delivery_id = headers.get(DELIVERY_ID_HEADER).and_then(|v| v.to_str().ok());
    stats.accepted(delivery_id);
    let parts = herald_connectors::channels::sms::segments(text).count;
    let ids: Vec<String> = (0..parts).map(|_| format!("{:016X}", rand::random::<u64>())).collect();
    post_receipt(&state, to, from, &ids[0], field("client-ref"));
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    let messages: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut message = json!({
                "to": to,
                "message-id": id,
                "status": "0",
                "remaining-balance": "100.00000000",
                "message-price": "0.03330000",
                "network": "310004",
            });
            if let Some(reference) = field("client-ref") {
                message["client-ref"] = json!(reference);
            }
            message
        })
        .collect();
    let body = json!({"message-count": parts.to_string(), "messages": messages});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as Vonage writes `message-timestamp`.
fn utc_text(secs: u64) -> String {
    let at = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(jiff::Timestamp::MAX);
    at.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Vonage's request signature: the parameters but `sig`, sorted, `&` and `=` in values made
/// `_`, joined as `&name=value`, HMAC-SHA256 with the signature secret, upper-case hex.
fn signature(params: &BTreeMap<&str, String>) -> String {
    let text: String = params
        .iter()
        .filter(|(name, _)| **name != "sig")
        .map(|(name, value)| format!("&{name}={}", value.replace(['&', '='], "_")))
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SIGNATURE_SECRET.as_bytes());
    hex::encode_upper(hmac::sign(&key, text.as_bytes()))
}

/// The signed DLR of an accepted message, posted in the background.
fn post_receipt(state: &State, to: &str, from: &str, message_id: &str, client_ref: Option<&str>) {
    if state.callback_url().is_none() {
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (status, err_code) = if to == FAILING_NUMBER { ("failed", "3") } else { ("delivered", "0") };
    let mut params: BTreeMap<&str, String> = BTreeMap::from([
        ("msisdn", to.to_string()),
        ("to", from.to_string()),
        ("network-code", "310004".to_string()),
        ("messageId", message_id.to_string()),
        ("price", "0.03330000".to_string()),
        ("status", status.to_string()),
        ("scts", utc_text(now).replace(['-', ' ', ':'], "")[2..12].to_string()),
        ("err-code", err_code.to_string()),
        ("api-key", API_KEY.to_string()),
        ("message-timestamp", utc_text(now)),
        ("timestamp", now.to_string()),
        ("nonce", format!("{:032x}", rand::random::<u128>())),
    ]);
    if let Some(reference) = client_ref {
        params.insert("client-ref", reference.to_string());
    }
    params.insert("sig", signature(&params));
    state.post_receipt("vonage", "/v1/receipts/vonage", move |client, url| client.post(url).form(&params));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_text(1_795_701_661), "2026-11-26 14:01:01");
    }
}
