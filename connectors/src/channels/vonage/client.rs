//! The channel: one request per message, and the class of each answer.

use super::{VonageConfig, VonageConfigError};
use crate::channels::sms::{Encoding, SegmentPacer, Segments, segments};
use crate::secret::Secret;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use serde::Deserialize;
use std::time::Duration;

/// Vonage's answer to `POST /sms/json`: one entry per message part.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    messages: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

/// The outcome of one answer: HTTP status, `Retry-After` header, body.
///
/// Vonage answers HTTP 200 and puts the result in each part's `status`:
/// - `0` accepted: delivered (the first part's `message-id` kept; a DLR names each part).
/// - `1` Throttled and `5` Internal Error: retryable (too fast for the account; Vonage's fault).
/// - `3` Invalid Parameters is a bad address when its `error-text` is about the `to` number
///   (Vonage's "invalid to address": the number can never take an SMS), else permanent (another
///   parameter is wrong, which retrying does not fix).
/// - `6` Invalid Message: a bad address; Vonage could not route the number (an unknown prefix),
///   which no retry changes.
/// - `7` Number Barred: a bad address; the number is on Vonage's or the carrier's blocklist.
/// - `2` Missing Parameters, `4` Invalid Credentials, `8` Partner Account Barred, `9` Partner
///   Quota Violation (out of credit), `15` Invalid Sender Address, `29` Non-Whitelisted
///   Destination (a trial account) and any other code: permanent, a fault of Herald's request or
///   the account that every message would hit until someone fixes it.
///
/// A message split into parts is classified by its first failed part.
pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> SendOutcome {
    match status {
        429 | 500..=599 => {
            return SendOutcome::Retryable {
                reason: format!("http {status}"),
                retry_after: retry_after.and_then(parse_retry_after),
            };
        }
        200..=299 => {}
        _ => return SendOutcome::Permanent { reason: format!("http {status}") },
    }
    let answer: Answer = match serde_json::from_str(body) {
        Ok(answer) => answer,
        Err(error) => {
            return SendOutcome::Retryable { reason: format!("unreadable answer: {error}"), retry_after: None };
        }
    };
    let Some(first) = answer.messages.first() else {
        return SendOutcome::Retryable { reason: "answer without messages".into(), retry_after: None };
    };
    let Some(failed) = answer.messages.iter().find(|part| part.status != "0") else {
        return SendOutcome::Delivered { provider_id: first.message_id.clone() };
    };
    let text = failed.error_text.as_deref().unwrap_or("");
    let reason = format!("vonage {}: {text}", failed.status);
    match failed.status.as_str() {
        "1" | "5" => SendOutcome::Retryable { reason, retry_after: None },
        "3" if is_about_the_number(text) => SendOutcome::BadAddress { reason },
        "6" | "7" => SendOutcome::BadAddress { reason },
        _ => SendOutcome::Permanent { reason },
    }
}

/// Whether an error text names the recipient (`Invalid to address`, `invalid number`).
fn is_about_the_number(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| ["to", "number", "msisdn", "destination"].iter().any(|w| word.eq_ignore_ascii_case(w)))
}

/// `Retry-After` in seconds.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A request's form fields.
type Form<'a> = Vec<(&'static str, &'a str)>;

pub struct Vonage {
    client: reqwest::Client,
    url: String,
    api_key: String,
    api_secret: Secret,
    from: String,
    callback: Option<String>,
    max_concurrency: usize,
    pacer: SegmentPacer,
}

impl Vonage {
    pub fn new(config: &VonageConfig) -> Result<Vonage, VonageConfigError> {
        let api_secret = config.api_secret.resolve().map_err(VonageConfigError::ApiSecret)?;
        if config.api_key.trim().is_empty() {
            return Err(VonageConfigError::ApiKey);
        }
        // Checked here too, so that a bad secret fails at start and not on the first receipt.
        config.receipt_verifier()?;
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(VonageConfigError::BaseUrl(config.base_url.clone()));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .build()
            .map_err(|e| VonageConfigError::Client(e.to_string()))?;
        Ok(Vonage {
            client,
            url: format!("{base}/sms/json"),
            api_key: config.api_key.clone(),
            api_secret,
            from: config.from.trim_start_matches('+').to_string(),
            callback: config.callback.clone(),
            max_concurrency: config.max_concurrency.max(1),
            pacer: SegmentPacer::new(config.segments_per_second),
        })
    }

    /// The request's form for `job` and what the message costs, or why it is not an SMS.
    fn form<'a>(&'a self, job: &'a DeliveryJob) -> Result<(Form<'a>, Segments), String> {
        let (Target::Phone { number }, RenderedContent::Sms { text }) = (&job.target, &job.content) else {
            return Err("not an SMS delivery".into());
        };
        let cost = segments(text);
        let mut form = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose()),
            ("from", self.from.as_str()),
            // Vonage takes E.164 without the `+`.
            ("to", number.trim_start_matches('+')),
            ("text", text.as_str()),
            ("client-ref", job.delivery_id.0.as_str()),
        ];
        if cost.encoding == Encoding::Ucs2 {
            form.push(("type", "unicode"));
        }
        if let Some(callback) = &self.callback {
            form.push(("callback", callback));
        }
        Ok((form, cost))
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let (form, cost) = match self.form(job) {
            Ok(form) => form,
            Err(reason) => return SendOutcome::Permanent { reason },
        };
        self.pacer.wait(cost).await;
        let request = self.client.post(&self.url).header(DELIVERY_ID_HEADER, &job.delivery_id.0).form(&form);
        match crate::channels::exchange(request).await {
            Ok(answer) => classify(answer.status, answer.header(reqwest::header::RETRY_AFTER), &answer.body),
            Err(failed) => failed,
        }
    }
}

#[async_trait]
impl Channel for Vonage {
    fn name(&self) -> &str {
        "vonage"
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

    fn answer(status: &str, text: &str) -> String {
        format!(r#"{{"message-count":"1","messages":[{{"status":"{status}","error-text":"{text}"}}]}}"#)
    }

    #[test]
    fn accepted_parts_are_delivered_with_the_first_message_id() {
        let body = r#"{"message-count":"2","messages":[
            {"to":"447700900000","message-id":"0A0000000123ABCD1","status":"0","remaining-balance":"3.14"},
            {"to":"447700900000","message-id":"0A0000000123ABCD2","status":"0"}]}"#;
        assert_eq!(classify(200, None, body), SendOutcome::Delivered { provider_id: Some("0A0000000123ABCD1".into()) });
    }

    #[test]
    fn every_status_has_its_class() {
        for status in ["1", "5"] {
            assert!(matches!(classify(200, None, &answer(status, "x")), SendOutcome::Retryable { .. }), "{status}");
        }
        for status in ["2", "4", "8", "9", "15", "29", "99"] {
            assert!(matches!(classify(200, None, &answer(status, "x")), SendOutcome::Permanent { .. }), "{status}");
        }
        for (status, text) in [("3", "Invalid to address"), ("3", "invalid number"), ("6", "Unroutable"), ("7", "x")] {
            let outcome = classify(200, None, &answer(status, text));
            assert_eq!(outcome, SendOutcome::BadAddress { reason: format!("vonage {status}: {text}") });
        }
        // Status 3 about another parameter is the request's fault, not the number's.
        let other = classify(200, None, &answer("3", "Invalid value for parameter: ttl"));
        assert!(matches!(other, SendOutcome::Permanent { .. }), "{other:?}");
        // The first failed part decides.
        let mixed = r#"{"message-count":"2","messages":[{"status":"0","message-id":"a"},{"status":"1"}]}"#;
        assert!(matches!(classify(200, None, mixed), SendOutcome::Retryable { .. }));
    }

    #[test]
    fn http_failures_are_retryable_with_retry_after() {
        assert_eq!(
            classify(429, Some("3"), ""),
            SendOutcome::Retryable { reason: "http 429".into(), retry_after: Some(Duration::from_secs(3)) }
        );
        assert!(matches!(classify(503, None, "<html>"), SendOutcome::Retryable { retry_after: None, .. }));
        assert!(matches!(classify(401, None, ""), SendOutcome::Permanent { .. }));
        assert!(matches!(classify(200, None, "not json"), SendOutcome::Retryable { .. }));
    }

    #[test]
    fn the_form_names_the_delivery_and_marks_ucs2_text_unicode() {
        let mut config = VonageConfig::new("key", SecretSource::Inline("secret".into()), "+15550001");
        config.callback = Some("https://herald.example/v1/receipts/vonage".into());
        let vonage = Vonage::new(&config).unwrap();
        let job = |text: &str| DeliveryJob {
            delivery_id: herald_schemas::DeliveryId("n-1.abc".into()),
            notification_id: herald_schemas::NotificationId("n-1".into()),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "transactional".into(),
            template: "t".into(),
            locale: "en".into(),
            target: Target::Phone { number: "+447700900000".into() },
            content: RenderedContent::Sms { text: text.into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        };
        let plain = job("Your code is 1234");
        let (form, cost) = vonage.form(&plain).unwrap();
        let field =
            |form: &[(&str, &str)], name: &str| form.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        assert_eq!(cost.encoding, Encoding::Gsm7);
        assert_eq!(field(&form, "to").as_deref(), Some("447700900000"));
        assert_eq!(field(&form, "from").as_deref(), Some("15550001"));
        assert_eq!(field(&form, "client-ref").as_deref(), Some("n-1.abc"));
        assert_eq!(field(&form, "callback").as_deref(), Some("https://herald.example/v1/receipts/vonage"));
        assert_eq!(field(&form, "type"), None);
        let cyrillic = job("Ваш код 1234");
        let (form, cost) = vonage.form(&cyrillic).unwrap();
        assert_eq!((cost.encoding, field(&form, "type").as_deref()), (Encoding::Ucs2, Some("unicode")));
    }

    #[test]
    fn a_url_without_a_scheme_is_refused_and_the_secret_is_never_shown() {
        let mut config = VonageConfig::new("key", SecretSource::Inline("s3cr3t-value".into()), "Herald");
        config.base_url = "rest.nexmo.com".into();
        assert!(matches!(Vonage::new(&config), Err(VonageConfigError::BaseUrl(_))));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        config.base_url = "https://rest.nexmo.com".into();
        config.api_secret = SecretSource::Inline(String::new());
        let error = Vonage::new(&config).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("providers.vonage.api_secret"), "{error}");
    }
}
