//! The channel: the Mail Send request for a job, and the class of each answer.

use super::{SendGridConfig, SendGridConfigError};
use crate::secret::Secret;
use crate::unsubscribe::UnsubscribeLinks;
use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// SendGrid's error body.
#[derive(Debug, Default, Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// Whether an error `field` is a recipient's address (`personalizations.0.to.0.email`, and the
/// same under `cc` and `bcc`).
fn is_recipient_address(field: &str) -> bool {
    let parts: Vec<&str> = field.split('.').collect();
    matches!(parts.as_slice(), ["personalizations", _, "to" | "cc" | "bcc", _, "email"])
}

/// The outcome of one answer: HTTP status, headers (`X-Message-Id`, `Retry-After`,
/// `X-RateLimit-Reset`), body, and now (to turn the rate limit's reset time into a wait).
///
/// 2xx is delivered. A 400 whose every error is on a recipient's `email` ("Does not contain a
/// valid address") is a bad address; any other 400 (the request is wrong), 401 and 403 (the
/// key), 413 (too big) and other 4xx are permanent. 429 waits for `Retry-After`, else until
/// `X-RateLimit-Reset` (epoch seconds); 5xx is retryable.
pub fn classify(status: u16, headers: &HeaderMap, body: &str, now: SystemTime) -> SendOutcome {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if (200..=299).contains(&status) {
        return SendOutcome::Delivered { provider_id: header("x-message-id").map(str::to_string) };
    }
    let errors: Errors = serde_json::from_str(body).unwrap_or_default();
    let first = errors.errors.first();
    let reason = match first {
        Some(error) => format!(
            "http {status} sendgrid{}: {}",
            error.field.as_deref().map(|f| format!(" {f}")).unwrap_or_default(),
            error.message.as_deref().unwrap_or("")
        ),
        None => format!("http {status}"),
    };
    match status {
        429 | 500..=599 => {
            let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
            let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()).map(|reset| {
                let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                // At least a second: the reset is rounded down to whole seconds.
                Duration::from_secs(reset.saturating_sub(now).max(1))
            });
            SendOutcome::Retryable { reason, retry_after: retry_after.or(reset) }
        }
        // Only when the address is all that is wrong: a request also refused for its sender must
        // not mark the recipient dead.
        400 if !errors.errors.is_empty()
            && errors.errors.iter().all(|e| e.field.as_deref().is_some_and(is_recipient_address)) =>
        {
            SendOutcome::BadAddress { reason }
        }
        _ => SendOutcome::Permanent { reason },
    }
}

/// `Name <address>` or `address` as SendGrid's `{email, name}`.
fn parse_from(from: &str) -> Option<Value> {
    let from = from.trim();
    let (name, email) = match from.rsplit_once('<') {
        Some((name, rest)) => (Some(name.trim().trim_matches('"')), rest.strip_suffix('>')?.trim()),
        None => (None, from),
    };
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || email.contains(char::is_whitespace) {
        return None;
    }
    Some(match name.filter(|n| !n.is_empty()) {
        Some(name) => json!({"email": email, "name": name}),
        None => json!({"email": email}),
    })
}

pub struct SendGrid {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    from: Value,
    unsubscribe: Option<Arc<UnsubscribeLinks>>,
    max_concurrency: usize,
    limiter: DefaultDirectRateLimiter,
}

impl SendGrid {
    /// The connector. `unsubscribe` makes the `List-Unsubscribe` links of non-transactional mail.
    pub fn new(
        config: &SendGridConfig,
        unsubscribe: Option<Arc<UnsubscribeLinks>>,
    ) -> Result<SendGrid, SendGridConfigError> {
        let api_key = config.api_key.resolve().map_err(SendGridConfigError::ApiKey)?;
        let from = parse_from(&config.from).ok_or_else(|| SendGridConfigError::From(config.from.clone()))?;
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SendGridConfigError::BaseUrl(config.base_url.clone()));
        }
        // Checked here too, so that a bad key fails at start and not on the first event.
        if let Some(key) = &config.event_webhook_key {
            super::EventWebhookKey::from_base64(key)?;
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .build()
            .map_err(|e| SendGridConfigError::Client(e.to_string()))?;
        Ok(SendGrid {
            client,
            url: format!("{base}/v3/mail/send"),
            api_key,
            from,
            unsubscribe,
            max_concurrency: config.max_concurrency.max(1),
            limiter: RateLimiter::direct(Quota::per_second(config.messages_per_second)),
        })
    }

    /// The Mail Send body for `job`, or why it cannot be one.
    pub fn body(&self, job: &DeliveryJob) -> Result<Value, String> {
        let (Target::Email { address }, RenderedContent::Email { subject, text, html }) = (&job.target, &job.content)
        else {
            return Err("not an email delivery".into());
        };
        // SendGrid refuses an empty content value; plain text goes first, as it requires.
        let content: Vec<Value> = [("text/plain", text), ("text/html", html)]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(kind, value)| json!({"type": kind, "value": value}))
            .collect();
        if content.is_empty() {
            return Err("the email has neither text nor HTML".into());
        }
        let mut body = json!({
            "personalizations": [{
                "to": [{"email": address}],
                "custom_args": {"delivery_id": job.delivery_id.0},
            }],
            "from": self.from,
            "subject": subject,
            "content": content,
            "categories": [job.category],
        });
        if let Some(link) = self.unsubscribe.as_ref().and_then(|links| links.for_job(job)) {
            body["headers"] = json!({
                "List-Unsubscribe": format!("<{link}>"),
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            });
        }
        Ok(body)
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let body = match self.body(job) {
            Ok(body) => body,
            Err(reason) => return SendOutcome::Permanent { reason },
        };
        self.limiter.until_ready().await;
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(self.api_key.expose())
            .header(DELIVERY_ID_HEADER, &job.delivery_id.0)
            .json(&body);
        match crate::channels::exchange(request).await {
            Ok(answer) => classify(answer.status, &answer.headers, &answer.body, SystemTime::now()),
            Err(failed) => failed,
        }
    }
}

#[async_trait]
impl Channel for SendGrid {
    fn name(&self) -> &str {
        "sendgrid"
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let this = &*self;
        Ok(crate::channels::send_each(jobs, this.max_concurrency, |job| this.send_one(job)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretSource;
    use herald_schemas::{DeliveryId, NotificationId};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (reqwest::header::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    fn error(field: &str, message: &str) -> String {
        json!({"errors": [{"message": message, "field": field, "help": null}]}).to_string()
    }

    #[test]
    fn every_answer_has_its_class() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let ok = classify(202, &headers(&[("x-message-id", "abc123")]), "", now);
        assert_eq!(ok, SendOutcome::Delivered { provider_id: Some("abc123".into()) });
        for field in ["personalizations.0.to.0.email", "personalizations.2.cc.1.email"] {
            let bad = classify(400, &HeaderMap::new(), &error(field, "Does not contain a valid address."), now);
            assert_eq!(
                bad,
                SendOutcome::BadAddress {
                    reason: format!("http 400 sendgrid {field}: Does not contain a valid address.")
                }
            );
        }
        let no_from = classify(400, &HeaderMap::new(), &error("from.email", "Does not contain a valid address."), now);
        assert!(matches!(no_from, SendOutcome::Permanent { .. }), "{no_from:?}");
        let both = json!({"errors": [
            {"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"},
            {"message": "Does not contain a valid address.", "field": "from.email"},
        ]});
        let both = classify(400, &HeaderMap::new(), &both.to_string(), now);
        assert!(matches!(both, SendOutcome::Permanent { .. }), "{both:?}");
        for status in [401, 403, 413] {
            let body = json!({"errors": [{"message": "nope"}]}).to_string();
            assert!(matches!(classify(status, &HeaderMap::new(), &body, now), SendOutcome::Permanent { .. }));
        }
        let reset = classify(429, &headers(&[("x-ratelimit-reset", "1007")]), "", now);
        assert_eq!(
            reset,
            SendOutcome::Retryable { reason: "http 429".into(), retry_after: Some(Duration::from_secs(7)) }
        );
        let past = classify(429, &headers(&[("x-ratelimit-reset", "900")]), "", now);
        assert!(matches!(past, SendOutcome::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(1)));
        let both = classify(429, &headers(&[("retry-after", "3"), ("x-ratelimit-reset", "1007")]), "", now);
        assert!(matches!(both, SendOutcome::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(3)));
        assert!(matches!(classify(503, &HeaderMap::new(), "", now), SendOutcome::Retryable { retry_after: None, .. }));
    }

    fn sendgrid(unsubscribe: Option<Arc<UnsubscribeLinks>>) -> SendGrid {
        let config = SendGridConfig::new(SecretSource::Inline("SG.key".into()), "Herald <news@herald.example>");
        SendGrid::new(&config, unsubscribe).unwrap()
    }

    fn job(category: &str, html: &str) -> DeliveryJob {
        DeliveryJob {
            delivery_id: DeliveryId("d-1".into()),
            notification_id: NotificationId("n-1".into()),
            client_id: "c".into(),
            user_id: "u".into(),
            category: category.into(),
            template: "t".into(),
            locale: "en".into(),
            target: Target::Email { address: "ann@example.com".into() },
            content: RenderedContent::Email { subject: "Hi".into(), text: "Hello".into(), html: html.into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        }
    }

    #[test]
    fn the_body_carries_the_delivery_id_category_and_unsubscribe_link() {
        let links = UnsubscribeLinks::new(
            "https://herald.example/v1/unsubscribe",
            &SecretSource::Inline("k".into()).resolve().unwrap(),
        );
        let sendgrid = sendgrid(Some(Arc::new(links)));
        let body = sendgrid.body(&job("marketing", "<p>Hello</p>")).unwrap();
        assert_eq!(body["personalizations"][0]["to"][0]["email"], "ann@example.com");
        assert_eq!(body["personalizations"][0]["custom_args"]["delivery_id"], "d-1");
        assert_eq!(body["from"], json!({"email": "news@herald.example", "name": "Herald"}));
        assert_eq!(body["content"][0]["type"], "text/plain");
        assert_eq!(body["content"][1]["type"], "text/html");
        assert_eq!(body["categories"], json!(["marketing"]));
        let link = body["headers"]["List-Unsubscribe"].as_str().unwrap();
        assert!(link.starts_with("<https://herald.example/v1/unsubscribe?token="), "{link}");
        assert_eq!(body["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");

        let transactional = sendgrid.body(&job("transactional", "")).unwrap();
        assert!(transactional.get("headers").is_none());
        assert_eq!(transactional["content"].as_array().map(Vec::len), Some(1), "an empty HTML part is left out");
    }

    #[test]
    fn the_sender_and_url_are_checked_and_the_key_never_shown() {
        assert_eq!(parse_from("a@b.c"), Some(json!({"email": "a@b.c"})));
        assert_eq!(parse_from("\"A B\" <a@b.c>"), Some(json!({"email": "a@b.c", "name": "A B"})));
        assert_eq!(parse_from("nobody"), None);
        let mut config = SendGridConfig::new(SecretSource::Inline("SG.s3cr3t".into()), "not an address");
        assert!(matches!(SendGrid::new(&config, None), Err(SendGridConfigError::From(_))));
        config.from = "a@b.c".into();
        config.base_url = "api.sendgrid.com".into();
        assert!(matches!(SendGrid::new(&config, None), Err(SendGridConfigError::BaseUrl(_))));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        config.base_url = "https://api.sendgrid.com".into();
        config.event_webhook_key = Some("bm90IGEga2V5".into());
        let error = SendGrid::new(&config, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("providers.sendgrid.event_webhook_key"), "{error}");
    }
}
