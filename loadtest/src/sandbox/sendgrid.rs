//! SendGrid's v3 Mail Send as the sandbox serves it.
//!
//! `POST /v3/mail/send` with `Authorization: Bearer` [`API_KEY`] (else 401) and a JSON body of
//! at most [`MAX_BODY`] bytes (else 413). The body is checked as SendGrid checks it: `from.email`,
//! at least one personalization, each with a `to` of valid addresses, a `subject`, and at least
//! one `content` block with a value; every error found is listed in
//! `{"errors": [{"message", "field", "help"}]}` with HTTP 400. Accepted: 202, no body, and an
//! `X-Message-Id` header. Magic recipients: [`INVALID_ADDRESS`] (or any address without `@`) is
//! a 400 on `personalizations.N.to.M.email`; [`BOUNCE_ADDRESS`] is accepted and then bounces.
//!
//! Faults: unavailable is 503; throttled is 429 with `X-RateLimit-Limit`, `-Remaining: 0` and
//! `X-RateLimit-Reset` (epoch seconds, a second ahead); a bad token is the invalid-address 400.
//! Receipts (when a callback URL is set): the Signed Event Webhook, a JSON array of `processed`
//! then `delivered` (or `bounce`) per recipient, each with the personalization's `custom_args`,
//! posted to `{callback_url}/v1/receipts/sendgrid`, signed with the fixed test key whose public
//! half is [`EVENT_WEBHOOK_PUBLIC_KEY`].

use super::{Fate, State};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use herald_schemas::channel::DELIVERY_ID_HEADER;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The sandbox account's API key.
pub const API_KEY: &str = "SG.sandbox-key";
/// A recipient SendGrid refuses as not an address.
pub const INVALID_ADDRESS: &str = "invalid@sendgrid.sandbox";
/// A recipient accepted and then hard-bounced (event `bounce`, status 5.1.1).
pub const BOUNCE_ADDRESS: &str = "bounce@sendgrid.sandbox";
/// The largest body accepted (SendGrid's own limit is 30 MB; the sandbox's is smaller).
pub const MAX_BODY: usize = 1 << 20;
/// The event webhook's verification key, as SendGrid's dashboard shows it (base64 SPKI DER).
/// A TEST key, committed on purpose: never use it for anything real.
pub const EVENT_WEBHOOK_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdLGVutWhQ9uLgC9uChc8BfPyofy11i/jJ8yz7CxYK4Qz/6VA+8eeY+KXuCLAk9QHLP7I0gY6oHcUboUw42/2Yw==";
/// Its private half (PKCS#8, base64): the TEST key the sandbox signs events with.
const EVENT_WEBHOOK_PRIVATE_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzNGxB+EW3HSfBIM4SE3qSd6rf87wM4dtRreyCmVYEwGhRANCAAR0sZW61aFD24uAL24KFzwF8/Kh/LXWL+MnzLPsLFgrhDP/pUD7x55j4pe4IsCT1Acs/sjSBjqgdxRuhTDjb/Zj";

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/v3/mail/send", post(send))
}

fn errors(status: StatusCode, errors: &[(Option<String>, &str)]) -> Response {
    let errors: Vec<Value> =
        errors.iter().map(|(field, message)| json!({"message": message, "field": field, "help": null})).collect();
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn invalid_address(field: String) -> Response {
    errors(StatusCode::BAD_REQUEST, &[(Some(field), "Does not contain a valid address.")])
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What is wrong with a Mail Send body, as SendGrid words it.
fn validate(body: &Value) -> Vec<(Option<String>, &'static str)> {
    let mut found = Vec::new();
    let text = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    if !text(&body["from"]["email"]) {
        found.push((Some("from.email".into()), "The from object must be provided for every email send."));
    }
    match body["personalizations"].as_array() {
        Some(list) if !list.is_empty() => {
            for (i, personalization) in list.iter().enumerate() {
                match personalization["to"].as_array() {
                    Some(to) if !to.is_empty() => {
                        for (j, recipient) in to.iter().enumerate() {
                            let email = recipient["email"].as_str().unwrap_or("");
                            if !email.contains('@') || email == INVALID_ADDRESS {
                                found.push((
                                    Some(format!("personalizations.{i}.to.{j}.email")),
                                    "Does not contain a valid address.",
                                ));
                            }
                        }
                    }
                    _ => found.push((
                        Some(format!("personalizations.{i}.to")),
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                    )),
                }
            }
        }
        _ => found.push((
            Some("personalizations".into()),
            "The personalizations field is required and must have at least one personalization.",
        )),
    }
    let subject_everywhere = body["personalizations"]
        .as_array()
        .is_some_and(|list| !list.is_empty() && list.iter().all(|p| text(&p["subject"])));
    if !text(&body["subject"]) && !subject_everywhere {
        found.push((Some("subject".into()), "The subject is required."));
    }
    let content_ok = body["content"]
        .as_array()
        .is_some_and(|c| !c.is_empty() && c.iter().all(|b| text(&b["type"]) && text(&b["value"])));
    if !content_ok {
        found.push((
            Some("content".into()),
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.",
        ));
    }
    found
}

async fn send(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let stats = state.stats("sendgrid");
    stats.request();
    let faults = state.faults();
    faults.delay().await;
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(API_KEY) {
        stats.rejected();
        return errors(
            StatusCode::UNAUTHORIZED,
            &[(None, "The provided authorization grant is invalid, expired, or revoked")],
        );
    }
    if body.len() > MAX_BODY {
        stats.rejected();
        return errors(StatusCode::PAYLOAD_TOO_LARGE, &[(None, "Payload Too Large")]);
    }
    let Ok(mail) = serde_json::from_slice::<Value>(&body) else {
        stats.rejected();
        return errors(StatusCode::BAD_REQUEST, &[(None, "Bad Request")]);
    };
    let problems = validate(&mail);
    if !problems.is_empty() {
        stats.rejected();
        return errors(StatusCode::BAD_REQUEST, &problems);
    }
    let fate = faults.draw(&mut rand::rng());
    match fate {
        Fate::Unavailable => {
            stats.rejected();
            return errors(StatusCode::SERVICE_UNAVAILABLE, &[(None, "Service Unavailable")]);
        }
        Fate::Throttled => {
            stats.rejected();
            let mut response = errors(StatusCode::TOO_MANY_REQUESTS, &[(None, "too many requests")]);
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", HeaderValue::from_static("600"));
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("x-ratelimit-reset", HeaderValue::from(now_secs() + 1));
            return response;
        }
        Fate::Timeout => {
            tokio::time::sleep(faults.hold).await;
            stats.rejected();
            return errors(StatusCode::GATEWAY_TIMEOUT, &[(None, "Gateway Timeout")]);
        }
        Fate::BadToken => {
            stats.rejected();
            return invalid_address("personalizations.0.to.0.email".into());
        }
        Fate::Accept | Fate::AcceptThenTimeout => {}
    }
    let delivery_id = headers.get(DELIVERY_ID_HEADER).and_then(|v| v.to_str().ok());
    stats.accepted(delivery_id);
    let message_id = URL_SAFE_NO_PAD.encode(rand::random::<u128>().to_be_bytes())[..22].to_string();
    post_events(&state, &mail, &message_id);
    if fate == Fate::AcceptThenTimeout {
        tokio::time::sleep(faults.hold).await;
    }
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(value) = HeaderValue::from_str(&message_id) {
        response.headers_mut().insert("x-message-id", value);
    }
    response
}

/// The events of an accepted mail: `processed`, then `delivered` or `bounce`, per recipient.
fn events(mail: &Value, message_id: &str, now: u64) -> Vec<Value> {
    let categories = mail["categories"].clone();
    let personalizations = mail["personalizations"].as_array().cloned().unwrap_or_default();
    let mut events = Vec::new();
    for (i, personalization) in personalizations.iter().enumerate() {
        for recipient in personalization["to"].as_array().cloned().unwrap_or_default() {
            let email = recipient["email"].as_str().unwrap_or_default();
            let base = |event: &str| {
                let mut event = json!({
                    "email": email,
                    "timestamp": now,
                    "smtp-id": format!("<{message_id}@ismtpd0001p1iad2.sendgrid.net>"),
                    "event": event,
                    "category": categories,
                    "sg_event_id": URL_SAFE_NO_PAD.encode(rand::random::<u128>().to_be_bytes()),
                    "sg_message_id": format!("{message_id}.filterdrecv-1-{i}"),
                });
                // Custom arguments are copied onto each event's top level.
                if let (Some(event), Some(args)) = (event.as_object_mut(), personalization["custom_args"].as_object()) {
                    for (name, value) in args {
                        event.insert(name.clone(), value.clone());
                    }
                }
                event
            };
            events.push(base("processed"));
            let mut last = if email == BOUNCE_ADDRESS { base("bounce") } else { base("delivered") };
            if email == BOUNCE_ADDRESS {
                last["type"] = json!("bounce");
                last["status"] = json!("5.1.1");
                last["reason"] = json!("550 5.1.1 The email account that you tried to reach does not exist.");
            } else {
                last["response"] = json!("250 2.0.0 OK");
            }
            events.push(last);
        }
    }
    events
}

/// Posts the signed event batch of an accepted mail in the background.
fn post_events(state: &State, mail: &Value, message_id: &str) {
    if state.callback_url().is_none() {
        return;
    }
    let now = now_secs();
    let body = Value::Array(events(mail, message_id, now)).to_string();
    let timestamp = now.to_string();
    let pair = STANDARD
        .decode(EVENT_WEBHOOK_PRIVATE_KEY)
        .ok()
        .and_then(|pkcs8| EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).ok());
    let signed = [timestamp.as_bytes(), body.as_bytes()].concat();
    let Some(signature) = pair.and_then(|pair| pair.sign(&SystemRandom::new(), &signed).ok()) else {
        tracing::error!("the sandbox's event webhook key does not sign");
        return;
    };
    let signature = STANDARD.encode(signature.as_ref());
    state.post_receipt("sendgrid", "/v1/receipts/sendgrid", move |client, url| {
        client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Twilio-Email-Event-Webhook-Signature", signature)
            .header("X-Twilio-Email-Event-Webhook-Timestamp", timestamp)
            .body(body)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, KeyPair, UnparsedPublicKey};

    #[test]
    fn the_committed_key_pair_signs_and_its_public_half_verifies() {
        let pkcs8 = STANDARD.decode(EVENT_WEBHOOK_PRIVATE_KEY).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).unwrap();
        let spki = STANDARD.decode(EVENT_WEBHOOK_PUBLIC_KEY).unwrap();
        assert!(spki.ends_with(pair.public_key().as_ref()));
        let signature = pair.sign(&SystemRandom::new(), b"1[]").unwrap();
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki);
        assert!(key.verify(b"1[]", signature.as_ref()).is_ok());
        assert!(key.verify(b"2[]", signature.as_ref()).is_err());
    }

    #[test]
    fn the_body_is_checked_as_sendgrid_checks_it() {
        let good = json!({
            "personalizations": [{"to": [{"email": "a@example.com"}]}],
            "from": {"email": "h@example.com"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "v"}],
        });
        assert!(validate(&good).is_empty());
        let bad = json!({"personalizations": [{"to": [{"email": "a@example.com"}, {"email": "nope"}]}]});
        let fields: Vec<_> = validate(&bad).into_iter().filter_map(|(field, _)| field).collect();
        assert_eq!(fields, ["from.email", "personalizations.0.to.1.email", "subject", "content"]);
    }

    #[test]
    fn events_carry_the_custom_args() {
        let mail = json!({
            "personalizations": [{"to": [{"email": BOUNCE_ADDRESS}], "custom_args": {"delivery_id": "d-1"}}],
            "categories": ["marketing"],
        });
        let events = events(&mail, "m1", 7);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event"], "processed");
        assert_eq!(events[1]["event"], "bounce");
        assert_eq!(events[1]["delivery_id"], "d-1");
        assert_eq!(events[1]["sg_message_id"], "m1.filterdrecv-1-0");
    }
}
