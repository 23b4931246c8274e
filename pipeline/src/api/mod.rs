//! The HTTP API (axum).
//!
//! Every `/v1` route authenticates with `Authorization: Bearer <key>` and
//! checks the route's scope *before* the body is read; the body is then
//! read with a size limit (413 past it) and parsed (400 for malformed JSON
//! or invalid UTF-8). `POST /v1/notifications` answers 202 only after the
//! accepted items are durable in `herald-requests`; when the request chain
//! lags more than `api.lag_high_water` records it answers 503 with
//! `Retry-After` instead (429 stays for a client over its own rate limit),
//! except to a batch of only transactional items, whose lane that lag does
//! not slow.

mod callbacks;
mod engagement;
mod error;
mod webhooks;

pub use error::ApiError;

use crate::app::App;
use crate::ingest::{ItemOutcome, Submission};
use crate::telemetry;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use herald_schemas::store::{ApiKeyRecord, Hold, HoldKey, HoldState, Scope};
use herald_schemas::{DeliveryEvent, NotificationId, TRANSACTIONAL, Template, User};
use herald_stages::render::check_template;
use herald_stages::validate::validate_user;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone)]
pub struct ApiState {
    pub app: Arc<App>,
    /// Published by the runtime's monitor.
    pub request_lag: Arc<AtomicU64>,
    /// Where a batch with non-transactional items is validated and stored: the pipeline's bulk
    /// runtime, so that a marketing flood's requests do not queue ahead of a one-time password's
    /// on the runtime serving HTTP.
    pub bulk: tokio::runtime::Handle,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/notifications", post(post_notifications))
        .route("/v1/notifications/{id}", get(get_notification).delete(delete_notification))
        .route("/v1/users/{user_id}", put(put_user).get(get_user))
        .route("/v1/users/{user_id}/topics", put(put_topics).get(get_topics))
        .route("/v1/templates", post(post_template))
        .route("/v1/keys", post(post_key))
        .route("/v1/analytics/sql", post(post_sql))
        .route("/v1/webhooks", put(webhooks::put_webhook).get(webhooks::get_webhook).delete(webhooks::delete_webhook))
        .route("/v1/events", post(engagement::post_events))
        .route("/v1/t/o/{token}", get(engagement::open))
        .route("/v1/t/c/{token}", get(engagement::click))
        .route("/v1/unsubscribe", get(callbacks::unsubscribe_page).post(callbacks::unsubscribe))
        .route("/v1/receipts/twilio", post(callbacks::twilio_receipt))
        .route("/v1/receipts/vonage", get(callbacks::vonage_receipt).post(callbacks::vonage_receipt))
        .route("/v1/receipts/sendgrid", post(callbacks::sendgrid_receipt))
        .route("/v1/receipts/smtp", post(callbacks::smtp_receipt))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// What a worker without the API serves (`herald serve --role worker`): liveness, readiness
/// (the request lag) and metrics.
pub fn ops_router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts every answer by route template and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let response = next.run(req).await;
    telemetry::api_request(route.as_deref().unwrap_or("unmatched"), response.status().as_u16());
    response
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let lag = s.request_lag.load(Ordering::Relaxed);
    if lag > s.app.config.api.lag_high_water {
        (StatusCode::SERVICE_UNAVAILABLE, format!("behind: {lag} requests queued\n")).into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], telemetry::prometheus().render()).into_response()
}

/// The timelines of the notifications a request's deliveries belong to, each read once (a
/// webhook batch or an app's report often names one notification many times).
#[derive(Default)]
struct Timelines(std::collections::HashMap<NotificationId, Vec<herald_schemas::DeliveryEvent>>);

impl Timelines {
    /// The events of the notification `delivery` belongs to (empty when Herald knows none).
    async fn of(
        &mut self,
        s: &ApiState,
        delivery: &herald_schemas::DeliveryId,
    ) -> Result<&[herald_schemas::DeliveryEvent], ApiError> {
        let notification = crate::tracking::notification_of(delivery);
        if !self.0.contains_key(&notification) {
            let timeline = s.app.backends.timeline.timeline(&notification).await.map_err(|e| ApiError::internal(&e))?;
            self.0.insert(notification.clone(), timeline);
        }
        Ok(self.0.get(&notification).map(Vec::as_slice).unwrap_or_default())
    }
}

/// Checks the bearer key and the scope; the body is untouched.
async fn authorize(s: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<ApiKeyRecord, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <api key>'"))?;
    let record = s
        .app
        .backends
        .keys
        .get_key(&crate::keys::hash(secret))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if !record.allows(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key lacks the '{}' scope", scope.as_str()),
        ));
    }
    Ok(record)
}

/// Reads the body up to the configured limit and parses it as JSON.
async fn read_json<T: DeserializeOwned>(s: &ApiState, req: Request) -> Result<T, ApiError> {
    parse_json(&read_body(s, req).await?)
}

/// Reads the body up to the configured limit.
async fn read_body(s: &ApiState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = s.app.config.api.max_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request body exceeds {limit} bytes"))
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let body: Body = req.into_body();
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request("invalid_utf8", format!("body is not valid UTF-8: {e}")))?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")))
}

/// `POST /v1/notifications`. A batch of only transactional items is parsed and stored on the
/// runtime serving HTTP, which the priority lane shares; any other batch on the bulk runtime
/// ([`ApiState::bulk`]), at its lower OS priority, so that a marketing flood's requests (parsing
/// their JSON is most of their cost) do not queue ahead of a one-time password's.
async fn post_notifications(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let body = read_body(&s, req).await?;
    // Only a body that names the category can hold only transactional items. (One that spells it
    // with escapes goes the bulk way, and is accepted all the same.)
    let parsed = memchr::memmem::find(&body, TRANSACTIONAL.as_bytes()).map(|_| notifications(&body)).transpose()?;
    // The lag is that of the normal lane: a batch of only transactional items goes to the
    // priority lane, which a marketing backlog does not slow, and is taken.
    let parsed = match parsed {
        Some(items) if items.iter().all(|i| i.get("category").and_then(Value::as_str) == Some(TRANSACTIONAL)) => {
            return store_notifications(&s, key, items).await;
        }
        parsed => parsed,
    };
    shed_if_behind(&s)?;
    let state = s.clone();
    on_bulk(&s, async move {
        let items = match parsed {
            Some(items) => items,
            None => notifications(&body)?,
        };
        store_notifications(&state, key, items).await
    })
    .await
}

/// Runs `work` on the bulk runtime, to completion even if the client goes away (a batch is
/// stored whole or not at all).
async fn on_bulk(
    s: &ApiState,
    work: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    let retry_after = s.app.config.api.retry_after;
    s.bulk.spawn(work).await.map_err(|_| ApiError::unavailable("Herald is shutting down; retry later", retry_after))?
}

/// 503 while the normal lane is behind by more than `api.lag_high_water` requests.
fn shed_if_behind(s: &ApiState) -> Result<(), ApiError> {
    let lag = s.request_lag.load(Ordering::Relaxed);
    if lag > s.app.config.api.lag_high_water {
        telemetry::api_overloaded(lag);
        return Err(ApiError::unavailable(
            format!("Herald is behind ({lag} requests queued); retry later (transactional requests are still taken)"),
            s.app.config.api.retry_after,
        ));
    }
    Ok(())
}

/// The items of a `{"notifications": [ … ]}` body, moved out of it.
fn notifications(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let mut body: Value = parse_json(body)?;
    match body.get_mut("notifications").map(Value::take) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(ApiError::bad_request("invalid_body", "expected {\"notifications\": [ … ]}")),
    }
}

/// Validates and stores a batch where it is called, and answers with each item's outcome.
async fn store_notifications(s: &ApiState, key: ApiKeyRecord, items: Vec<Value>) -> Result<Response, ApiError> {
    let max = s.app.config.api.max_items;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch_size",
            format!("send between 1 and {max} notifications per request, not {}", items.len()),
        ));
    }
    let submissions = items.into_iter().map(Submission::json).collect();
    let outcomes = s.app.ingestor.submit(&key.client_id, submissions).await.map_err(|e| {
        if e.is_retryable() {
            ApiError::unavailable(format!("could not store the request: {e}"), s.app.config.api.retry_after)
        } else {
            ApiError::internal(&e)
        }
    })?;
    let mut accepted = 0;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            ItemOutcome::Accepted(id) => {
                accepted += 1;
                json!({"id": id, "status": "accepted"})
            }
            ItemOutcome::Rejected(id, r) => {
                json!({"id": id, "status": "rejected", "error": {"code": r.code, "message": r.message}})
            }
        })
        .collect();
    telemetry::api_notifications(accepted, results.len() - accepted);
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "results": results }))).into_response())
}

async fn get_notification(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let id = NotificationId(id);
    let events = s.app.backends.timeline.timeline(&id).await.map_err(|e| ApiError::internal(&e))?;
    // Another client's notification is as unknown as a missing one.
    let visible = events.first().is_some_and(|e| e.client_id == key.client_id || key.allows(Scope::Admin));
    if !visible {
        return Err(ApiError::not_found(format!("no notification {id}")));
    }
    Ok(axum::Json(json!({ "id": id, "events": events })).into_response())
}

/// Cancels a notification still waiting in the schedule index (its `send_at`, the end of the
/// user's quiet hours, or a digest's window): 200 once it is cancelled (again 200 if it was
/// already), 409 when the scheduler has released it for sending, 404 when nothing of this
/// client's waits under that id.
///
/// Three steps, each durable before the next: the holds are taken for cancelling (from then on
/// never released), the `cancelled` event is appended to `herald-events`, the cancel is finished.
/// Should the process stop between them, the client's repeat of the `DELETE` finds the holds
/// cancelling and does the rest, and if it never repeats, the scheduler does when they fall due.
/// The event's id follows from its content, so an append made twice is absorbed downstream.
async fn delete_notification(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let id = NotificationId(id);
    // Another client's notification is as unknown as a missing one.
    let client = (!key.allows(Scope::Admin)).then_some(key.client_id.as_str());
    let found = s.app.backends.schedule.cancel(&id, client).await.map_err(|e| ApiError::internal(&e))?;
    let cancelled = |reason: &str| axum::Json(json!({ "id": id, "status": "cancelled", "reason": reason }));
    let taken: Vec<&Hold> = found
        .iter()
        .filter(|(_, state)| matches!(state, HoldState::Waiting | HoldState::Cancelling))
        .map(|(hold, _)| hold)
        .collect();
    if let Some(hold) = taken.first() {
        s.append_events(&[hold.cancelled_event(s.app.clock.now_ms())]).await?;
        let keys: Vec<HoldKey> = taken.iter().map(|h| (h.id.clone(), h.reason)).collect();
        s.app.backends.schedule.finish_cancel(&keys).await.map_err(|e| ApiError::internal(&e))?;
        return Ok(cancelled(hold.reason.as_str()).into_response());
    }
    if let Some((hold, _)) = found.iter().find(|(_, state)| *state == HoldState::Cancelled) {
        return Ok(cancelled(hold.reason.as_str()).into_response());
    }
    if !found.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_released",
            format!("notification {id} was released for sending; it can no longer be cancelled"),
        ));
    }
    Err(ApiError::not_found(format!("no notification {id} waits to be sent (unknown, or not scheduled)")))
}

impl ApiState {
    /// Appends events the API records itself (a cancel, a receipt, an open) to `herald-events`,
    /// durably; nothing for none.
    pub(crate) async fn append_events(&self, events: &[DeliveryEvent]) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        let appends = crate::runtime::requests::event_appends(events, self.app.partitions());
        self.app.backends.log.append(appends).await.map_err(|e| ApiError::internal(&e))?;
        Ok(())
    }
}

async fn put_user(State(s): State<ApiState>, Path(user_id): Path<String>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Contacts).await?;
    let mut user: User = read_json(&s, req)
        .await
        .map_err(|e| if e.code == "invalid_json" { ApiError::bad_request("invalid_user", e.message) } else { e })?;
    if !user.id.is_empty() && user.id != user_id {
        return Err(ApiError::bad_request("invalid_user", "the body's id differs from the path's"));
    }
    user.id = user_id;
    validate_user(&user).map_err(|r| ApiError::bad_request(r.code, r.message))?;
    let created = s
        .app
        .backends
        .contacts
        .put_users(std::slice::from_ref(&user))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .first()
        .copied()
        .unwrap_or(false);
    s.app.contact_cache.invalidate(&user.id);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(user)).into_response())
}

async fn get_user(State(s): State<ApiState>, Path(user_id): Path<String>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Contacts).await?;
    let users =
        s.app.backends.contacts.get_users(std::slice::from_ref(&user_id)).await.map_err(|e| ApiError::internal(&e))?;
    match users.into_iter().next().flatten() {
        Some(user) => Ok(axum::Json(user).into_response()),
        None => Err(ApiError::not_found(format!("no user {user_id}"))),
    }
}

/// Most topics one user may follow.
const MAX_TOPICS_PER_USER: usize = 100;

/// Replaces the topics the user follows (`{"topics": ["news", …]}`); broadcasts to a topic reach
/// its followers. The user must exist.
async fn put_topics(
    State(s): State<ApiState>,
    Path(user_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Contacts).await?;
    let body: Value = read_json(&s, req).await?;
    let bad = |m: String| ApiError::bad_request("invalid_topics", m);
    let topics: Vec<String> = body
        .get("topics")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().map(|t| t.as_str().map(String::from)).collect())
        .ok_or_else(|| bad("expected {\"topics\": [\"name\", …]}".into()))?;
    if topics.len() > MAX_TOPICS_PER_USER {
        return Err(bad(format!("a user follows at most {MAX_TOPICS_PER_USER} topics")));
    }
    if let Some(t) = topics.iter().find(|t| !herald_stages::validate::is_category(t)) {
        let shown: String = t.chars().take(64).collect();
        return Err(bad(format!("topic {shown:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-'")));
    }
    let users =
        s.app.backends.contacts.get_users(std::slice::from_ref(&user_id)).await.map_err(|e| ApiError::internal(&e))?;
    if users.into_iter().next().flatten().is_none() {
        return Err(ApiError::not_found(format!("no user {user_id}")));
    }
    s.app.backends.subscriptions.set_topics(&user_id, &topics).await.map_err(|e| ApiError::internal(&e))?;
    // What every store keeps: the names sorted, each once (no second read to learn it).
    let now: std::collections::BTreeSet<&String> = topics.iter().collect();
    Ok(axum::Json(json!({ "user_id": user_id, "topics": now })).into_response())
}

async fn get_topics(
    State(s): State<ApiState>,
    Path(user_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Contacts).await?;
    let topics = s.app.backends.subscriptions.topics_of(&user_id).await.map_err(|e| ApiError::internal(&e))?;
    Ok(axum::Json(json!({ "user_id": user_id, "topics": topics })).into_response())
}

async fn post_template(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Templates).await?;
    let template: Template = read_json(&s, req)
        .await
        .map_err(|e| if e.code == "invalid_json" { ApiError::bad_request("invalid_template", e.message) } else { e })?;
    check_template(&template).map_err(|e| ApiError::bad_request("invalid_template", e.to_string()))?;
    let created = s.app.backends.templates.put_template(&template).await.map_err(|e| ApiError::internal(&e))?;
    s.app.template_cache.invalidate(&template.id);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(template)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    client_id: String,
    scopes: Vec<Scope>,
}

async fn post_key(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers(), Scope::Admin).await?;
    let new: NewKey = read_json(&s, req).await.map_err(|e| {
        if e.code == "invalid_json" { ApiError::bad_request("invalid_key_request", e.message) } else { e }
    })?;
    if new.client_id.is_empty() || new.scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_key_request", "client_id and at least one scope are required"));
    }
    let secret = crate::keys::create(s.app.backends.keys.as_ref(), &new.client_id, &new.scopes)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "key": secret, "client_id": new.client_id }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// `POST /v1/analytics/sql` (scope `analytics`): `{"sql": "SELECT …"}` → `{"columns": [...],
/// "rows": [{...}], "row_count": n, "truncated": bool}`. Read-only, under the time and row
/// limits of `[api]`; a query that is not read-only, does not parse or runs too long is a 400.
async fn post_sql(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    use crate::analytics::sql::{self, EventSource, Format, SqlError};
    authorize(&s, req.headers(), Scope::Analytics).await?;
    let body: SqlRequest = read_json(&s, req)
        .await
        .map_err(|e| if e.code == "invalid_json" { ApiError::bad_request("invalid_query", e.message) } else { e })?;
    let fail = |e: SqlError| {
        if e.is_client_error() { ApiError::bad_request("invalid_query", e.to_string()) } else { ApiError::internal(&e) }
    };
    let app = &s.app;
    let source = EventSource { root: &app.events_dir(), log: &app.backends.log, partitions: app.partitions() };
    let limits = sql::Limits { time: app.config.api.sql_timeout, rows: app.config.api.sql_max_rows };
    let answer = sql::run(&source, &body.sql, limits).await.map_err(fail)?;
    let rows: serde_json::Value =
        serde_json::from_str(&sql::render(&answer, Format::Json).map_err(fail)?).map_err(|e| ApiError::internal(&e))?;
    let columns: Vec<&str> = answer.schema.fields().iter().map(|f| f.name().as_str()).collect();
    let reply = json!({ "columns": columns, "rows": rows, "row_count": answer.rows, "truncated": answer.truncated });
    Ok((StatusCode::OK, axum::Json(reply)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use herald_schemas::EventKind;
    use herald_schemas::store::HoldReason;
    use herald_schemas::topic::EVENTS;

    async fn events_appended(app: &App) -> u64 {
        let mut total = 0;
        for partition in 0..app.partitions() {
            total += app.backends.log.end_offset(EVENTS, partition).await.unwrap();
        }
        total
    }

    /// The cancel's first step (the hold taken) happened, its event's append did not (an error,
    /// or the process stopped between the two): the client's repeated `DELETE` records the event,
    /// once, and finishes the cancel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repeated_delete_records_the_cancelled_event_the_first_one_lost() {
        let dir = tempfile::tempdir().unwrap();
        let app = Arc::new(App::open(Config::default(), dir.path().to_path_buf()).await.unwrap());
        let secret = crate::keys::create(app.backends.keys.as_ref(), "acme", &[Scope::Send]).await.unwrap();
        let state = ApiState { app: app.clone(), request_lag: Arc::default(), bulk: tokio::runtime::Handle::current() };
        let id = NotificationId("0195f0c0-cancel-lost".into());
        let request =
            serde_json::from_value(json!({ "user_id": "u1", "template": "welcome", "channels": ["email"] })).unwrap();
        let envelope = herald_schemas::RequestEnvelope::new(id.clone(), "acme".into(), 0, request);
        let hold = Hold {
            id: id.clone(),
            reason: HoldReason::SendAt,
            partition: 0,
            due_at_ms: app.clock.now_ms() + 3_600_000,
            client_id: "acme".into(),
            envelope: herald_schemas::codec::encode(&envelope),
        };
        app.backends.schedule.hold(&[hold]).await.unwrap();
        // The first DELETE's first step, and nothing after it.
        let found = app.backends.schedule.cancel(&id, Some("acme")).await.unwrap();
        assert_eq!(found.iter().map(|(_, state)| *state).collect::<Vec<_>>(), vec![HoldState::Waiting]);
        let cancelled = |events: &[DeliveryEvent]| events.iter().filter(|e| e.kind == EventKind::Cancelled).count();
        assert_eq!(cancelled(&app.backends.timeline.timeline(&id).await.unwrap()), 0);

        let delete = || {
            let request = Request::builder()
                .method("DELETE")
                .uri(format!("/v1/notifications/{}", id.0))
                .header(header::AUTHORIZATION, format!("Bearer {secret}"))
                .body(Body::empty())
                .unwrap();
            delete_notification(State(state.clone()), Path(id.0.clone()), request)
        };
        let answer = delete().await.map_err(|e| e.message).unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let timeline = app.backends.timeline.timeline(&id).await.unwrap();
        assert_eq!(cancelled(&timeline), 1, "the repeat recorded the lost event");
        let event = timeline.iter().find(|e| e.kind == EventKind::Cancelled).unwrap();
        assert_eq!((event.client_id.as_str(), event.user_id.as_str()), ("acme", "u1"));

        // Once recorded, the cancel is finished: a further repeat appends nothing.
        let before = events_appended(&app).await;
        assert_eq!(delete().await.map_err(|e| e.message).unwrap().status(), StatusCode::OK);
        assert_eq!(events_appended(&app).await, before);
        let found = app.backends.schedule.cancel(&id, None).await.unwrap();
        assert_eq!(found.iter().map(|(_, state)| *state).collect::<Vec<_>>(), vec![HoldState::Cancelled]);
    }
}
