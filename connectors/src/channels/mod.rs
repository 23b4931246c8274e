//! Channel connectors, one module per provider (or sink Herald owns).
//!
//! - [`routed`]: one channel over several routes (the push dispatcher's APNs, FCM, Web Push).
//! - [`outbox`]: the file outbox, one JSON line per delivery, exactly once with the ledger.
//! - [`breaker`]: the circuit breaker every provider's channel runs behind.
//! - [`pace`]: a provider's rate limit in messages per second, around any connector.
//! - [`io`]: the runtime every provider exchange runs on, apart from the pipeline's.
//! - [`failover`]: several providers for one route, the next used while the first's breaker is open.
//! - [`sms`]: SMS segment counting, shared by the SMS providers.
//! - [`apns`]: Apple Push Notification service (HTTP/2, token or certificate auth).
//! - [`twilio`]: Twilio Programmable Messaging (SMS).
//! - [`vonage`]: Vonage SMS API (SMS) and its delivery receipts.
//! - [`smtp`]: email over SMTP (lettre).
//! - [`fcm`]: Firebase Cloud Messaging HTTP v1 (Android push).
//! - [`webpush`]: Web Push with VAPID and aes128gcm payload encryption (browser push).
//! - [`sendgrid`]: SendGrid v3 Mail Send (email) and its signed event webhook.

pub mod apns;
pub mod breaker;
pub mod failover;
pub mod fcm;
pub mod io;
pub mod outbox;
pub mod pace;
pub mod routed;
pub mod sendgrid;
pub mod sms;
pub mod smtp;
pub mod twilio;
pub mod vonage;
pub mod webpush;

use futures_util::StreamExt;
use herald_schemas::DeliveryJob;
use herald_schemas::channel::SendOutcome;
use std::future::Future;

/// Sends each job with `send_one`, at most `limit` at a time, and returns the outcomes in job
/// order. Unordered underneath, so one slow request does not hold the slots of those that
/// finished after it.
pub async fn send_each<'a, F, Fut>(jobs: &'a [DeliveryJob], limit: usize, send_one: F) -> Vec<SendOutcome>
where
    F: Fn(&'a DeliveryJob) -> Fut,
    Fut: Future<Output = SendOutcome> + Send + 'a,
{
    let sends: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let send = send_one(job);
            Box::pin(async move { (i, send.await) })
        })
        .collect();
    let mut done: Vec<(usize, SendOutcome)> =
        futures_util::stream::iter(sends).buffer_unordered(limit.max(1)).collect().await;
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, outcome)| outcome).collect()
}

/// A provider's HTTP answer, read whole.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a provider request and reads its answer, on the [`io`] runtime (so a stall of the
/// pipeline's runtime cannot expire the request's timer). A timeout or a transport failure
/// (refused, reset, TLS) is the retryable outcome every HTTP connector gives it.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<HttpAnswer, SendOutcome> {
    io::run(async move {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.text().await.unwrap_or_default();
                Ok(HttpAnswer { status, headers, body })
            }
            Err(error) => {
                let kind = if error.is_timeout() { "timeout" } else { "transport" };
                Err(SendOutcome::Retryable { reason: format!("{kind}: {error}"), retry_after: None })
            }
        }
    })
    .await
}
