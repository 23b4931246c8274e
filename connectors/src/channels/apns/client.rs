//! The connector: requests built with `a2`'s payload types, sent with reqwest over HTTP/2 on a
//! few connections, and the answers sorted by [`classify`].

use super::config::{ApnsAuth, ApnsConfig};
use super::token::{Signer, TokenCache};
use super::{ApnsConfigError, ApnsRequestError, TokenError};
use a2::DefaultNotificationBuilder;
use a2::request::notification::{CollapseId, NotificationBuilder, NotificationOptions, Priority, PushType};
use a2::request::payload::PayloadLike;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::ids::hash_hex;
use herald_schemas::{Clock, DeliveryJob, RenderedContent, SystemClock, Target};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The `apns-id` of a delivery: a UUID (version 8, custom) from the hash of the delivery id, so a
/// re-sent delivery carries the same one.
pub fn apns_id(delivery_id: &str) -> String {
    let hash = u128::from_str_radix(&hash_hex(&[delivery_id.as_bytes()]), 16).unwrap_or_default();
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid().hyphenated().to_string()
}

/// One notification as APNs gets it.
#[derive(Debug, Clone)]
pub struct ApnsRequest<'a> {
    pub device_token: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub delivery_id: &'a str,
    /// `apns-expiration`, Unix seconds (0: deliver now or never).
    pub expiration: u64,
    /// Transactional messages go at once (10); the rest may be grouped to save power (5).
    pub priority: Priority,
    /// Notifications with the same collapse id replace each other on the device.
    pub collapse_id: Option<&'a str>,
}

impl<'a> ApnsRequest<'a> {
    /// The request for `job` at `now` (Unix seconds), expiring `ttl` later.
    pub fn from_job(job: &'a DeliveryJob, now: u64, ttl: Duration) -> Result<ApnsRequest<'a>, ApnsRequestError> {
        let (Target::Device { token, .. }, RenderedContent::Push { title, body }) = (&job.target, &job.content) else {
            return Err(ApnsRequestError::NotAPush);
        };
        let expiration = if ttl.is_zero() { 0 } else { now.saturating_add(ttl.as_secs()) };
        let priority = if job.category == "transactional" { Priority::High } else { Priority::Normal };
        Ok(ApnsRequest {
            device_token: token,
            title,
            body,
            delivery_id: &job.delivery_id.0,
            expiration,
            priority,
            collapse_id: None,
        })
    }

    /// `POST {base}/3/device/{token}` with APNs' headers and the JSON payload; `bearer` for
    /// token auth. An over-long collapse id is refused (APNs allows 64 bytes).
    pub fn build(
        &self,
        client: &reqwest::Client,
        base: &str,
        topic: &str,
        bearer: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, ApnsRequestError> {
        let apns_id = apns_id(self.delivery_id);
        let collapse_id =
            self.collapse_id.map(CollapseId::new).transpose().map_err(|_| ApnsRequestError::CollapseId)?;
        let options = NotificationOptions {
            apns_id: Some(&apns_id),
            apns_push_type: Some(PushType::Alert),
            apns_expiration: Some(self.expiration),
            apns_priority: Some(self.priority.clone()),
            apns_topic: Some(topic),
            apns_collapse_id: collapse_id,
        };
        let mut payload = DefaultNotificationBuilder::new()
            .set_title(self.title)
            .set_body(self.body)
            .build(self.device_token, options);
        // The app reports the push opened with it (`POST /v1/events`), as with FCM and Web Push.
        payload
            .add_custom_data("delivery_id", &self.delivery_id)
            .map_err(|e| ApnsRequestError::Payload(e.to_string()))?;
        let json = payload.to_json_string().map_err(|e| ApnsRequestError::Payload(e.to_string()))?;
        let options = payload.get_options();
        let mut request = client
            .post(format!("{base}/3/device/{}", payload.get_device_token()))
            .header("apns-topic", topic)
            .header("apns-id", &apns_id)
            .header(DELIVERY_ID_HEADER, self.delivery_id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        if let Some(push_type) = options.apns_push_type {
            request = request.header("apns-push-type", push_type.to_string());
        }
        if let Some(expiration) = options.apns_expiration {
            request = request.header("apns-expiration", expiration.to_string());
        }
        if let Some(priority) = &options.apns_priority {
            request = request.header("apns-priority", priority.to_string());
        }
        if let Some(collapse_id) = &options.apns_collapse_id {
            request = request.header("apns-collapse-id", collapse_id.value);
        }
        if let Some(jwt) = bearer {
            request = request.header(reqwest::header::AUTHORIZATION, format!("bearer {jwt}"));
        }
        Ok(request)
    }
}

/// APNs' `reason` from an error body (`{"reason":"BadDeviceToken"}`).
fn reason_of(body: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json.get("reason")?.as_str().map(str::to_string)
}

/// The outcome of one answer: HTTP status, the `apns-id` and `Retry-After` headers, the body.
pub fn classify(status: u16, apns_id: Option<&str>, retry_after: Option<&str>, body: &str) -> SendOutcome {
    if status == 200 {
        return SendOutcome::Delivered { provider_id: apns_id.map(str::to_string) };
    }
    let apns_reason = reason_of(body);
    let reason = match &apns_reason {
        Some(apns_reason) => format!("http {status} apns {apns_reason}"),
        None => format!("http {status}"),
    };
    let retry_after = retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    match (status, apns_reason.as_deref()) {
        (410, _) | (400, Some("BadDeviceToken" | "DeviceTokenNotForTopic")) => SendOutcome::BadAddress { reason },
        (403, Some("ExpiredProviderToken" | "InvalidProviderToken")) | (429, _) | (500..=599, _) => {
            SendOutcome::Retryable { reason, retry_after }
        }
        _ => SendOutcome::Permanent { reason },
    }
}

/// One HTTP/2 connection (a client of its own) and the streams it may still open.
struct Lane {
    client: reqwest::Client,
    streams: Semaphore,
}

/// How requests prove they may push: a provider token, or the connection's client certificate.
enum Auth {
    /// Shared by every connector of the key in this process.
    Token(Arc<TokenCache>),
    Certificate,
}

/// The APNs channel: `send` pushes each job once and says how it went; it never retries.
pub struct Apns {
    /// `connections` of them, at least one.
    lanes: Vec<Lane>,
    base: String,
    topic: String,
    auth: Auth,
    ttl: Duration,
    max_concurrency: usize,
    /// Dates provider tokens and expirations; a test's clock ages tokens without waiting.
    clock: Arc<dyn Clock>,
}

impl Apns {
    /// Checks the configuration, reads the key or certificate, and builds the clients
    /// (connections open on the first request).
    pub fn new(config: &ApnsConfig) -> Result<Apns, ApnsConfigError> {
        Apns::build(config, Arc::new(SystemClock), true)
    }

    /// [`Apns::new`] with the clock that dates provider tokens and expirations, and a token cache
    /// of its own, as another process would have: tokens dated by another clock are not shared
    /// (tests age tokens, and play a second process, with it).
    pub fn with_clock(config: &ApnsConfig, clock: Arc<dyn Clock>) -> Result<Apns, ApnsConfigError> {
        Apns::build(config, clock, false)
    }

    /// `shared`: the process's token cache for the key, or one of its own.
    fn build(config: &ApnsConfig, clock: Arc<dyn Clock>, shared: bool) -> Result<Apns, ApnsConfigError> {
        config.validate()?;
        let resolve = |field, source: &crate::secret::SecretSource| {
            source.resolve().map_err(|source| ApnsConfigError::Secret { field, source })
        };
        let (auth, identity) = match &config.auth {
            ApnsAuth::Token { key, key_id, team_id, token_refresh } => {
                let pem = resolve("key", key)?;
                let cache = if shared {
                    TokenCache::shared(pem.expose(), key_id, team_id, *token_refresh)?
                } else {
                    Arc::new(TokenCache::new(Signer::new(pem.expose(), key_id, team_id)?, *token_refresh))
                };
                (Auth::Token(cache), None)
            }
            ApnsAuth::Certificate { certificate, key } => {
                let pem =
                    format!("{}\n{}\n", resolve("certificate", certificate)?.expose(), resolve("key", key)?.expose());
                let identity = reqwest::Identity::from_pem(pem.as_bytes())
                    .map_err(|e| ApnsConfigError::Identity(e.to_string()))?;
                (Auth::Certificate, Some(identity))
            }
        };
        let lanes = (0..config.connections.get())
            .map(|_| {
                let mut builder = reqwest::Client::builder()
                    .http2_prior_knowledge()
                    .timeout(config.timeout)
                    .http2_keep_alive_interval(Duration::from_secs(60))
                    .http2_keep_alive_while_idle(true);
                if let Some(identity) = identity.clone() {
                    builder = builder.identity(identity);
                }
                let client = builder.build().map_err(|e| ApnsConfigError::Client(e.to_string()))?;
                Ok(Lane { client, streams: Semaphore::new(config.streams_per_connection.get()) })
            })
            .collect::<Result<Vec<_>, ApnsConfigError>>()?;
        Ok(Apns {
            lanes,
            base: config.base_url.trim_end_matches('/').to_string(),
            topic: config.topic.clone(),
            auth,
            ttl: config.ttl,
            max_concurrency: config.max_concurrency.get(),
            clock,
        })
    }

    /// How many provider tokens were signed (none with certificate auth).
    pub fn tokens_signed(&self) -> u64 {
        match &self.auth {
            Auth::Token(cache) => cache.signings(),
            Auth::Certificate => 0,
        }
    }

    /// Unix seconds.
    fn now(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// The connection with the most free streams (taken in the same poll, so concurrent sends
    /// spread out).
    fn lane(&self) -> &Lane {
        let mut best = &self.lanes[0];
        for lane in &self.lanes[1..] {
            if lane.streams.available_permits() > best.streams.available_permits() {
                best = lane;
            }
        }
        best
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let now = self.now();
        let ttl = job.provider_ttl(now.saturating_mul(1000), self.ttl);
        let request = match ApnsRequest::from_job(job, now, ttl) {
            Ok(request) => request,
            Err(error) => return SendOutcome::Permanent { reason: error.to_string() },
        };
        let bearer = match &self.auth {
            Auth::Token(cache) => match cache.token(now) {
                Ok(jwt) => Some(jwt),
                Err(TokenError(error)) => {
                    return SendOutcome::Retryable { reason: format!("provider token: {error}"), retry_after: None };
                }
            },
            Auth::Certificate => None,
        };
        let lane = self.lane();
        let Ok(_stream) = lane.streams.acquire().await else {
            return SendOutcome::Retryable { reason: "connection closed".into(), retry_after: None };
        };
        let builder = match request.build(&lane.client, &self.base, &self.topic, bearer.as_deref()) {
            Ok(builder) => builder,
            Err(error) => return SendOutcome::Permanent { reason: error.to_string() },
        };
        let answer = match crate::channels::exchange(builder).await {
            Ok(answer) => answer,
            Err(failed) => return failed,
        };
        let status = answer.status;
        let outcome = classify(status, answer.header("apns-id"), answer.header("retry-after"), &answer.body);
        match (outcome, &self.auth, bearer) {
            (SendOutcome::Retryable { reason, retry_after: None }, Auth::Token(cache), Some(jwt)) if status == 403 => {
                let wait = cache.rejected(&jwt, self.now());
                SendOutcome::Retryable { reason, retry_after: (!wait.is_zero()).then_some(wait) }
            }
            (outcome, _, _) => outcome,
        }
    }
}

#[async_trait]
impl Channel for Apns {
    fn name(&self) -> &str {
        "apns"
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
        let ok = classify(200, Some("A1B2"), None, "");
        assert_eq!(ok, SendOutcome::Delivered { provider_id: Some("A1B2".into()) });
        let gone = classify(410, None, None, r#"{"reason":"Unregistered","timestamp":1700000000000}"#);
        assert_eq!(gone, SendOutcome::BadAddress { reason: "http 410 apns Unregistered".into() });
        for reason in ["BadDeviceToken", "DeviceTokenNotForTopic"] {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            assert!(matches!(classify(400, None, None, &body), SendOutcome::BadAddress { .. }), "{reason}");
        }
        let large = classify(413, None, None, r#"{"reason":"PayloadTooLarge"}"#);
        assert_eq!(large, SendOutcome::Permanent { reason: "http 413 apns PayloadTooLarge".into() });
        for reason in ["TooManyRequests", "TooManyProviderTokenUpdates"] {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            let limited = classify(429, None, Some("3"), &body);
            let expected = SendOutcome::Retryable {
                reason: format!("http 429 apns {reason}"),
                retry_after: Some(Duration::from_secs(3)),
            };
            assert_eq!(limited, expected);
        }
        for reason in ["ExpiredProviderToken", "InvalidProviderToken"] {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            assert!(matches!(classify(403, None, None, &body), SendOutcome::Retryable { .. }), "{reason}");
        }
        for status in [500, 503] {
            assert!(matches!(classify(status, None, None, "{}"), SendOutcome::Retryable { retry_after: None, .. }));
        }
        for (status, reason) in [(400, "BadPayload"), (400, "MissingTopic"), (403, "BadCertificate"), (405, "")] {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            assert!(matches!(classify(status, None, None, &body), SendOutcome::Permanent { .. }), "{status} {reason}");
        }
    }

    #[test]
    fn the_apns_id_is_a_uuid_fixed_by_the_delivery_id() {
        let id = apns_id("n-1.abcdef");
        assert_eq!(id, apns_id("n-1.abcdef"));
        assert_ne!(id, apns_id("n-2.abcdef"));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
    }

    #[test]
    fn the_request_carries_apns_headers_and_an_a2_payload() {
        let client = reqwest::Client::new();
        let mut request = ApnsRequest {
            device_token: "ab12",
            title: "Hi",
            body: "there",
            delivery_id: "n-1.x",
            expiration: 1_700_086_400,
            priority: Priority::High,
            collapse_id: Some("order-7"),
        };
        let built = request.build(&client, "http://h:1", "com.example.app", Some("JWT")).unwrap().build().unwrap();
        assert_eq!(built.url().as_str(), "http://h:1/3/device/ab12");
        let header = |name: &str| built.headers().get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(header("apns-topic"), "com.example.app");
        assert_eq!(header("apns-push-type"), "alert");
        assert_eq!(header("apns-priority"), "10");
        assert_eq!(header("apns-expiration"), "1700086400");
        assert_eq!(header("apns-collapse-id"), "order-7");
        assert_eq!(header("apns-id"), apns_id("n-1.x"));
        assert_eq!(header(DELIVERY_ID_HEADER), "n-1.x");
        assert_eq!(header("authorization"), "bearer JWT");
        let body: serde_json::Value = serde_json::from_slice(built.body().unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"aps": {"alert": {"title": "Hi", "body": "there"}, "mutable-content": 0}, "delivery_id": "n-1.x"})
        );

        request.priority = Priority::Normal;
        request.collapse_id = None;
        let built = request.build(&client, "http://h:1", "t", None).unwrap().build().unwrap();
        assert_eq!(built.headers()["apns-priority"], "5");
        assert!(built.headers().get("apns-collapse-id").is_none() && built.headers().get("authorization").is_none());
        let long = "c".repeat(65);
        request.collapse_id = Some(&long);
        assert!(matches!(request.build(&client, "http://h:1", "t", None), Err(ApnsRequestError::CollapseId)));
    }

    #[test]
    fn transactional_pushes_go_at_once_and_expire_after_the_ttl() {
        let token =
            Target::Device { device_id: "d".into(), platform: herald_schemas::Platform::Ios, token: "ab".into() };
        let mut job = DeliveryJob {
            delivery_id: herald_schemas::DeliveryId("n-1.x".into()),
            notification_id: herald_schemas::NotificationId("n-1".into()),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "transactional".into(),
            template: "t".into(),
            locale: "en".into(),
            target: token,
            content: RenderedContent::Push { title: "T".into(), body: "B".into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        };
        let request = ApnsRequest::from_job(&job, 1_000, Duration::from_secs(60)).unwrap();
        assert_eq!((request.expiration, request.priority.to_string()), (1_060, "10".to_string()));
        assert_eq!(ApnsRequest::from_job(&job, 1_000, Duration::ZERO).unwrap().expiration, 0);
        job.category = "marketing".into();
        assert_eq!(ApnsRequest::from_job(&job, 1_000, Duration::ZERO).unwrap().priority.to_string(), "5");
        job.content = RenderedContent::Sms { text: "t".into() };
        assert!(matches!(ApnsRequest::from_job(&job, 1_000, Duration::ZERO), Err(ApnsRequestError::NotAPush)));
    }

    #[test]
    fn requests_go_to_the_connection_with_the_most_free_streams() {
        let mut config = ApnsConfig::new(
            "t",
            ApnsConfig::token_auth(SecretSource::Inline(super::super::token::tests::p8_pem()), "K", "T"),
        );
        config.connections = std::num::NonZeroUsize::new(3).unwrap();
        config.streams_per_connection = std::num::NonZeroUsize::new(2).unwrap();
        let apns = Apns::new(&config).unwrap();
        let mut held = Vec::new();
        for _ in 0..6 {
            let lane = apns.lane();
            held.push(lane.streams.try_acquire().unwrap());
        }
        assert!(apns.lanes.iter().all(|lane| lane.streams.available_permits() == 0));
        drop(held.swap_remove(4));
        assert_eq!(apns.lane().streams.available_permits(), 1);
    }

    #[test]
    fn a_certificate_and_key_make_a_client_identity() {
        // A self-signed TEST ONLY certificate, standing in for an app's push certificate.
        let auth = ApnsAuth::Certificate {
            certificate: SecretSource::Inline(include_str!("testdata/push-test.cert.pem").into()),
            key: SecretSource::Inline(include_str!("testdata/push-test.key.pem").into()),
        };
        let apns = Apns::new(&ApnsConfig::new("com.example.herald", auth)).unwrap();
        assert!(matches!(apns.auth, Auth::Certificate));
        assert_eq!(apns.tokens_signed(), 0);
    }

    #[test]
    fn malformed_certificate_pem_is_refused_naming_the_auth_field() {
        let auth = ApnsAuth::Certificate {
            certificate: SecretSource::Inline(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----".into(),
            ),
            key: SecretSource::Inline("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into()),
        };
        let error = Apns::new(&ApnsConfig::new("t", auth)).err().unwrap();
        assert!(error.to_string().starts_with("providers.apns.auth"), "{error}");
        let missing = ApnsAuth::Certificate {
            certificate: SecretSource::File { file: "/nonexistent/apns-cert.pem".into() },
            key: SecretSource::Inline("k".into()),
        };
        let error = Apns::new(&ApnsConfig::new("t", missing)).err().unwrap();
        assert!(error.to_string().starts_with("providers.apns.auth.certificate"), "{error}");
    }
}
