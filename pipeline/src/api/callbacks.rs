//! Routes called by people and providers rather than by clients: no API key, each request is
//! authenticated by a signature instead.
//!
//! - `GET /v1/unsubscribe?token=…`: the page a recipient reaches by clicking the link; it shows
//!   one button and records nothing (mail scanners fetch links; RFC 8058 §4).
//! - `POST /v1/unsubscribe?token=…`: the one-click unsubscribe a mail client posts
//!   (`List-Unsubscribe=One-Click`), or the page's button. The token is checked
//!   ([`UnsubscribeLinks::verify`]), the category is added to the user's opt-outs, and an
//!   `opted_out` event (`unsubscribed:<category>`) joins the notification's timeline. Idempotent.

use super::{ApiError, ApiState};
use crate::runtime::requests::event_appends;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use herald_schemas::stage::now_ms;
use herald_schemas::{DeliveryEvent, EventKind, NotificationId};
use serde::Deserialize;

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
        // The delivery id starts with its notification id (`<notification>.<hash>`).
        let notification = NotificationId(claim.delivery_id.split('.').next().unwrap_or_default().to_string());
        let event = DeliveryEvent::new(
            &notification,
            &claim.client_id,
            &claim.user_id,
            EventKind::OptedOut,
            None,
            Some(format!("unsubscribed:{}", claim.category)),
            now_ms(),
        );
        let appends = event_appends(&[event], s.app.partitions());
        s.app.backends.log.append(appends).await.map_err(|e| ApiError::internal(&e))?;
        tracing::info!(category = %claim.category, "one-click unsubscribe recorded");
    }
    let category = html_escape(&claim.category);
    Ok(Html(format!("<!doctype html><p>You will no longer receive <b>{category}</b> messages.</p>")).into_response())
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
