//! The FCM channel: message bodies, sends and the classification of FCM's answers.

use super::FcmConfigError;
use super::auth::{TokenError, TokenSource};
use super::config::FcmConfig;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use serde_json::{Value, json};
use std::time::Duration;

/// The `@type` of FCM's own error detail, which carries the precise `errorCode`.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// An FCM error body: `{"error": {"code", "message", "status", "details": [...]}}`.
#[derive(Debug, Default, PartialEq, Eq)]
struct FcmError {
    /// The `errorCode` of the `FcmError` detail, else the canonical `status`.
    code: String,
    message: String,
}

impl FcmError {
    fn parse(body: &str) -> FcmError {
        let json: Value = serde_json::from_str(body).unwrap_or_default();
        let error = &json["error"];
        let detail = error["details"].as_array().and_then(|details| {
            details.iter().find(|d| d["@type"] == FCM_ERROR_TYPE).and_then(|d| d["errorCode"].as_str())
        });
        let code = detail.or_else(|| error["status"].as_str()).unwrap_or_default();
        FcmError { code: code.to_string(), message: error["message"].as_str().unwrap_or_default().to_string() }
    }

    /// The access token was refused (expired or revoked), not the message.
    fn is_unauthenticated(&self) -> bool {
        self.code == "UNAUTHENTICATED"
    }
}

/// The outcome of one answer from FCM: HTTP status, `Retry-After` header, body.
pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> SendOutcome {
    if (200..300).contains(&status) {
        let json: Value = serde_json::from_str(body).unwrap_or_default();
        return SendOutcome::Delivered { provider_id: json["name"].as_str().map(str::to_string) };
    }
    let error = FcmError::parse(body);
    let reason = if error.code.is_empty() {
        format!("http {status}")
    } else {
        format!("http {status} fcm {}: {}", error.code, error.message)
    };
    let retryable = |reason| SendOutcome::Retryable { reason, retry_after: retry_after.and_then(parse_retry_after) };
    match error.code.as_str() {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => SendOutcome::BadAddress { reason },
        "INVALID_ARGUMENT" if error.message.contains("registration token") => SendOutcome::BadAddress { reason },
        "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" => retryable(reason),
        // The access token's fault; the sender fetches a new one.
        "UNAUTHENTICATED" => retryable(reason),
        "THIRD_PARTY_AUTH_ERROR" | "INVALID_ARGUMENT" => SendOutcome::Permanent { reason },
        _ if status == 429 || status >= 500 => retryable(reason),
        _ => SendOutcome::Permanent { reason },
    }
}

/// `Retry-After` in seconds (the form Google sends).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `messages:send` body for one device.
fn message(job: &DeliveryJob, token: &str, title: &str, body: &str, ttl: Duration) -> Value {
    let priority = if job.category == "transactional" { "high" } else { "normal" };
    json!({
        "message": {
            "token": token,
            "notification": { "title": title, "body": body },
            "android": { "priority": priority, "ttl": format!("{}s", ttl.as_secs()) },
            "data": { "delivery_id": job.delivery_id.0 },
        }
    })
}

/// Sends to Android devices through FCM.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    tokens: TokenSource,
    max_concurrency: usize,
    ttl: Duration,
}

impl Fcm {
    /// Checks the configuration and builds the HTTP client; sends no request (the first send
    /// fetches the access token).
    pub fn new(config: &FcmConfig) -> Result<Fcm, FcmConfigError> {
        let checked = config.check()?;
        let client = reqwest::Client::builder()
            .timeout(checked.timeout)
            .pool_max_idle_per_host(checked.max_concurrency)
            .build()
            .map_err(|e| FcmConfigError::Client(e.to_string()))?;
        Ok(Fcm {
            tokens: TokenSource::new(client.clone(), checked.assertion),
            client,
            send_url: checked.send_url,
            max_concurrency: checked.max_concurrency,
            ttl: checked.ttl,
        })
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let (Target::Device { token: device, .. }, RenderedContent::Push { title, body }) = (&job.target, &job.content)
        else {
            return SendOutcome::Permanent { reason: "not a push delivery".into() };
        };
        let access = match self.tokens.token().await {
            Ok(access) => access,
            Err(error @ TokenError::Unavailable(_)) => {
                return SendOutcome::Retryable { reason: error.to_string(), retry_after: None };
            }
            Err(error @ TokenError::Refused(_)) => return SendOutcome::Permanent { reason: error.to_string() },
        };
        let request = self
            .client
            .post(&self.send_url)
            .bearer_auth(&*access)
            .header(DELIVERY_ID_HEADER, &job.delivery_id.0)
            .json(&message(job, device, title, body, job.provider_ttl(herald_schemas::stage::now_ms(), self.ttl)));
        match crate::channels::exchange(request).await {
            Ok(answer) => {
                if answer.status == 401 && FcmError::parse(&answer.body).is_unauthenticated() {
                    self.tokens.reject(&access);
                }
                classify(answer.status, answer.header(reqwest::header::RETRY_AFTER), &answer.body)
            }
            Err(failed) => failed,
        }
    }
}

#[async_trait]
impl Channel for Fcm {
    fn name(&self) -> &str {
        "fcm"
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

    fn error_body(http: u16, status: &str, error_code: Option<&str>, message: &str) -> String {
        let details: Vec<Value> =
            error_code.map(|c| json!({"@type": FCM_ERROR_TYPE, "errorCode": c})).into_iter().collect();
        json!({"error": {"code": http, "message": message, "status": status, "details": details}}).to_string()
    }

    #[test]
    fn every_answer_has_its_class() {
        let ok = classify(200, None, r#"{"name":"projects/p/messages/0:123"}"#);
        assert_eq!(ok, SendOutcome::Delivered { provider_id: Some("projects/p/messages/0:123".into()) });

        let gone = error_body(404, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found.");
        assert!(
            matches!(classify(404, None, &gone), SendOutcome::BadAddress { reason } if reason.contains("UNREGISTERED"))
        );
        let mismatch = error_body(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), "SenderId mismatch");
        assert!(matches!(classify(403, None, &mismatch), SendOutcome::BadAddress { .. }));
        let bad_token = error_body(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        );
        assert!(matches!(classify(400, None, &bad_token), SendOutcome::BadAddress { .. }));
        let too_big = error_body(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Message is too big");
        assert!(matches!(classify(400, None, &too_big), SendOutcome::Permanent { .. }));

        let quota = error_body(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "Quota exceeded");
        assert_eq!(
            classify(429, Some("7"), &quota),
            SendOutcome::Retryable {
                reason: "http 429 fcm QUOTA_EXCEEDED: Quota exceeded".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let unavailable = error_body(503, "UNAVAILABLE", Some("UNAVAILABLE"), "The service is unavailable");
        assert!(matches!(classify(503, None, &unavailable), SendOutcome::Retryable { retry_after: None, .. }));
        let internal = error_body(500, "INTERNAL", Some("INTERNAL"), "Internal error");
        assert!(matches!(classify(500, None, &internal), SendOutcome::Retryable { .. }));
        assert!(matches!(classify(502, None, "<html>bad gateway</html>"), SendOutcome::Retryable { .. }));

        let apns_auth = error_body(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR"), "Auth error from APNS");
        assert!(matches!(classify(401, None, &apns_auth), SendOutcome::Permanent { .. }));
        assert!(!FcmError::parse(&apns_auth).is_unauthenticated());
        let expired = error_body(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials.");
        assert!(matches!(classify(401, None, &expired), SendOutcome::Retryable { .. }));
        assert!(FcmError::parse(&expired).is_unauthenticated());

        let denied = error_body(403, "PERMISSION_DENIED", None, "Permission denied");
        assert!(matches!(classify(403, None, &denied), SendOutcome::Permanent { .. }));
    }

    #[test]
    fn the_message_carries_priority_ttl_and_delivery_id() {
        let job = DeliveryJob {
            delivery_id: herald_schemas::DeliveryId("d-1".into()),
            notification_id: herald_schemas::NotificationId("n-1".into()),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "transactional".into(),
            template: "t".into(),
            locale: "en".into(),
            target: Target::Device {
                device_id: "dev".into(),
                platform: herald_schemas::contacts::Platform::Android,
                token: "tok".into(),
            },
            content: RenderedContent::Push { title: "T".into(), body: "B".into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        };
        let body = message(&job, "tok", "T", "B", Duration::from_secs(86_400));
        assert_eq!(body["message"]["android"], json!({"priority": "high", "ttl": "86400s"}));
        assert_eq!(body["message"]["data"]["delivery_id"], "d-1");
        assert_eq!(body["message"]["token"], "tok");
        let marketing = DeliveryJob { category: "marketing".into(), ..job.clone() };
        assert_eq!(
            message(&marketing, "tok", "T", "B", Duration::from_secs(60))["message"]["android"]["priority"],
            "normal"
        );
    }

    #[test]
    fn a_malformed_service_account_or_key_is_a_config_error_naming_the_field() {
        let not_json = FcmConfig::new(SecretSource::Inline("{not json".into()));
        let err = Fcm::new(&not_json).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("providers.fcm.service_account: "), "{err}");

        let account = json!({
            "type": "service_account",
            "project_id": "p",
            "client_email": "a@p.iam.gserviceaccount.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let bad_key = FcmConfig::new(SecretSource::Inline(account.to_string()));
        let err = Fcm::new(&bad_key).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("providers.fcm.service_account: private_key"), "{err}");
        assert!(!format!("{bad_key:?}").contains("BEGIN"));
    }
}
