//! Engagement: the email tracking links ([`crate::tracking`]) and the opens and clicks apps report.
//!
//! - `GET /v1/t/o/{token}`: the open pixel. Records `opened`, answers a 1×1 GIF.
//! - `GET /v1/t/c/{token}`: the click redirect. Records `clicked`, answers `302` to the link's
//!   target *from the signed token*; a token that is not Herald's, or not a click link, is a
//!   `403` and redirects nowhere.
//! - `POST /v1/events` (scope `send`): `{"events": [{"delivery_id": "…", "event": "opened" |
//!   "clicked"}]}`, for apps to report a push opened or acted on (the push payload carries its
//!   delivery id). Each event joins the delivery's notification, if it is one of the key's
//!   client's; others are listed as `unknown`. Answers `202 {"recorded": n, "unknown": [...]}`.
//!
//! The events are appended to `herald-events` before the answer; repeats share an event id.

use super::{ApiError, ApiState, Timelines, authorize, read_json};
use crate::tracking::{Claim, PIXEL_GIF, follow_up};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_schemas::stage::now_ms;
use herald_schemas::store::Scope;
use herald_schemas::{DeliveryEvent, DeliveryId, EventKind};
use serde::Deserialize;
use serde_json::json;

fn verified(s: &ApiState, token: &str) -> Result<Claim, ApiError> {
    let tracking = s.app.tracking.as_ref().ok_or_else(|| ApiError::not_found("tracking is not enabled here"))?;
    tracking.verify(token).map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_token", e.to_string()))
}

async fn append(s: &ApiState, events: &[DeliveryEvent]) -> Result<(), ApiError> {
    s.append_events(events).await?;
    metrics::counter!("herald_engagement_events_total").increment(events.len() as u64);
    Ok(())
}

pub async fn open(State(s): State<ApiState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let claim = verified(&s, &token)?;
    append(&s, &[claim.event(EventKind::Opened, now_ms())]).await?;
    let headers = [(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store, max-age=0")];
    Ok((headers, PIXEL_GIF.as_slice()).into_response())
}

pub async fn click(State(s): State<ApiState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let claim = verified(&s, &token)?;
    let target = claim
        .url
        .clone()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "bad_token", "this token is not a click link"))?;
    append(&s, &[claim.event(EventKind::Clicked, now_ms())]).await?;
    Ok((StatusCode::FOUND, [(header::LOCATION, target.as_str()), (header::CACHE_CONTROL, "no-store")]).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedEvents {
    events: Vec<ReportedEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedEvent {
    delivery_id: String,
    event: String,
}

pub async fn post_events(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let body: ReportedEvents = read_json(&s, req)
        .await
        .map_err(|e| if e.code == "invalid_json" { ApiError::bad_request("invalid_events", e.message) } else { e })?;
    let max = s.app.config.api.max_items;
    if body.events.len() > max {
        return Err(ApiError::bad_request("too_many_items", format!("at most {max} events per request")));
    }
    let mut reported = Vec::with_capacity(body.events.len());
    for e in body.events {
        let kind = match e.event.as_str() {
            "opened" => EventKind::Opened,
            "clicked" => EventKind::Clicked,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_events",
                    format!("event {other:?}: use \"opened\" or \"clicked\""),
                ));
            }
        };
        reported.push((DeliveryId(e.delivery_id), kind));
    }
    let now = now_ms();
    let mut timelines = Timelines::default();
    let (mut events, mut unknown) = (Vec::new(), Vec::new());
    for (delivery, kind) in reported {
        // The delivery's own event (its `sent`), of a notification of this client.
        let of = timelines.of(&s, &delivery).await?.iter().find(|e| {
            e.delivery_id.as_ref() == Some(&delivery) && (e.client_id == key.client_id || key.allows(Scope::Admin))
        });
        match of.and_then(|of| of.route.map(|route| follow_up(of, &delivery, route, kind, now))) {
            Some(event) => events.push(event),
            None => unknown.push(delivery.0),
        }
    }
    append(&s, &events).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "recorded": events.len(), "unknown": unknown }))).into_response())
}
