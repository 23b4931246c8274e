//! The HTTP API as the tests call it.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Longest pause a `Retry-After` may impose on a test between two tries.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// How long one batch may keep getting `503` before the test fails.
const OVERLOAD_PATIENCE: Duration = Duration::from_secs(120);

/// A client of one server with one key (or none).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A response read whole: status, headers, body as text and (if it parses) as JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// `Value::Null` when the body is not JSON.
    pub json: Value,
}

impl Reply {
    /// Fails the test unless the status is `status`; `what` names the call for the message.
    #[track_caller]
    pub fn expect(self, status: u16, what: &str) -> Self {
        assert_eq!(self.status.as_u16(), status, "{what}: expected HTTP {status}, got {}: {}", self.status, self.text);
        self
    }

    /// Asserts an error reply: `status` and the body `{"error":{"code":"…","message":"…"}}`.
    #[track_caller]
    pub fn expect_error(self, status: u16, what: &str) -> Self {
        let reply = self.expect(status, what);
        let code = reply.json.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
        let message = reply.json.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
        assert!(
            !code.is_empty() && !message.is_empty(),
            "{what}: an error body must be {{\"error\":{{\"code\":\"…\",\"message\":\"…\"}}}}, got {}",
            reply.text
        );
        reply
    }

    pub fn error_message(&self) -> &str {
        self.json.pointer("/error/message").and_then(Value::as_str).unwrap_or("")
    }

    /// `Retry-After` in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }
}

impl Api {
    pub fn new(base: &str, key: Option<&str>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build the HTTP client");
        Self { http, base: base.trim_end_matches('/').to_string(), key: key.map(str::to_string) }
    }

    /// The same server with another key (or none).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self { http: self.http.clone(), base: self.base.clone(), key: key.map(str::to_string) }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` carrying the key as `Authorization: Bearer`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    /// Sends and reads the reply; a transport error is returned, not a panic.
    pub async fn try_send(&self, rb: RequestBuilder) -> Result<Reply, reqwest::Error> {
        let resp = rb.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, headers, text, json })
    }

    /// Sends and reads the reply; a transport error fails the test.
    pub async fn send(&self, rb: RequestBuilder) -> Reply {
        self.try_send(rb).await.unwrap_or_else(|e| panic!("request to {} failed: {e}", self.base))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn put_user(&self, user_id: &str, body: &Value) -> Reply {
        self.send(self.request(Method::PUT, &format!("/v1/users/{user_id}")).json(body)).await
    }

    pub async fn post_template(&self, body: &Value) -> Reply {
        self.send(self.request(Method::POST, "/v1/templates").json(body)).await
    }

    pub async fn create_key(&self, client_id: &str, scopes: &[&str]) -> Reply {
        let body = json!({ "client_id": client_id, "scopes": scopes });
        self.send(self.request(Method::POST, "/v1/keys").json(&body)).await
    }

    pub async fn timeline(&self, notification_id: &str) -> Reply {
        self.get(&format!("/v1/notifications/{notification_id}")).await
    }

    /// `POST /v1/notifications` with these items; transport errors are returned.
    pub async fn try_submit(&self, items: &[Value]) -> Result<Reply, reqwest::Error> {
        let body = json!({ "notifications": items });
        self.try_send(self.request(Method::POST, "/v1/notifications").json(&body)).await
    }

    /// Submits one batch, waiting out `503` + `Retry-After`, and returns the per-item results
    /// (as many as items, in request order). Any other status fails the test.
    pub async fn submit(&self, items: &[Value]) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let reply = self.try_submit(items).await.unwrap_or_else(|e| panic!("submit to {}: {e}", self.base));
            if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                let pause = overload_pause(&reply);
                assert!(
                    started.elapsed() < OVERLOAD_PATIENCE,
                    "the server answered 503 to one batch for {OVERLOAD_PATIENCE:?}: {}",
                    reply.text
                );
                tokio::time::sleep(pause).await;
                continue;
            }
            return batch_results(&reply.expect(202, "POST /v1/notifications"), items.len());
        }
    }

    /// Submits `items` in batches of `batch` and returns the notification id of each item, in
    /// order. Every item must be accepted.
    pub async fn submit_all(&self, items: &[Value], batch: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(items.len());
        for (n, chunk) in items.chunks(batch).enumerate() {
            for (i, result) in self.submit(chunk).await.iter().enumerate() {
                ids.push(accepted_id(result).unwrap_or_else(|| {
                    panic!("item {} (batch {n}) was not accepted: {result}\nitem: {}", n * batch + i, chunk[i])
                }));
            }
        }
        ids
    }
}

impl Api {
    /// Like [`Api::submit_all`], with up to `in_flight` batches submitted at once (so requests of
    /// one user may be accepted out of order).
    pub async fn submit_all_concurrently(&self, items: &[Value], batch: usize, in_flight: usize) -> Vec<String> {
        let mut ids = vec![String::new(); items.len()];
        let mut tasks = tokio::task::JoinSet::new();
        let mut chunks = items.chunks(batch).enumerate();
        loop {
            while tasks.len() < in_flight {
                let Some((n, chunk)) = chunks.next() else { break };
                let (api, chunk) = (self.clone(), chunk.to_vec());
                tasks.spawn(async move { (n, api.submit_all(&chunk, chunk.len()).await) });
            }
            let Some(done) = tasks.join_next().await else { break };
            let (n, chunk_ids) = done.expect("a submitting task panicked");
            ids[n * batch..n * batch + chunk_ids.len()].clone_from_slice(&chunk_ids);
        }
        ids
    }
}

/// How long to wait after a `503`: its `Retry-After` (capped), which the contract requires.
#[track_caller]
pub fn overload_pause(reply: &Reply) -> Duration {
    let after = reply
        .retry_after()
        .unwrap_or_else(|| panic!("503 must carry a numeric Retry-After header, headers were {:?}", reply.headers));
    after.clamp(Duration::from_millis(50), MAX_RETRY_PAUSE)
}

/// The `results` array of a `202` reply, checked to hold one result per item.
#[track_caller]
pub fn batch_results(reply: &Reply, items: usize) -> Vec<Value> {
    let results = reply
        .json
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("a 202 reply must be {{\"results\":[…]}}, got {}", reply.text));
    assert_eq!(results.len(), items, "one result per submitted item, in request order: {}", reply.text);
    results.clone()
}

/// The notification id of an accepted result, `None` for anything else.
pub fn accepted_id(result: &Value) -> Option<String> {
    if result.get("status").and_then(Value::as_str) != Some("accepted") {
        return None;
    }
    result.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()).map(str::to_string)
}
