//! The Web Push channel: encryption and signing per subscription, sends, and the classification
//! of push services' answers.

use super::WebPushConfigError;
use super::config::WebPushConfig;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use std::time::Duration;
use web_push::{
    ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, Urgency, WebPushError, WebPushMessage,
    WebPushMessageBuilder,
};

/// The outcome of one answer from a push service: HTTP status, `Retry-After` and `Location`
/// headers, body (for the reason).
pub fn classify(status: u16, retry_after: Option<&str>, location: Option<&str>, body: &str) -> SendOutcome {
    let reason = match body.trim() {
        "" => format!("http {status}"),
        text => format!("http {status}: {}", text.chars().take(200).collect::<String>()),
    };
    match status {
        200..=202 => SendOutcome::Delivered { provider_id: location.map(str::to_string) },
        404 | 410 => SendOutcome::BadAddress { reason },
        429 | 500..=599 => SendOutcome::Retryable { reason, retry_after: retry_after.and_then(parse_retry_after) },
        _ => SendOutcome::Permanent { reason },
    }
}

/// `Retry-After` in seconds.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The origin of an endpoint (scheme, host and port), the `aud` a push service expects.
fn origin(endpoint: &str) -> Option<String> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

/// Sends to browsers through their push services.
pub struct WebPush {
    client: reqwest::Client,
    signer: PartialVapidSignatureBuilder,
    subject: String,
    ttl: u32,
    max_concurrency: usize,
}

impl WebPush {
    /// Checks the configuration and builds the HTTP client; sends nothing.
    pub fn new(config: &WebPushConfig) -> Result<WebPush, WebPushConfigError> {
        let signer = config.vapid_signer()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| WebPushConfigError::Client(e.to_string()))?;
        Ok(WebPush {
            client,
            signer,
            subject: config.subject.clone(),
            ttl: u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX),
            max_concurrency: config.max_concurrency.max(1),
        })
    }

    /// The encrypted, signed message for one subscription, or the outcome that ends the send.
    fn build(&self, job: &DeliveryJob, subscription: &str, payload: &[u8]) -> Result<WebPushMessage, SendOutcome> {
        let info: SubscriptionInfo = serde_json::from_str(subscription)
            .map_err(|e| SendOutcome::BadAddress { reason: format!("not a push subscription: {e}") })?;
        let audience = origin(&info.endpoint).ok_or_else(|| SendOutcome::BadAddress {
            reason: "the subscription endpoint is not an http(s) URL".into(),
        })?;
        let mut vapid = self.signer.clone().add_sub_info(&info);
        vapid.add_claim("sub", self.subject.as_str());
        vapid.add_claim("aud", audience);
        let signature = vapid.build().map_err(|e| SendOutcome::Permanent { reason: format!("vapid signing: {e}") })?;
        let mut message = WebPushMessageBuilder::new(&info);
        let left =
            job.provider_ttl(herald_schemas::stage::now_ms(), std::time::Duration::from_secs(u64::from(self.ttl)));
        message.set_ttl(u32::try_from(left.as_secs()).unwrap_or(self.ttl));
        message.set_urgency(if job.category == "transactional" { Urgency::High } else { Urgency::Normal });
        message.set_vapid_signature(signature);
        message.set_payload(ContentEncoding::Aes128Gcm, payload);
        message.build().map_err(|error| match error {
            WebPushError::InvalidCryptoKeys | WebPushError::MissingCryptoKeys | WebPushError::InvalidUri => {
                SendOutcome::BadAddress { reason: format!("unusable push subscription: {error}") }
            }
            other => SendOutcome::Permanent { reason: format!("web push message: {other}") },
        })
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let (Target::Device { token: subscription, .. }, RenderedContent::Push { title, body }) =
            (&job.target, &job.content)
        else {
            return SendOutcome::Permanent { reason: "not a push delivery".into() };
        };
        let payload = serde_json::json!({ "title": title, "body": body, "delivery_id": job.delivery_id.0 }).to_string();
        let message = match self.build(job, subscription, payload.as_bytes()) {
            Ok(message) => message,
            Err(outcome) => return outcome,
        };
        let mut request = self
            .client
            .post(message.endpoint.to_string())
            .header("TTL", message.ttl.to_string())
            .header(DELIVERY_ID_HEADER, &job.delivery_id.0);
        if let Some(urgency) = message.urgency {
            request = request.header("Urgency", urgency.to_string());
        }
        if let Some(payload) = message.payload {
            request = request
                .header(reqwest::header::CONTENT_ENCODING, payload.content_encoding.to_str())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
            for (name, value) in payload.crypto_headers {
                request = request.header(name, value);
            }
            request = request.body(payload.content);
        }
        match crate::channels::exchange(request).await {
            Ok(a) => {
                classify(a.status, a.header(reqwest::header::RETRY_AFTER), a.header(reqwest::header::LOCATION), &a.body)
            }
            Err(failed) => failed,
        }
    }
}

#[async_trait]
impl Channel for WebPush {
    fn name(&self) -> &str {
        "webpush"
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let this = &*self;
        Ok(super::super::send_each(jobs, this.max_concurrency, |job| this.send_one(job)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretSource;

    #[test]
    fn every_answer_has_its_class() {
        for status in [200, 201, 202] {
            assert_eq!(
                classify(status, None, Some("https://push.example/m/1"), ""),
                SendOutcome::Delivered { provider_id: Some("https://push.example/m/1".into()) }
            );
        }
        for status in [404, 410] {
            assert!(matches!(classify(status, None, None, "gone"), SendOutcome::BadAddress { .. }), "{status}");
        }
        assert!(matches!(classify(413, None, None, ""), SendOutcome::Permanent { .. }));
        assert_eq!(
            classify(429, Some("3"), None, ""),
            SendOutcome::Retryable { reason: "http 429".into(), retry_after: Some(Duration::from_secs(3)) }
        );
        assert!(matches!(classify(503, None, None, ""), SendOutcome::Retryable { retry_after: None, .. }));
        assert!(matches!(classify(500, None, None, ""), SendOutcome::Retryable { .. }));
        for status in [400, 401, 403] {
            assert!(matches!(classify(status, None, None, "no"), SendOutcome::Permanent { .. }), "{status}");
        }
    }

    #[test]
    fn the_audience_is_the_endpoint_origin_with_its_port() {
        assert_eq!(origin("http://127.0.0.1:8080/webpush/a").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin("https://fcm.googleapis.com/fcm/send/x").as_deref(), Some("https://fcm.googleapis.com"));
        assert_eq!(origin("ftp://x/y"), None);
        assert_eq!(origin("not a url"), None);
    }

    #[test]
    fn a_bad_key_or_subject_is_a_config_error_naming_the_field() {
        let bad_key = WebPushConfig::new(SecretSource::Inline("not-a-key".into()), "mailto:ops@example.com");
        let err = WebPush::new(&bad_key).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("providers.webpush.vapid_private_key: "), "{err}");
        let key = SecretSource::Inline("IQ9Ur0ykXoHS9gzfYX0aBjy9lvdrjx_PFUXmie9YRcY".into());
        let bad_subject = WebPushConfig::new(key.clone(), "ops@example.com");
        let err = WebPush::new(&bad_subject).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("providers.webpush.subject "), "{err}");
        assert!(WebPush::new(&WebPushConfig::new(key, "mailto:ops@example.com")).is_ok());
        assert!(!format!("{bad_key:?}").contains("not-a-key"));
    }
}
