//! The HTTP side of status webhooks: POSTs one batch ([`herald_schemas::webhook::WebhookBatch`])
//! to a client's URL, signed for that attempt, and says how it went.
//!
//! # Promises
//! - Every attempt carries `Herald-Webhook-Id`, `Herald-Signature` (recomputed with the attempt's
//!   time) and `Content-Type: application/json`, and the batch's body byte for byte.
//! - Only a 2xx is a success. Redirects are not followed (a POST turned into a GET would "succeed"
//!   without the receiver seeing the batch): a 3xx is a failure like any other status.
//! - The exchange runs on the provider runtime ([`crate::channels::io`]), so a stall of the
//!   pipeline's runtime cannot turn a delivered batch into a timeout.
//! - Errors never carry the URL (a receiver's URL can itself be a credential), nor the secret.

use crate::channels::io;
use herald_schemas::webhook::{ID_HEADER, SIGNATURE_HEADER, signature_header};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use std::time::Duration;

/// Why an attempt failed. Every failure is retried (with backoff) until the batch is too old:
/// a receiver that answers 4xx today may be fixed tomorrow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The receiver's (or the network's): no answer within the request timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The receiver's: nothing listens, or the name does not resolve, or TLS failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The receiver's: it answered, but not 2xx. `retry_after` from a 429 or 503.
    #[error("HTTP {status}")]
    Status { status: u16, retry_after: Option<Duration> },
    /// The network's: the connection broke during the exchange.
    #[error("request failed: {0}")]
    Transport(String),
    /// Ours: the client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl WebhookError {
    /// A bounded label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            WebhookError::Timeout(_) => "timeout",
            WebhookError::Connect(_) => "connect",
            WebhookError::Status { status: 429, .. } => "http_429",
            WebhookError::Status { status: 300..=399, .. } => "http_3xx",
            WebhookError::Status { status: 400..=499, .. } => "http_4xx",
            WebhookError::Status { .. } => "http_5xx",
            WebhookError::Transport(_) => "transport",
            WebhookError::Client(_) => "client",
        }
    }

    /// The wait the receiver asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            WebhookError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One POST of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub batch_id: &'a str,
    pub body: &'a [u8],
    /// The attempt's time (Unix seconds): the signature's `t`.
    pub unix_seconds: u64,
}

/// Sends batches; one per process, shared by every client's sender (one connection pool).
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl WebhookClient {
    pub fn new(timeout: Duration) -> Result<WebhookClient, WebhookError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        Ok(WebhookClient { http, timeout })
    }

    /// POSTs the batch once; `Ok` with the 2xx status.
    pub async fn send(&self, attempt: Attempt<'_>) -> Result<u16, WebhookError> {
        let request = self
            .http
            .post(attempt.url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .header(ID_HEADER, attempt.batch_id)
            .header(SIGNATURE_HEADER, signature_header(attempt.secret, attempt.unix_seconds, attempt.body))
            .body(attempt.body.to_vec());
        let timeout = self.timeout;
        io::run(async move {
            let response = request.send().await.map_err(|e| classify(&e, timeout))?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(seconds);
            // Read the answer so the connection goes back to the pool; its content is not used.
            let _ = response.bytes().await;
            if (200..300).contains(&status) { Ok(status) } else { Err(WebhookError::Status { status, retry_after }) }
        })
        .await
    }
}

fn classify(error: &reqwest::Error, timeout: Duration) -> WebhookError {
    if error.is_timeout() {
        return WebhookError::Timeout(timeout);
    }
    let text = error_chain(error);
    if error.is_connect() || error.is_builder() { WebhookError::Connect(text) } else { WebhookError::Transport(text) }
}

/// The error and its causes, without the URL.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.is_empty() { "no detail".to_string() } else { text }
}

/// `Retry-After` in seconds (an HTTP date is ignored: the backoff applies).
fn seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::webhook::verify_signature;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-request-at-a-time HTTP/1.1 server answering each request with the next of `answers`
    /// and keeping what it read.
    async fn server(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length || n == 0 {
                            break;
                        }
                    } else if n == 0 {
                        break;
                    }
                }
                store.lock().unwrap().push(String::from_utf8_lossy(&request).to_string());
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, seen)
    }

    fn attempt<'a>(url: &'a str, body: &'a [u8]) -> Attempt<'a> {
        Attempt { url, secret: "whsec_k", batch_id: "whb_1", body, unix_seconds: 1_700_000_000 }
    }

    #[tokio::test]
    async fn a_2xx_is_a_success_and_the_request_is_signed() {
        let (url, seen) = server(vec!["HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]).await;
        let client = WebhookClient::new(Duration::from_secs(5)).unwrap();
        let body = br#"{"id":"whb_1","client_id":"c","events":[]}"#;
        assert_eq!(client.send(attempt(&url, body)).await, Ok(204));
        let request = seen.lock().unwrap()[0].clone();
        let header = |name: &str| {
            request.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("herald-webhook-id").as_deref(), Some("whb_1"));
        let signature = header("herald-signature").unwrap();
        assert!(request.ends_with(std::str::from_utf8(body).unwrap()));
        assert_eq!(verify_signature("whsec_k", &signature, body, 1_700_000_000, 300), Ok(()));
    }

    #[tokio::test]
    async fn refusals_redirects_timeouts_and_closed_ports_are_classified() {
        let (url, _) = server(vec![
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let client = WebhookClient::new(Duration::from_secs(5)).unwrap();
        let refused = client.send(attempt(&url, b"{}")).await.unwrap_err();
        assert_eq!(refused, WebhookError::Status { status: 503, retry_after: Some(Duration::from_secs(7)) });
        assert_eq!((refused.class(), refused.retry_after()), ("http_5xx", Some(Duration::from_secs(7))));
        assert_eq!(client.send(attempt(&url, b"{}")).await.unwrap_err().class(), "http_3xx");
        assert_eq!(client.send(attempt(&url, b"{}")).await.unwrap_err().class(), "http_4xx");

        // A listener that never answers: the request times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}/", silent.local_addr().unwrap());
        let quick = WebhookClient::new(Duration::from_millis(200)).unwrap();
        assert_eq!(quick.send(attempt(&silent_url, b"{}")).await.unwrap_err().class(), "timeout");

        // Nothing listens: a connect error, which names no URL.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let closed_url = format!("http://{closed}/secret-path-token");
        let error = client.send(attempt(&closed_url, b"{}")).await.unwrap_err();
        assert_eq!(error.class(), "connect", "{error}");
        assert!(!error.to_string().contains("secret-path-token"), "{error}");
        drop(silent);
    }
}
