//! Configuration: one TOML file, every field optional with a documented
//! default, unknown fields refused.
//!
//! Loading is pure: [`Config::load`] parses and [`Config::validate`] checks
//! limits before anything opens a socket or a file. `herald config check`
//! runs exactly these two steps.

use crate::alerts::AlertsConfig;
use herald_connectors::channels::apns::{Apns, ApnsConfig};
use herald_connectors::channels::breaker::BreakerConfig;
use herald_connectors::channels::fcm::{Fcm, FcmConfig};
use herald_connectors::channels::sendgrid::{EventWebhookKey, SendGrid, SendGridConfig};
use herald_connectors::channels::smtp::SmtpConfig;
use herald_connectors::channels::twilio::{Twilio, TwilioConfig};
use herald_connectors::channels::vonage::{Vonage, VonageConfig};
use herald_connectors::channels::webpush::{WebPush, WebPushConfig};
use herald_connectors::secret::SecretSource;
use herald_connectors::unsubscribe::UnsubscribeLinks;
use herald_schemas::Route;
use herald_schemas::request::ChannelKind;
use herald_stages::quiet::QuietHoursConfig;
use herald_stages::retry::RetryPolicy;
use herald_stages::throttle::ThrottleConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration (`herald.toml`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded backends keep their data.
    pub data_dir: Option<PathBuf>,
    pub api: ApiConfig,
    pub pipeline: PipelineConfig,
    pub dedup: DedupConfig,
    pub throttle: ThrottleConfig,
    pub quiet_hours: QuietHoursConfig,
    pub schedule: ScheduleConfig,
    pub render: RenderConfig,
    pub ingest: IngestConfig,
    pub retry: RetryConfig,
    pub channels: ChannelsConfig,
    pub providers: ProvidersConfig,
    pub breaker: BreakerConfig,
    pub alerts: AlertsConfig,
    pub unsubscribe: UnsubscribeConfig,
    pub tracking: TrackingConfig,
    pub analytics: AnalyticsConfig,
    pub backends: BackendsConfig,
    pub webhooks: crate::webhooks::WebhooksConfig,
}

/// `[backends]`: where the topics and the state live, as URLs (`herald serve --topics … --state
/// …` override them). `embedded`, the default for both, keeps them in the data directory.
///
/// - `topics`: `embedded`, or `fluvio://host:port[?replication=3&prefix=…&linger=1ms]` (a Fluvio
///   cluster's SC; cargo feature `fluvio`).
/// - `state`: `embedded`, or `scylla://node1,node2[:port]/keyspace[?replication=3]` (ScyllaDB;
///   cargo feature `scylla`). Several workers can share the partitions only with this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    pub topics: String,
    pub state: String,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        Self { topics: EMBEDDED.into(), state: EMBEDDED.into() }
    }
}

const EMBEDDED: &str = "embedded";

/// Where the topics live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsBackend {
    Embedded,
    #[cfg(feature = "fluvio")]
    Fluvio(herald_connectors::fluvio::FluvioOptions),
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    Embedded,
    #[cfg(feature = "scylla")]
    Scylla(herald_connectors::scylla::ScyllaOptions),
}

#[cfg(not(all(feature = "fluvio", feature = "scylla")))]
fn not_built(url: &str, feature: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "{url:?} needs the `{feature}` cargo feature, which this herald was built without \
         (it is on by default: cargo build --release)"
    ))
}

impl BackendsConfig {
    pub fn topics(&self) -> Result<TopicsBackend, ConfigError> {
        let url = self.topics.trim();
        if url == EMBEDDED {
            return Ok(TopicsBackend::Embedded);
        }
        if url.starts_with("fluvio://") {
            #[cfg(feature = "fluvio")]
            return herald_connectors::fluvio::FluvioOptions::from_url(url)
                .map(TopicsBackend::Fluvio)
                .map_err(|e| ConfigError::Invalid(format!("backends.topics: {e}")));
            #[cfg(not(feature = "fluvio"))]
            return Err(not_built(url, "fluvio"));
        }
        Err(ConfigError::Invalid(format!(
            "backends.topics {url:?}: use \"embedded\" or fluvio://host:port (a Fluvio cluster)"
        )))
    }

    pub fn state(&self) -> Result<StateBackend, ConfigError> {
        let url = self.state.trim();
        if url == EMBEDDED {
            return Ok(StateBackend::Embedded);
        }
        if url.starts_with("scylla://") {
            #[cfg(feature = "scylla")]
            return herald_connectors::scylla::ScyllaOptions::from_url(url)
                .map(StateBackend::Scylla)
                .map_err(|e| ConfigError::Invalid(format!("backends.state: {e}")));
            #[cfg(not(feature = "scylla"))]
            return Err(not_built(url, "scylla"));
        }
        Err(ConfigError::Invalid(format!(
            "backends.state {url:?}: use \"embedded\" or scylla://node1,node2/keyspace (a ScyllaDB cluster)"
        )))
    }
}

/// `[analytics]`: delivery events as Parquet under `<data-dir>/events/` (see `herald sql`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Write the event files (on by default).
    pub enabled: bool,
    /// Flush once this many events are buffered.
    pub flush_rows: NonZeroU32,
    /// Flush at least this often while events come in; events newer than this may not be in a
    /// file yet.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How many of each event partition's latest event ids the sink remembers, to drop an event
    /// a replaying stage appended twice (16 bytes and a set entry each).
    pub dedup_window: NonZeroU32,
    /// How often runs of small files are merged into files of up to `compact_target_mib`
    /// (a day at a time, swapped in atomically); `0s` never merges.
    #[serde(with = "humantime_serde")]
    pub compact_interval: Duration,
    pub compact_target_mib: NonZeroU32,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flush_rows: NonZeroU32::new(65_536).expect("> 0"),
            flush_interval: Duration::from_secs(1),
            dedup_window: NonZeroU32::new(32_768).expect("> 0"),
            compact_interval: Duration::from_secs(600),
            compact_target_mib: NonZeroU32::new(64).expect("> 0"),
        }
    }
}

/// `[unsubscribe]`: the one-click unsubscribe links (RFC 8058) of non-transactional email. Off
/// unless `url` is set; then `secret` signs the links so only Herald's own record an opt-out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnsubscribeConfig {
    /// The public address of Herald's `POST /v1/unsubscribe`, as mail recipients reach it.
    pub url: Option<String>,
    /// The key signing the links (inline, `{ env = "…" }` or `{ file = "…" }`). Changing it
    /// invalidates the links of mail already sent.
    pub secret: Option<SecretSource>,
}

impl UnsubscribeConfig {
    /// The link maker, or `None` when unsubscribe links are off.
    pub fn links(&self) -> Result<Option<UnsubscribeLinks>, ConfigError> {
        let signing = signed_links("unsubscribe", self.url.as_deref(), self.secret.as_ref())?;
        Ok(signing.map(|(url, secret)| UnsubscribeLinks::new(url, &secret)))
    }
}

/// `[tracking]`: email open and click tracking. Off unless `url` is set; then `secret` signs the
/// links, so the click redirect only goes where a message Herald rendered pointed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Herald's public address as mail recipients reach it (`https://herald.example`); the
    /// links are `{url}/v1/t/o/…` (open pixel) and `{url}/v1/t/c/…` (click redirect).
    pub url: Option<String>,
    /// The key signing the links (inline, `{ env = "…" }` or `{ file = "…" }`). Changing it
    /// invalidates the links of mail already sent.
    pub secret: Option<SecretSource>,
}

impl TrackingConfig {
    /// The link maker, or `None` when tracking is off.
    pub fn tracking(&self) -> Result<Option<crate::tracking::Tracking>, ConfigError> {
        let signing = signed_links("tracking", self.url.as_deref(), self.secret.as_ref())?;
        Ok(signing.map(|(url, secret)| crate::tracking::Tracking::new(url, &secret)))
    }
}

/// A section's link address and resolved signing secret; `None` when its `url` is not set.
fn signed_links<'a>(
    section: &str,
    url: Option<&'a str>,
    secret: Option<&SecretSource>,
) -> Result<Option<(&'a str, herald_connectors::secret::Secret)>, ConfigError> {
    let Some(url) = url else { return Ok(None) };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid(format!("{section}.url {url:?}: use an http:// or https:// URL")));
    }
    let source = secret
        .ok_or_else(|| ConfigError::Invalid(format!("{section}.url needs {section}.secret to sign its links")))?;
    let secret = source.resolve().map_err(|e| ConfigError::Invalid(format!("{section}.secret: {e}")))?;
    Ok(Some((url, secret)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API listens on. Bind loopback unless a proxy fronts it.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most notifications in one `POST /v1/notifications`.
    pub max_items: usize,
    /// When the requests not yet processed (end offset minus committed
    /// offset, summed over partitions of `herald-requests`) exceed this, the
    /// API answers 503 with `Retry-After` instead of queueing more.
    pub lag_high_water: u64,
    /// `Retry-After` sent with a 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// `POST /v1/analytics/sql`: a query running longer is stopped (400).
    #[serde(with = "humantime_serde")]
    pub sql_timeout: Duration,
    /// `POST /v1/analytics/sql`: most rows returned (the answer says when it cut).
    pub sql_max_rows: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            max_items: 1000,
            lag_high_water: 2_000_000,
            retry_after: Duration::from_secs(1),
            sql_timeout: Duration::from_secs(30),
            sql_max_rows: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Partitions of every topic created on first start (later changes are refused).
    pub partitions: NonZeroU32,
    /// Request chains run side by side, each over its share of the partitions
    /// (partition p goes to lane p mod lanes); more lanes use more cores.
    pub lanes: NonZeroU32,
    /// Most records carried as one batch (one durable write per batch downstream).
    pub batch_size: NonZeroU32,
    /// How long the head of a chain waits to fill a batch from several partitions. Zero (the
    /// default) takes only what is already queued: under load batches still grow, since records
    /// queue while the previous batch is processed, and an idle pipeline adds no wait.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Records that may wait between two stages; a full queue blocks the stage before it.
    pub queue_records: NonZeroU32,
    /// How long a partition reader waits for new records before looking again.
    #[serde(with = "humantime_serde")]
    pub read_wait: Duration,
    /// How often lag gauges are refreshed (and the API's 503 decision with them).
    #[serde(with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// How often consumed records older than `retention` are deleted (embedded log).
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Consumed records are kept at least this long.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long `GET /v1/notifications/{id}` shows a notification's events. The embedded
    /// backend reads them from `herald-events`, so it keeps that topic this long.
    #[serde(with = "humantime_serde")]
    pub timeline_retention: Duration,
    /// The OS priority (Linux nice value, 0 to 19) of the threads that run everything but the
    /// priority lane, the HTTP API and the monitor: under a saturated CPU the kernel runs
    /// transactional work first. 0 runs it all on the same threads.
    pub bulk_nice: u8,
    /// 0 (the default) or a Linux real-time priority, 1 to 99: the threads of the priority lane,
    /// the HTTP API and the monitor run in the `SCHED_FIFO` class at that priority, so that on a
    /// saturated CPU they take it from the bulk threads the moment they wake. Needs
    /// `CAP_SYS_NICE` or `LimitRTPRIO=`; without it Herald warns and runs as with 0.
    pub realtime_priority: u8,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            partitions: NonZeroU32::new(8).expect("8 > 0"),
            lanes: NonZeroU32::new(1).expect("1 > 0"),
            batch_size: NonZeroU32::new(8000).expect("8000 > 0"),
            linger: Duration::ZERO,
            queue_records: NonZeroU32::new(16000).expect("16000 > 0"),
            read_wait: Duration::from_millis(200),
            monitor_interval: Duration::from_millis(250),
            retention_interval: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            timeline_retention: Duration::from_secs(72 * 3600),
            bulk_nice: 10,
            realtime_priority: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// A repeat of `(client, idempotency_key)` inside this window is dropped.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { window: Duration::from_secs(24 * 3600) }
    }
}

/// `[schedule]`: the scheduler, which releases what waits in the schedule index (`send_at`,
/// quiet hours, digests) back into `herald-requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// How often each owned partition's index is read for what is due: a notification goes at
    /// most this long (plus one append) after its time.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Holds read and released per partition per round: what the scheduler holds in memory.
    pub page: NonZeroU32,
    /// Most notifications a digest message lists in `items` (`count` tells how many there were).
    pub digest_items: NonZeroU32,
    /// Subscribers a broadcast reads and fans out per step: what it holds in memory, however
    /// many subscribers the topic has.
    pub broadcast_page: NonZeroU32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            page: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            digest_items: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            broadcast_page: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// minijinja fuel per rendering; a template that burns it ends in `render_failed`.
    pub fuel: u64,
    /// Largest rendered part in bytes.
    pub max_output_bytes: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self { fuel: 50_000, max_output_bytes: 256 * 1024 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Consume `herald-ingest` (bulk producers writing JSON straight into the topic).
    pub enabled: bool,
    /// The client identity records of `herald-ingest` are attributed to.
    pub client_id: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { enabled: true, client_id: "ingest".to_string() }
    }
}

/// `[channels]`: which connector each route sends through. `"outbox"` (the default) writes JSON
/// lines under `<data-dir>/outbox/{push,sms,email}.jsonl` and needs no provider; a provider name
/// needs its `[providers.<name>]`. A list names providers in order of preference: the next is
/// used while the one before has its circuit breaker open (`sms = ["twilio", "vonage"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// iOS devices: `"apns"`.
    pub ios: Providers,
    /// Android devices: `"fcm"`.
    pub android: Providers,
    /// Browsers and desktops: `"webpush"`.
    pub web: Providers,
    /// `"twilio"`, `"vonage"`, or both in order.
    pub sms: Providers,
    /// `"smtp"`, `"sendgrid"`, or both in order.
    pub email: Providers,
}

/// A connector a route can send through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Outbox,
    Apns,
    Fcm,
    Webpush,
    Twilio,
    Vonage,
    Smtp,
    Sendgrid,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Outbox => "outbox",
            ProviderKind::Apns => "apns",
            ProviderKind::Fcm => "fcm",
            ProviderKind::Webpush => "webpush",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Vonage => "vonage",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Sendgrid => "sendgrid",
        }
    }

    /// The providers that can serve a route (besides the outbox).
    fn serving(route: Route) -> &'static [ProviderKind] {
        match route {
            Route::Apns => &[ProviderKind::Apns],
            Route::Fcm => &[ProviderKind::Fcm],
            Route::Webpush => &[ProviderKind::Webpush],
            Route::Sms => &[ProviderKind::Twilio, ProviderKind::Vonage],
            Route::Email => &[ProviderKind::Smtp, ProviderKind::Sendgrid],
        }
    }
}

/// One provider, or several in order of preference (written as a string or a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "OneOrMany")]
pub struct Providers(pub Vec<ProviderKind>);

impl Default for Providers {
    fn default() -> Self {
        Providers(vec![ProviderKind::Outbox])
    }
}

impl Providers {
    pub fn is_outbox(&self) -> bool {
        self.0 == [ProviderKind::Outbox]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(ProviderKind),
    Many(Vec<ProviderKind>),
}

impl From<OneOrMany> for Providers {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(kind) => Providers(vec![kind]),
            OneOrMany::Many(kinds) => Providers(kinds),
        }
    }
}

impl From<Providers> for OneOrMany {
    fn from(value: Providers) -> Self {
        match value.0.as_slice() {
            [one] => OneOrMany::One(*one),
            _ => OneOrMany::Many(value.0),
        }
    }
}

impl ChannelsConfig {
    /// The providers of a route, in order of preference.
    pub fn for_route(&self, route: Route) -> &Providers {
        match route {
            Route::Apns => &self.ios,
            Route::Fcm => &self.android,
            Route::Webpush => &self.web,
            Route::Sms => &self.sms,
            Route::Email => &self.email,
        }
    }

    /// Every route's list is non-empty, serves that route, names each provider once, and uses
    /// the outbox only alone.
    fn validate(&self) -> Result<(), ConfigError> {
        for route in Route::ALL {
            let field = match route {
                Route::Apns => "ios",
                Route::Fcm => "android",
                Route::Webpush => "web",
                Route::Sms => "sms",
                Route::Email => "email",
            };
            let kinds = &self.for_route(route).0;
            let bad = |why: String| Err(ConfigError::Invalid(format!("channels.{field}: {why}")));
            if kinds.is_empty() {
                return bad("name at least one provider, or \"outbox\"".into());
            }
            if kinds.contains(&ProviderKind::Outbox) && kinds.len() > 1 {
                return bad("\"outbox\" cannot be combined with providers".into());
            }
            for (i, kind) in kinds.iter().enumerate() {
                if *kind != ProviderKind::Outbox && !ProviderKind::serving(route).contains(kind) {
                    let allowed: Vec<&str> = ProviderKind::serving(route).iter().map(|k| k.as_str()).collect();
                    return bad(format!("{} cannot send {field}; use {}", kind.as_str(), allowed.join(" or ")));
                }
                if kinds[..i].contains(kind) {
                    return bad(format!("{} is listed twice", kind.as_str()));
                }
            }
        }
        Ok(())
    }

    /// Every provider some route uses.
    pub fn used(&self) -> impl Iterator<Item = ProviderKind> + '_ {
        Route::ALL.into_iter().flat_map(|r| self.for_route(r).0.iter().copied())
    }
}

/// `[providers.<name>]`: each provider's account, endpoint and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webpush: Option<WebPushConfig>,
    pub twilio: Option<TwilioConfig>,
    pub vonage: Option<VonageConfig>,
    pub smtp: Option<SmtpConfig>,
    pub sendgrid: Option<SendGridConfig>,
}

impl ProvidersConfig {
    /// Whether `[providers.<kind>]` is present.
    pub fn has(&self, kind: ProviderKind) -> bool {
        match kind {
            ProviderKind::Outbox => true,
            ProviderKind::Apns => self.apns.is_some(),
            ProviderKind::Fcm => self.fcm.is_some(),
            ProviderKind::Webpush => self.webpush.is_some(),
            ProviderKind::Twilio => self.twilio.is_some(),
            ProviderKind::Vonage => self.vonage.is_some(),
            ProviderKind::Smtp => self.smtp.is_some(),
            ProviderKind::Sendgrid => self.sendgrid.is_some(),
        }
    }

    /// Checks every present section without opening a socket (and without a runtime).
    fn check(&self) -> Result<(), ConfigError> {
        // Building a connector resolves its secrets, parses its keys and checks its URLs; none
        // opens a socket or needs a runtime.
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
        if let Some(apns) = &self.apns {
            Apns::new(apns).map_err(|e| invalid(&e))?;
        }
        if let Some(fcm) = &self.fcm {
            Fcm::new(fcm).map_err(|e| invalid(&e))?;
        }
        if let Some(webpush) = &self.webpush {
            WebPush::new(webpush).map_err(|e| invalid(&e))?;
        }
        if let Some(twilio) = &self.twilio {
            Twilio::new(twilio).map_err(|e| invalid(&e))?;
        }
        if let Some(vonage) = &self.vonage {
            Vonage::new(vonage).map_err(|e| invalid(&e))?;
            vonage.receipt_verifier().map_err(|e| invalid(&e))?;
        }
        if let Some(smtp) = &self.smtp {
            smtp.check().map_err(|e| invalid(&e))?;
        }
        if let Some(sendgrid) = &self.sendgrid {
            SendGrid::new(sendgrid, None).map_err(|e| invalid(&e))?;
            if let Some(key) = &sendgrid.event_webhook_key {
                EventWebhookKey::from_base64(key).map_err(|e| invalid(&e))?;
            }
        }
        Ok(())
    }
}

/// `[retry]`: when refused deliveries are tried again, per channel, and when they are given up
/// (dead-lettered to `herald-dead`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Most retries the scheduler holds in memory waiting for their time; the rest wait on disk.
    pub max_waiting: usize,
    pub push: RetryPolicy,
    pub sms: RetryPolicy,
    pub email: RetryPolicy,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let email = RetryPolicy { max_age: Duration::from_secs(24 * 3600), ..RetryPolicy::default() };
        Self { max_waiting: 200_000, push: RetryPolicy::default(), sms: RetryPolicy::default(), email }
    }
}

impl RetryConfig {
    pub fn policy(&self, channel: ChannelKind) -> &RetryPolicy {
        match channel {
            ChannelKind::Push => &self.push,
            ChannelKind::Sms => &self.sms,
            ChannelKind::Email => &self.email,
        }
    }
}

impl Config {
    /// The render stage's limits from `[render]`.
    pub fn render_limits(&self) -> herald_stages::render::RenderLimits {
        herald_stages::render::RenderLimits {
            fuel: self.render.fuel,
            max_output_bytes: self.render.max_output_bytes,
            ..Default::default()
        }
    }

    /// Reads and parses a file; no other I/O.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// The file's config, or the defaults when no file is given.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        path.map(Config::load).transpose().map(Option::unwrap_or_default)
    }

    /// Checks limits that serde types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.pipeline.bulk_nice > 19 {
            return bad("pipeline.bulk_nice must be between 0 and 19");
        }
        if self.pipeline.realtime_priority > 99 {
            return bad("pipeline.realtime_priority must be 0 (off) or a real-time priority between 1 and 99");
        }
        if self.api.max_items == 0 || self.api.max_items > 100_000 {
            return bad("api.max_items must be between 1 and 100000");
        }
        if self.api.max_body_bytes < 1024 {
            return bad("api.max_body_bytes must be at least 1024");
        }
        if self.pipeline.queue_records.get() < self.pipeline.batch_size.get() {
            return bad("pipeline.queue_records must be at least pipeline.batch_size");
        }
        if self.pipeline.partitions.get() > 4096 {
            return bad("pipeline.partitions must be at most 4096");
        }
        if self.dedup.window.is_zero() {
            return bad("dedup.window must be positive");
        }
        self.throttle.validate().map_err(|e| ConfigError::Invalid(format!("throttle: {e}")))?;
        self.quiet_hours.validate().map_err(|e| ConfigError::Invalid(format!("quiet_hours: {e}")))?;
        if self.schedule.poll_interval.is_zero() || self.schedule.poll_interval > Duration::from_secs(1) {
            return bad("schedule.poll_interval must be positive and at most 1s (notifications go within a second)");
        }
        if let Some(url) = &self.alerts.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("alerts.webhook must be an http:// or https:// URL");
        }
        if !(0.0..1.0).contains(&self.breaker.failure_ratio) {
            return bad("breaker.failure_ratio must be at least 0 and below 1");
        }
        self.backends.topics()?;
        self.backends.state()?;
        self.channels.validate()?;
        for kind in self.channels.used() {
            if kind != ProviderKind::Outbox && !self.providers.has(kind) {
                let name = kind.as_str();
                return bad(&format!("channels use {name}, which needs a [providers.{name}] section"));
            }
        }
        // Resolves secrets, reads key files and checks URLs now, so `serve` fails before it starts.
        self.providers.check()?;
        self.unsubscribe.links()?;
        if self.ingest.client_id.is_empty() {
            return bad("ingest.client_id must not be empty");
        }
        self.webhooks.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.api.listen, c.api.listen);
        assert_eq!(back.dedup.window, c.dedup.window);
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let text = include_str!("../herald.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn unknown_fields_and_bad_limits_are_refused() {
        assert!(toml::from_str::<Config>("[api]\nlisten_port = 3").is_err());
        let c: Config = toml::from_str("[pipeline]\nbatch_size = 100\nqueue_records = 10").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[dedup]\nwindow = \"10m\"").unwrap();
        assert_eq!(c.dedup.window, Duration::from_secs(600));
        let priority = |p: u8| toml::from_str::<Config>(&format!("[pipeline]\nrealtime_priority = {p}")).unwrap();
        assert!(priority(99).validate().is_ok());
        assert!(priority(100).validate().unwrap_err().to_string().contains("realtime_priority"));
    }

    #[test]
    fn a_route_names_one_provider_or_several_in_order() {
        let twilio = "[providers.twilio]\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n";
        let c: Config = toml::from_str(&format!("[channels]\nsms = \"twilio\"\n{twilio}")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.channels.for_route(Route::Sms).0, [ProviderKind::Twilio]);
        assert!(c.channels.for_route(Route::Apns).is_outbox());
        let c: Config = toml::from_str("[channels]\nsms = [\"twilio\", \"vonage\"]").unwrap();
        assert_eq!(c.channels.sms.0, [ProviderKind::Twilio, ProviderKind::Vonage]);
        let printed = toml::to_string(&c.channels).unwrap();
        assert!(
            printed.contains(r#"sms = ["twilio", "vonage"]"#) && printed.contains(r#"ios = "outbox""#),
            "{printed}"
        );

        let refused = |channels: &str| {
            let c: Config = toml::from_str(&format!("[channels]\n{channels}\n{twilio}")).unwrap();
            c.validate().unwrap_err().to_string()
        };
        assert!(refused("sms = []").contains("channels.sms: name at least one"));
        assert!(refused("sms = [\"outbox\", \"twilio\"]").contains("cannot be combined"));
        assert!(refused("ios = \"twilio\"").contains("channels.ios: twilio cannot send ios; use apns"));
        assert!(refused("sms = [\"twilio\", \"twilio\"]").contains("twilio is listed twice"));
        assert!(refused("email = \"sendgrid\"").contains("[providers.sendgrid]"));
        assert!(toml::from_str::<Config>("[channels]\nsms = \"pigeon\"").is_err());
    }

    #[test]
    fn unsubscribe_links_need_an_http_url_and_a_secret() {
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().validate().map_err(|e| e.to_string());
        assert!(check("[unsubscribe]\nurl = \"https://h.example/v1/unsubscribe\"\nsecret = \"k\"").is_ok());
        let err = check("[unsubscribe]\nurl = \"https://h.example/v1/unsubscribe\"").unwrap_err();
        assert!(err.contains("unsubscribe.secret"), "{err}");
        let err = check("[unsubscribe]\nurl = \"mailto:x@example.com\"\nsecret = \"k\"").unwrap_err();
        assert!(err.contains("unsubscribe.url"), "{err}");
        let err = check("[unsubscribe]\nurl = \"https://h.example/u\"\nsecret = { env = \"HERALD_UNSET_UNSUB\" }");
        assert!(err.unwrap_err().contains("HERALD_UNSET_UNSUB"));
    }
}
