//! `/v1/webhooks` (scope `send`): a client's status webhook, for the client of the API key.
//!
//! - `PUT` `{"url": "https://…", "secret": "…"}` stores (replaces) it: 201 when new, 200 when
//!   replaced. Without `secret`, Herald generates one (`whsec_` and 64 hex digits) and returns it
//!   in this answer only; a replacement without `secret` gets a new one too, so send the current
//!   one to keep it. A new registration starts with an empty outbox.
//! - `GET` shows the URL (never the secret) and how delivery goes: batches waiting, the last
//!   success, the last error. 404 when there is none.
//! - `DELETE` removes it and the batches still waiting: 204, or 404 when there is none.
//!
//! Changes reach the senders within `webhooks.refresh_interval`.

use super::{ApiError, ApiState, authorize, read_json};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_connectors::webhooks::Destinations;
use herald_schemas::stage::now_ms;
use herald_schemas::store::Scope;
use herald_schemas::webhook::{SECRET_PREFIX, WebhookRegistration};
use serde::Deserialize;
use serde_json::json;

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// A secret's length limits, in bytes.
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;
/// Batches counted per partition for `pending_batches`.
const COUNT_CAP: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    url: String,
    #[serde(default)]
    secret: Option<String>,
}

/// Why a URL cannot be a webhook's, or `None` when it can; `destinations` decides whether an
/// address literal outside the public internet may be (names are checked at each connection).
pub fn url_problem(url: &str, destinations: Destinations) -> Option<String> {
    if url.len() > MAX_URL_BYTES {
        return Some(format!("url is longer than {MAX_URL_BYTES} bytes"));
    }
    let parsed = match reqwest::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return Some(format!("url is not an absolute URL: {e}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some(format!("url must be http:// or https://, not {}://", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some("url has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some("url must not carry credentials; verify Herald-Signature instead".into());
    }
    if parsed.fragment().is_some() {
        return Some("url must not have a #fragment".into());
    }
    destinations.host_problem(&parsed)
}

/// Why a client's own secret cannot be used, or `None` when it can.
pub fn secret_problem(secret: &str) -> Option<String> {
    let (min, max) = (SECRET_BYTES.start(), SECRET_BYTES.end());
    if !SECRET_BYTES.contains(&secret.len()) {
        return Some(format!("secret must be {min} to {max} bytes long"));
    }
    if secret.chars().any(char::is_control) {
        return Some("secret must not contain control characters".into());
    }
    None
}

fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

pub async fn put_webhook(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let body: Registration = read_json(&s, req)
        .await
        .map_err(|e| if e.code == "invalid_json" { ApiError::bad_request("invalid_webhook", e.message) } else { e })?;
    if let Some(problem) = url_problem(&body.url, s.app.config.webhooks.destinations()) {
        return Err(ApiError::bad_request("invalid_webhook", problem));
    }
    if let Some(problem) = body.secret.as_deref().and_then(secret_problem) {
        return Err(ApiError::bad_request("invalid_webhook", problem));
    }
    let store = &s.app.backends.webhooks;
    let internal = |e: herald_schemas::store::StoreError| ApiError::internal(&e);
    let client_id = key.client_id;
    let existing = store.get_webhook(&client_id).await.map_err(internal)?;
    let now = now_ms();
    if existing.is_none() {
        // Batches a collector made from a cache that still had an earlier registration: not for
        // this one.
        drop_outbox(&s, &client_id).await?;
    }
    let generated = body.secret.is_none();
    let registration = WebhookRegistration {
        client_id: client_id.clone(),
        url: body.url,
        secret: body.secret.unwrap_or_else(generate_secret),
        created_at_ms: existing.as_ref().map_or(now, |r| r.created_at_ms),
        updated_at_ms: now,
    };
    let created = store.put_webhook(&registration).await.map_err(internal)?;
    tracing::info!(client_id, created, "webhook registered");
    let mut answer = json!({ "client_id": client_id, "url": registration.url });
    if generated {
        answer["secret"] = json!(registration.secret);
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(answer)).into_response())
}

pub async fn get_webhook(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let store = &s.app.backends.webhooks;
    let internal = |e: herald_schemas::store::StoreError| ApiError::internal(&e);
    let Some(registration) = store.get_webhook(&key.client_id).await.map_err(internal)? else {
        return Err(ApiError::not_found(format!("client {} has no webhook", key.client_id)));
    };
    let mut pending = 0;
    for partition in 0..s.app.partitions() {
        pending += store.count_webhook_batches(&key.client_id, partition, COUNT_CAP).await.map_err(internal)?;
    }
    let status = store.webhook_status(&key.client_id).await.map_err(internal)?.unwrap_or_default();
    let answer = json!({
        "client_id": registration.client_id,
        "url": registration.url,
        "created_at_ms": registration.created_at_ms,
        "updated_at_ms": registration.updated_at_ms,
        "delivery": {
            "pending_batches": pending,
            "last_success_at_ms": status.last_success_at_ms,
            "last_error": status.last_error,
            "last_error_at_ms": status.last_error_at_ms,
            "consecutive_failures": status.consecutive_failures,
        },
    });
    Ok(axum::Json(answer).into_response())
}

pub async fn delete_webhook(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let key = authorize(&s, req.headers(), Scope::Send).await?;
    let existed = s.app.backends.webhooks.delete_webhook(&key.client_id).await.map_err(|e| ApiError::internal(&e))?;
    if !existed {
        return Err(ApiError::not_found(format!("client {} has no webhook", key.client_id)));
    }
    drop_outbox(&s, &key.client_id).await?;
    tracing::info!(client_id = key.client_id, "webhook removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes every batch of the client, in every partition.
async fn drop_outbox(s: &ApiState, client_id: &str) -> Result<(), ApiError> {
    for partition in 0..s.app.partitions() {
        s.app
            .backends
            .webhooks
            .drop_webhook_batches(client_id, partition, 0)
            .await
            .map_err(|e| ApiError::internal(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_with_a_host_and_no_credentials() {
        let public = Destinations::Public;
        assert_eq!(url_problem("https://hooks.example/herald?x=1", public), None);
        assert!(url_problem("http://127.0.0.1:9000/hook", public).unwrap().contains("not a public address"));
        assert!(url_problem("http://169.254.169.254/latest/meta-data", public).is_some());
        assert_eq!(url_problem("http://127.0.0.1:9000/hook", Destinations::Any), None);
        for (url, says) in [
            ("/relative", "absolute"),
            ("hooks.example/x", "absolute"),
            ("ftp://hooks.example/x", "http:// or https://"),
            ("mailto:a@example.com", "http:// or https://"),
            ("https://user:pw@hooks.example/", "credentials"),
            ("https://hooks.example/#part", "fragment"),
        ] {
            let problem = url_problem(url, public).unwrap_or_default();
            assert!(problem.contains(says), "{url}: {problem:?}");
        }
        let long = format!("https://hooks.example/{}", "a".repeat(MAX_URL_BYTES));
        assert!(url_problem(&long, public).unwrap().contains("longer than"));
    }

    #[test]
    fn secrets_are_checked_and_generated_ones_are_long_and_distinct() {
        assert_eq!(secret_problem("0123456789abcdef"), None);
        assert!(secret_problem("short").unwrap().contains("16 to 256"));
        assert!(secret_problem(&"x".repeat(257)).is_some());
        assert!(secret_problem("0123456789abcdef\n").unwrap().contains("control"));
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64 && a != b);
        assert_eq!(secret_problem(&a), None);
    }
}
