//! Routes called by people and providers rather than by clients: no API key, each request is
//! authenticated by a signature instead.
//!
//! - `GET /v1/unsubscribe?token=…`: the page a recipient reaches by clicking the link; it shows
//!   one button and records nothing (mail scanners fetch links; RFC 8058 §4).
//! - `POST /v1/unsubscribe?token=…`: the one-click unsubscribe a mail client posts
//!   (`List-Unsubscribe=One-Click`), or the page's button. The token is checked
//!   ([`UnsubscribeLinks::verify`]), the category is added to the user's opt-outs, and an
//!   `opted_out` event (`unsubscribed:<category>`) joins the notification's timeline. Idempotent.
//! - Delivery receipts, each checked by its provider's signature: `POST /v1/receipts/twilio`
//!   (`X-Twilio-Signature`, over the `status_callback` URL configured for Twilio), `GET|POST
//!   /v1/receipts/vonage` (signed with `providers.vonage.signature_secret`), `POST
//!   /v1/receipts/sendgrid` (the signed event webhook, `providers.sendgrid.event_webhook_key`),
//!   and `POST /v1/receipts/smtp` (a bounce message, RFC 3464, posted by the mail system with an
//!   API key of scope `send`). Each receipt of a delivery Herald made becomes a `delivered`,
//!   `undelivered` or `bounced` event; a hard bounce or a permanent undelivered deactivates the
//!   address, when it is the one the delivery went to (its delivery id is derived from it).
//!   Receipts for unknown notifications are acknowledged and ignored (a provider retries what is refused). A receipt delivered twice
//!   yields the same event id.

use super::{ApiError, ApiState, Timelines, authorize};
use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use herald_connectors::channels::{sendgrid, smtp, twilio, vonage};
use herald_connectors::receipts::{Receipt, ReceiptError, ReceiptStatus};
use herald_schemas::stage::now_ms;
use herald_schemas::store::Scope;
use herald_schemas::{DeliveryEvent, DeliveryId, EventKind, Route};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The claim of a valid token, or the error to answer.
fn claim(s: &ApiState, query: &TokenQuery) -> Result<herald_connectors::unsubscribe::Unsubscribe, ApiError> {
    let links =
        s.app.unsubscribe.as_ref().ok_or_else(|| ApiError::not_found("unsubscribe links are not enabled here"))?;
    let token = query.token.as_deref().ok_or_else(|| ApiError::bad_request("missing_token", "`token` is required"))?;
    links.verify(token).map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_token", e.to_string()))
}

pub async fn unsubscribe_page(
    State(s): State<ApiState>,
    Query(query): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let claim = claim(&s, &query)?;
    let token = query.token.unwrap_or_default();
    let category = html_escape(&claim.category);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>\
         <p>Stop receiving <b>{category}</b> messages?</p>\
         <form method=\"post\" action=\"?token={token}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form></body></html>"
    );
    Ok(Html(page).into_response())
}

pub async fn unsubscribe(State(s): State<ApiState>, Query(query): Query<TokenQuery>) -> Result<Response, ApiError> {
    let claim = claim(&s, &query)?;
    let contacts = &s.app.backends.contacts;
    let added = contacts.add_opt_out(&claim.user_id, &claim.category).await.map_err(|e| ApiError::internal(&e))?;
    if added {
        s.app.contact_cache.invalidate(&claim.user_id);
        let notification = crate::tracking::notification_of(&DeliveryId(claim.delivery_id.clone()));
        let event = DeliveryEvent::new(
            &notification,
            &claim.client_id,
            &claim.user_id,
            EventKind::OptedOut,
            None,
            Some(format!("unsubscribed:{}", claim.category)),
            now_ms(),
        );
        s.append_events(&[event]).await?;
        tracing::info!(category = %claim.category, "one-click unsubscribe recorded");
    }
    let category = html_escape(&claim.category);
    Ok(Html(format!("<!doctype html><p>You will no longer receive <b>{category}</b> messages.</p>")).into_response())
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The answer to a callback whose provider is not configured to send receipts here.
fn not_configured(what: &str) -> ApiError {
    ApiError::not_found(format!("receipts from this provider are not configured: set {what}"))
}

fn refused(error: ReceiptError) -> ApiError {
    match error {
        ReceiptError::Unauthenticated { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "bad_signature", error.to_string())
        }
        ReceiptError::Malformed { .. } => ApiError::bad_request("malformed_receipt", error.to_string()),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    delivery: Option<String>,
}

pub async fn twilio_receipt(
    State(s): State<ApiState>,
    Query(query): Query<DeliveryQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = s.app.config.providers.twilio.as_ref();
    let (Some(config), Some(callback)) = (config, config.and_then(|c| c.status_callback.as_deref())) else {
        return Err(not_configured("providers.twilio.status_callback"));
    };
    let token = config.auth_token.resolve().map_err(|e| ApiError::internal(&e))?;
    let delivery = query.delivery.ok_or_else(|| ApiError::bad_request("missing_delivery", "`delivery` is required"))?;
    let params: BTreeMap<String, String> = form_urlencoded_pairs(&body);
    let signature = header_str(&headers, twilio::receipt::SIGNATURE_HEADER);
    let receipt =
        twilio::receipt::parse_status_callback(&token, callback, &delivery, signature, &params).map_err(refused)?;
    record(&s, receipt.into_iter().collect()).await
}

pub async fn vonage_receipt(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = s.app.config.providers.vonage.as_ref().ok_or_else(|| not_configured("[providers.vonage]"))?;
    let verifier = config
        .receipt_verifier()
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| not_configured("providers.vonage.signature_secret"))?;
    let content_type = header_str(&headers, header::CONTENT_TYPE.as_str());
    let params = vonage::receipt_params(query.as_deref(), content_type, &body).map_err(refused)?;
    let receipt = vonage::parse_receipt(&params, Some(&verifier), std::time::SystemTime::now()).map_err(refused)?;
    record(&s, receipt.into_iter().collect()).await
}

pub async fn sendgrid_receipt(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = s.app.config.providers.sendgrid.as_ref();
    let key = config
        .and_then(|c| c.event_webhook_key.as_deref())
        .ok_or_else(|| not_configured("providers.sendgrid.event_webhook_key"))?;
    let key = sendgrid::EventWebhookKey::from_base64(key).map_err(|e| ApiError::internal(&e))?;
    let receipts = sendgrid::parse_events(
        &key,
        header_str(&headers, sendgrid::TIMESTAMP_HEADER),
        header_str(&headers, sendgrid::SIGNATURE_HEADER),
        &body,
    )
    .map_err(refused)?;
    record(&s, receipts).await
}

pub async fn smtp_receipt(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(&s, &headers, Scope::Send).await?;
    let receipts = smtp::bounce::parse_bounce(&body).map_err(refused)?;
    record(&s, receipts).await
}

fn form_urlencoded_pairs(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The route a receipt's provider serves.
fn route_of(provider: &str) -> Option<Route> {
    match provider {
        "twilio" | "vonage" => Some(Route::Sms),
        "smtp" | "sendgrid" => Some(Route::Email),
        _ => None,
    }
}

/// Turns receipts into events (and dead addresses) for the deliveries Herald knows.
async fn record(s: &ApiState, receipts: Vec<Receipt>) -> Result<Response, ApiError> {
    let now = now_ms();
    let mut events = Vec::with_capacity(receipts.len());
    let mut timelines = Timelines::default();
    for receipt in receipts {
        let id = &receipt.delivery_id;
        // The delivery's own event, whose template, category and locale the receipt's event
        // copies (so it joins the funnel); else any event of the notification, which names its
        // user and client: a receipt may arrive before the dispatcher's `sent` is in the log.
        let timeline = timelines.of(s, id).await?;
        let of = timeline.iter().find(|e| e.delivery_id.as_ref() == Some(id)).or(timeline.first());
        let (Some(sent), Some(route)) = (of, route_of(receipt.provider)) else {
            tracing::debug!(provider = receipt.provider, "receipt for a notification Herald does not know; ignored");
            continue;
        };
        let kind = match receipt.status {
            ReceiptStatus::Delivered => EventKind::Delivered,
            ReceiptStatus::Undelivered { .. } => EventKind::Undelivered,
            ReceiptStatus::Bounced { .. } => EventKind::Bounced,
        };
        // Only the address the delivery went to: its id is derived from it.
        let address = receipt.address.as_deref().filter(|a| {
            DeliveryId::derive(&sent.notification_id, route.as_str(), a) == *id && receipt.status.address_is_dead()
        });
        if let Some(address) = address {
            let contacts = &s.app.backends.contacts;
            if contacts.mark_unreachable(&sent.user_id, address).await.map_err(|e| ApiError::internal(&e))? {
                s.app.contact_cache.invalidate(&sent.user_id);
                tracing::info!(
                    provider = receipt.provider,
                    route = route.as_str(),
                    "address reported dead by a receipt"
                );
            }
        }
        let reason =
            receipt.reason.clone().or(receipt.provider_id.clone()).map(|r| format!("{}:{r}", receipt.provider));
        let mut event = crate::tracking::follow_up(sent, id, route, kind, now);
        event.reason = reason;
        events.push(event);
    }
    s.append_events(&events).await?;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({ "recorded": events.len() }))).into_response())
}
