//! Twilio Programmable Messaging: one `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`
//! per SMS (form fields `To`, `From`, `Body`, and `StatusCallback` when configured), HTTP basic
//! auth with the account SID and auth token.
//!
//! - **Pacing**: a token bucket per sender counted in segments ([`super::sms::segments`]), since
//!   carriers and Twilio meter a long number in segments per second ([`SegmentPacer`]); and at most
//!   `max_concurrency` requests in flight.
//! - **Results** ([`classify`]): 2xx is delivered (Twilio's message SID kept); 429 and 5xx,
//!   timeouts and connection failures are retryable (429's `Retry-After` honoured); Twilio's
//!   invalid-number errors (21211 invalid `To`, 21614 not a mobile number, 21610 recipient
//!   unsubscribed with STOP) are a bad address; any other 4xx is permanent.
//! - The delivery id travels in the [`DELIVERY_ID_HEADER`] header, which the provider sandbox
//!   reads to count duplicates (Twilio ignores it).

pub mod receipt;

use super::sms::{SegmentPacer, segments};
use crate::secret::{Secret, SecretError, SecretSource};
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// `[providers.twilio]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: SecretSource,
    /// The sending number (E.164) or messaging service SID.
    pub from: String,
    /// `https://api.twilio.com`; point it at the sandbox for tests (`http://` is cleartext).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// The sender's rate, in segments per second (a short code's; a long code is about 1).
    #[serde(default = "default_segments_per_second")]
    pub segments_per_second: NonZeroU32,
    /// Herald's public `POST /v1/receipts/twilio` address, if Twilio should report delivery status;
    /// each message gets `?delivery=<id>` added ([`receipt::callback_url`]).
    #[serde(default)]
    pub status_callback: Option<String>,
}

fn default_base_url() -> String {
    "https://api.twilio.com".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    32
}
fn default_segments_per_second() -> NonZeroU32 {
    NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN)
}

#[derive(Debug, thiserror::Error)]
pub enum TwilioConfigError {
    #[error("providers.twilio.auth_token: {0}")]
    Token(#[from] SecretError),
    #[error("providers.twilio.base_url {0:?}: use an http:// or https:// URL")]
    BaseUrl(String),
    #[error("providers.twilio: cannot build the HTTP client: {0}")]
    Client(String),
}

/// Twilio error codes that mean the number will never take an SMS.
const BAD_NUMBER_CODES: [u64; 3] = [21211, 21614, 21610];

/// The outcome of one answer: HTTP status, `Retry-After` header, body.
pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> SendOutcome {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = json.get("code").and_then(serde_json::Value::as_u64);
    let message = json.get("message").and_then(serde_json::Value::as_str).unwrap_or("");
    let reason = match code {
        Some(code) => format!("http {status} twilio {code}: {message}"),
        None => format!("http {status}"),
    };
    match status {
        200..=299 => {
            SendOutcome::Delivered { provider_id: json.get("sid").and_then(|s| s.as_str()).map(str::to_string) }
        }
        429 => SendOutcome::Retryable { reason, retry_after: retry_after.and_then(parse_retry_after) },
        500..=599 => SendOutcome::Retryable { reason, retry_after: retry_after.and_then(parse_retry_after) },
        _ if code.is_some_and(|c| BAD_NUMBER_CODES.contains(&c)) => SendOutcome::BadAddress { reason },
        _ => SendOutcome::Permanent { reason },
    }
}

/// `Retry-After` in seconds (the form Twilio sends).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    token: Secret,
    from: String,
    status_callback: Option<String>,
    max_concurrency: usize,
    pacer: SegmentPacer,
}

impl Twilio {
    pub fn new(config: &TwilioConfig) -> Result<Twilio, TwilioConfigError> {
        let token = config.auth_token.resolve()?;
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TwilioConfigError::BaseUrl(config.base_url.clone()));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .build()
            .map_err(|e| TwilioConfigError::Client(e.to_string()))?;
        Ok(Twilio {
            client,
            url: format!("{base}/2010-04-01/Accounts/{}/Messages.json", config.account_sid),
            account_sid: config.account_sid.clone(),
            token,
            from: config.from.clone(),
            status_callback: config.status_callback.clone(),
            max_concurrency: config.max_concurrency.max(1),
            pacer: SegmentPacer::new(config.segments_per_second),
        })
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let (Target::Phone { number }, RenderedContent::Sms { text }) = (&job.target, &job.content) else {
            return SendOutcome::Permanent { reason: "not an SMS delivery".into() };
        };
        self.pacer.wait(segments(text)).await;
        let mut form = vec![("To", number.as_str()), ("From", self.from.as_str()), ("Body", text.as_str())];
        let callback = self.status_callback.as_deref().map(|base| receipt::callback_url(base, &job.delivery_id));
        if let Some(callback) = &callback {
            form.push(("StatusCallback", callback));
        }
        let request = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.token.expose()))
            .header(DELIVERY_ID_HEADER, &job.delivery_id.0)
            .form(&form);
        match super::exchange(request).await {
            Ok(answer) => classify(answer.status, answer.header(reqwest::header::RETRY_AFTER), &answer.body),
            Err(failed) => failed,
        }
    }
}

#[async_trait]
impl Channel for Twilio {
    fn name(&self) -> &str {
        "twilio"
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let this = &*self;
        Ok(super::send_each(jobs, this.max_concurrency, |job| this.send_one(job)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_its_class() {
        let ok = classify(201, None, r#"{"sid":"SM123","status":"queued"}"#);
        assert_eq!(ok, SendOutcome::Delivered { provider_id: Some("SM123".into()) });
        let limited = classify(429, Some("7"), r#"{"code":20429,"message":"Too Many Requests","status":429}"#);
        assert_eq!(
            limited,
            SendOutcome::Retryable {
                reason: "http 429 twilio 20429: Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(classify(503, None, "oops"), SendOutcome::Retryable { retry_after: None, .. }));
        for code in BAD_NUMBER_CODES {
            let body = format!(r#"{{"code":{code},"message":"bad","status":400}}"#);
            assert!(matches!(classify(400, None, &body), SendOutcome::BadAddress { .. }), "{code}");
        }
        let too_long = classify(400, None, r#"{"code":21617,"message":"body too long","status":400}"#);
        assert_eq!(too_long, SendOutcome::Permanent { reason: "http 400 twilio 21617: body too long".into() });
        assert!(matches!(classify(401, None, ""), SendOutcome::Permanent { .. }));
    }

    #[test]
    fn a_url_without_a_scheme_is_refused_and_the_token_is_never_shown() {
        let config = TwilioConfig {
            account_sid: "AC1".into(),
            auth_token: SecretSource::Inline("s3cr3t-value".into()),
            from: "+15005550006".into(),
            base_url: "api.twilio.com".into(),
            timeout: default_timeout(),
            max_concurrency: 4,
            segments_per_second: default_segments_per_second(),
            status_callback: None,
        };
        assert!(matches!(Twilio::new(&config), Err(TwilioConfigError::BaseUrl(_))));
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
