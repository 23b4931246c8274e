//! Twilio's Messages API as the sandbox serves it.
//!
//! `POST /2010-04-01/Accounts/{sid}/Messages.json`, form fields `To`, `From`, `Body`, basic auth
//! whose user must be the path's account SID. Answers as Twilio does: 201 with the message
//! resource (`sid` `SM…`, `status` `queued`, `num_segments`), or an error body
//! `{"code", "message", "more_info", "status"}`. Twilio's magic test numbers are honoured:
//! `To` `+15005550001` invalid (21211), `+15005550009` not a mobile (21614), `+15005550004`
//! unsubscribed (21610); `From` `+15005550001` is not a number this account may send from
//! (21212, a permanent refusal of every message: a configuration fault).
//!
//! Status callbacks: a message sent with a `StatusCallback` URL gets one, as Twilio sends it: a
//! form POST (`MessageSid`, `MessageStatus`, `To`, `From`, `AccountSid`, `ErrorCode`) signed in
//! `X-Twilio-Signature` with the auth token the message was sent with. `delivered`, except for
//! [`UNDELIVERED_NUMBER`], which is accepted and then `undelivered` with error 30005 (unknown
//! handset: the number is dead).

use super::{Fate, State};
use axum::Router;
use axum::extract::{Form, Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use herald_connectors::channels::twilio::receipt;
use herald_connectors::secret::SecretSource;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A `To` that is accepted, then reported undelivered for good (error 30005).
pub const UNDELIVERED_NUMBER: &str = "+15005550310";

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/2010-04-01/Accounts/{sid}/Messages.json", post(send))
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

/// The user and password of a `Basic` authorization header.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| (user.to_string(), password.to_string()))
}

/// Posts the message's status callback, signed with the auth token it was sent with.
fn post_status(state: &State, url: &str, token: &str, fields: [(&str, &str); 4]) {
    let [(_, sid), (_, account), (_, to), (_, from)] = fields;
    let (status, code) = if to == UNDELIVERED_NUMBER { ("undelivered", "30005") } else { ("delivered", "") };
    let params: BTreeMap<String, String> = [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", account),
        ("To", to),
        ("From", from),
        ("MessageStatus", status),
        ("SmsStatus", status),
        ("ErrorCode", code),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let Ok(token) = SecretSource::Inline(token.to_string()).resolve() else { return };
    let signature = receipt::sign(&token, url, &params);
    state.post_receipt_to("twilio", url.to_string(), move |client, url| {
        client.post(url).header(receipt::SIGNATURE_HEADER, signature).form(&params)
    });
}

async fn send(
    AxState(state): AxState<Arc<State>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let stats = state.stats("twilio");
    stats.request();
    let faults = state.faults();
    faults.delay().await;
    let Some((user, token)) = basic_auth(&headers).filter(|(user, _)| *user == sid) else {
        stats.rejected();
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    };
    let (Some(to), Some(from), Some(body)) = (form.get("To"), form.get("From"), form.get("Body")) else {
        stats.rejected();
        return error(StatusCode::BAD_REQUEST, 21604, "A 'To', 'From' and 'Body' parameter is required.");
    };
    let magic = match (from.as_str(), to.as_str()) {
        ("+15005550001", _) => {
            Some((21212, "The 'From' number is not a valid phone number, shortcode, or alphanumeric sender ID."))
        }
        (_, "+15005550001") => Some((21211, "The 'To' number is not a valid phone number.")),
        (_, "+15005550009") => Some((21614, "'To' number is not a valid mobile number")),
        (_, "+15005550004") => Some((21610, "Attempt to send to unsubscribed recipient")),
        _ => None,
    };
    if let Some((code, message)) = magic {
        stats.rejected();
        return error(StatusCode::BAD_REQUEST, code, message);
    }
    let fate = faults.draw(&mut rand::rng());
    match fate {
        Fate::Unavailable => {
            stats.rejected();
            return error(StatusCode::SERVICE_UNAVAILABLE, 20503, "Service Unavailable");
        }
        Fate::Throttled => {
            stats.rejected();
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            stats.rejected();
            return error(StatusCode::GATEWAY_TIMEOUT, 20504, "Gateway Timeout");
        }
        Fate::BadToken => {
            stats.rejected();
            return error(StatusCode::BAD_REQUEST, 21211, "The 'To' number is not a valid phone number.");
        }
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    let delivery_id = headers.get(DELIVERY_ID_HEADER).and_then(|v| v.to_str().ok());
    stats.accepted(delivery_id);
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    let message_sid = format!("SM{:032x}", rand::random::<u128>());
    if let Some(callback) = form.get("StatusCallback") {
        post_status(&state, callback, &token, [("sid", &message_sid), ("account", &user), ("to", to), ("from", from)]);
    }
    let segments = herald_connectors::channels::sms::segments(body).count;
    let resource = json!({
        "sid": message_sid,
        "account_sid": sid,
        "to": to,
        "from": from,
        "body": body,
        "status": "queued",
        "num_segments": segments.to_string(),
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json"),
    });
    (StatusCode::CREATED, axum::Json(resource)).into_response()
}
