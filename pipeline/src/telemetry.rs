//! Telemetry: every metric name is written here once, and each thing worth
//! observing is one named event whose `emit()` updates its metric and logs
//! with structured fields, so the two cannot drift.
//!
//! Label values are bounded: stage, reason code, topic, partition, channel,
//! route. Never a user id, an address or an error message.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const STAGE_RECORDS_IN: &str = "herald_stage_records_in_total";
pub const STAGE_RECORDS_OUT: &str = "herald_stage_records_out_total";
pub const STAGE_RECORDS_DROPPED: &str = "herald_stage_records_dropped_total";
pub const STAGE_BATCH_SECONDS: &str = "herald_stage_batch_seconds";
pub const QUEUE_RECORDS: &str = "herald_queue_records";
pub const TOPIC_END_OFFSET: &str = "herald_topic_end_offset";
pub const TOPIC_COMMITTED_OFFSET: &str = "herald_topic_committed_offset";
pub const TOPIC_LAG: &str = "herald_topic_lag_records";
pub const CHANNEL_SENDS: &str = "herald_channel_sends_total";
pub const CHANNEL_SKIPPED: &str = "herald_channel_ledger_skipped_total";
pub const CHANNEL_BATCH_SECONDS: &str = "herald_channel_batch_seconds";
pub const API_REQUESTS: &str = "herald_api_requests_total";
pub const API_NOTIFICATIONS: &str = "herald_api_notifications_total";
pub const API_OVERLOADED: &str = "herald_api_overloaded_total";
pub const RETENTION_DELETED: &str = "herald_log_retention_deleted_total";
pub const RETRY_WAITING: &str = "herald_retry_waiting";
pub const BREAKER_STATE: &str = "herald_provider_breaker_state";
pub const ALERTS: &str = "herald_alerts_total";
pub const ALERTS_SUPPRESSED: &str = "herald_alerts_suppressed_total";
pub const RETRY_RELEASED: &str = "herald_retry_released_total";
pub const SCHEDULE_RELEASED: &str = "herald_schedule_released_total";
pub const SCHEDULE_LATENESS: &str = "herald_schedule_lateness_seconds";
pub const SCHEDULE_UNREADABLE: &str = "herald_schedule_unreadable_total";
pub const SCHEDULE_CANCELS_FINISHED: &str = "herald_schedule_cancels_finished_total";
pub const BROADCAST_RECIPIENTS: &str = "herald_broadcast_recipients_total";
pub const STORE_SEALED_MEMTABLES: &str = "herald_store_sealed_memtables";
pub const STORE_L0_TABLES: &str = "herald_store_l0_tables";
pub const STORE_TABLES: &str = "herald_store_tables";
pub const STORE_WRITE_BUFFER_BYTES: &str = "herald_store_write_buffer_bytes";
pub const STORE_FLUSHES_QUEUED: &str = "herald_store_flushes_queued";
pub const STORE_COMPACTIONS_ACTIVE: &str = "herald_store_compactions_active";
pub const STORE_JOURNALS: &str = "herald_store_journals";
pub const STORE_MEMTABLES_REAPED: &str = "herald_store_memtables_reaped_total";
pub const STORE_MEMTABLE_ITEMS_REAPED: &str = "herald_store_memtable_items_reaped_total";
pub const LOG_WRITE_SECONDS: &str = "herald_log_write_seconds";
pub const CHAIN_RESTARTS: &str = "herald_chain_restarts_total";
pub const RECORDS_UNDECODABLE: &str = "herald_records_undecodable_total";
pub const WEBHOOK_BATCHES_ENQUEUED: &str = "herald_webhook_batches_enqueued_total";
pub const WEBHOOK_EVENTS_ENQUEUED: &str = "herald_webhook_events_enqueued_total";
pub const WEBHOOK_BATCHES_SENT: &str = "herald_webhook_batches_sent_total";
pub const WEBHOOK_FAILURES: &str = "herald_webhook_failures_total";
pub const WEBHOOK_BATCHES_DROPPED: &str = "herald_webhook_batches_dropped_total";
pub const WEBHOOK_PENDING: &str = "herald_webhook_pending_batches";
pub const WEBHOOK_CLIENTS_FAILING: &str = "herald_webhook_clients_failing";
pub const WEBHOOK_REQUEST_SECONDS: &str = "herald_webhook_request_seconds";
pub const WEBHOOK_DELAY_SECONDS: &str = "herald_webhook_delivery_delay_seconds";

/// How often histogram samples are folded into their summaries when nobody scrapes `/metrics`.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its handle.
///
/// A recorder built this way keeps every histogram sample until it is drained, which a scrape
/// does; a thread of its own drains them every [`METRICS_UPKEEP`] (`run_upkeep`), so a process
/// nobody scrapes does not grow by a few bytes per sample forever.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (tests); our handle still renders.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let started = std::thread::Builder::new().name("herald-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = started {
            tracing::warn!(%error, "no metrics upkeep thread: histogram samples are drained only when /metrics is scraped");
        }
        handle
    })
}

/// Installs the log subscriber (stderr; `RUST_LOG` overrides `info`, the storage engine and the Fluvio client at `warn`).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,lsm_tree=warn,fjall=warn,fluvio=warn,fluvio_socket=warn,fluvio_future=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A stage finished a batch.
pub struct StageBatchProcessed<'a> {
    pub stage: &'static str,
    pub records_in: usize,
    pub records_out: usize,
    /// Stop reasons (event kinds) with their counts.
    pub dropped: &'a [(&'static str, usize)],
    pub elapsed: Duration,
}

impl StageBatchProcessed<'_> {
    pub fn emit(&self) {
        record_stage_time(self.stage, self.records_in, self.elapsed);
        counter!(STAGE_RECORDS_IN, "stage" => self.stage).increment(self.records_in as u64);
        counter!(STAGE_RECORDS_OUT, "stage" => self.stage).increment(self.records_out as u64);
        for (reason, n) in self.dropped {
            counter!(STAGE_RECORDS_DROPPED, "stage" => self.stage, "reason" => *reason).increment(*n as u64);
        }
        histogram!(STAGE_BATCH_SECONDS, "stage" => self.stage).record(self.elapsed.as_secs_f64());
        tracing::trace!(
            stage = self.stage,
            records_in = self.records_in,
            records_out = self.records_out,
            "batch processed"
        );
    }
}

/// A component's write to the topic log (append and commit) returned.
pub fn log_write(component: &'static str, records: usize, elapsed: Duration) {
    histogram!(LOG_WRITE_SECONDS, "component" => component).record(elapsed.as_secs_f64());
    record_stage_time(component, records, elapsed);
}

/// A record on one of our topics could not be decoded; it is skipped.
pub struct RecordUndecodable<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub error: herald_schemas::codec::CodecError,
}

impl RecordUndecodable<'_> {
    pub fn emit(&self) {
        counter!(RECORDS_UNDECODABLE, "topic" => self.topic.to_string()).increment(1);
        tracing::error!(topic = self.topic, partition = self.partition, offset = self.offset, error = %self.error, "undecodable record skipped");
    }
}

/// Offsets of one topic partition for one consumer group.
pub struct PartitionOffsets<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub partition: u32,
    pub end: u64,
    pub committed: u64,
}

impl PartitionOffsets<'_> {
    pub fn emit(&self) {
        let topic = self.topic.to_string();
        let partition = self.partition.to_string();
        let group = self.group.to_string();
        gauge!(TOPIC_END_OFFSET, "topic" => topic.clone(), "partition" => partition.clone()).set(self.end as f64);
        gauge!(TOPIC_COMMITTED_OFFSET, "topic" => topic.clone(), "group" => group.clone(), "partition" => partition.clone())
            .set(self.committed as f64);
        gauge!(TOPIC_LAG, "topic" => topic, "group" => group, "partition" => partition)
            .set(self.end.saturating_sub(self.committed) as f64);
    }
}

/// A channel sent a batch.
pub struct ChannelBatchSent<'a> {
    pub channel: &'a str,
    pub delivered: usize,
    pub failed: usize,
    pub retryable: usize,
    /// Deliveries found done in the ledger (replays), not sent again.
    pub skipped: usize,
    pub elapsed: Duration,
}

impl ChannelBatchSent<'_> {
    pub fn emit(&self) {
        let ch = self.channel.to_string();
        counter!(CHANNEL_SENDS, "channel" => ch.clone(), "outcome" => "delivered").increment(self.delivered as u64);
        counter!(CHANNEL_SENDS, "channel" => ch.clone(), "outcome" => "failed").increment(self.failed as u64);
        counter!(CHANNEL_SENDS, "channel" => ch.clone(), "outcome" => "retryable").increment(self.retryable as u64);
        counter!(CHANNEL_SKIPPED, "channel" => ch.clone()).increment(self.skipped as u64);
        histogram!(CHANNEL_BATCH_SECONDS, "channel" => ch).record(self.elapsed.as_secs_f64());
        tracing::debug!(
            channel = self.channel,
            delivered = self.delivered,
            failed = self.failed,
            skipped = self.skipped,
            "channel batch sent"
        );
    }
}

/// The embedded store's flush and compaction backlog (see [`StoreHealth`]).
pub fn store_health(health: &herald_connectors::embedded::StoreHealth) {
    for ks in &health.keyspaces {
        gauge!(STORE_SEALED_MEMTABLES, "keyspace" => ks.name.clone()).set(ks.sealed_memtables as f64);
        gauge!(STORE_L0_TABLES, "keyspace" => ks.name.clone()).set(ks.l0_tables as f64);
        gauge!(STORE_TABLES, "keyspace" => ks.name.clone()).set(ks.tables as f64);
    }
    gauge!(STORE_WRITE_BUFFER_BYTES).set(health.write_buffer_bytes as f64);
    gauge!(STORE_FLUSHES_QUEUED).set(health.flushes_queued as f64);
    gauge!(STORE_COMPACTIONS_ACTIVE).set(health.compactions_active as f64);
    gauge!(STORE_JOURNALS).set(health.journals as f64);
    counter!(STORE_MEMTABLES_REAPED).absolute(health.reaped.memtables);
    counter!(STORE_MEMTABLE_ITEMS_REAPED).absolute(health.reaped.items);
}

/// Records waiting in a queue between two stages.
pub fn queue_depth(queue: &'static str, records: usize) {
    gauge!(QUEUE_RECORDS, "queue" => queue).set(records as f64);
}

/// An API call finished.
pub fn api_request(route: &str, status: u16) {
    counter!(API_REQUESTS, "route" => route.to_string(), "status" => status.to_string()).increment(1);
}

/// Notifications answered by `POST /v1/notifications`.
pub fn api_notifications(accepted: usize, rejected: usize) {
    counter!(API_NOTIFICATIONS, "status" => "accepted").increment(accepted as u64);
    counter!(API_NOTIFICATIONS, "status" => "rejected").increment(rejected as u64);
}

/// The API refused work because the pipeline is behind.
pub fn api_overloaded(lag: u64) {
    counter!(API_OVERLOADED).increment(1);
    tracing::debug!(lag, "overloaded: answering 503");
}

/// An alert was raised (and sent to the webhook, if one is configured).
pub fn alert_raised(alert: &'static str, key: &str, detail: &serde_json::Value) {
    counter!(ALERTS, "alert" => alert).increment(1);
    tracing::error!(alert, key, %detail, "ALERT");
}

/// An alert was not raised again within its interval.
pub fn alert_suppressed(alert: &'static str) {
    counter!(ALERTS_SUPPRESSED, "alert" => alert).increment(1);
}

/// A provider's circuit breaker changed state (gauge: 0 closed, 1 open, 2 half-open).
pub fn breaker_state(provider: &str, state: herald_connectors::channels::breaker::BreakerState) {
    use herald_connectors::channels::breaker::BreakerState;
    gauge!(BREAKER_STATE, "provider" => provider.to_string()).set(state.as_gauge());
    match state {
        BreakerState::Open => {
            tracing::warn!(provider, "circuit breaker open: not calling the provider until a probe succeeds")
        }
        BreakerState::HalfOpen => tracing::info!(provider, "circuit breaker half-open: probing"),
        BreakerState::Closed => tracing::info!(provider, "circuit breaker closed"),
    }
}

/// Jobs the retry scheduler holds in memory, waiting for their time.
pub fn retry_waiting(waiting: usize) {
    gauge!(RETRY_WAITING).set(waiting as f64);
}

/// Jobs the retry scheduler put back on their delivery topics.
pub fn retry_released(released: usize, waiting: usize) {
    counter!(RETRY_RELEASED).increment(released as u64);
    retry_waiting(waiting);
    tracing::debug!(released, waiting, "retries released");
}

/// A hold released by the scheduler, `late_ms` after its due time.
pub fn schedule_released(reason: &'static str, late_ms: u64) {
    counter!(SCHEDULE_RELEASED, "reason" => reason).increment(1);
    histogram!(SCHEDULE_LATENESS, "reason" => reason).record(late_ms as f64 / 1000.0);
}

/// Subscribers a broadcast page reached.
pub fn broadcast_recipients(n: usize) {
    counter!(BROADCAST_RECIPIENTS).increment(n as u64);
}

/// A hold whose stored request could not be read back (dropped).
pub fn schedule_unreadable(reason: &'static str) {
    counter!(SCHEDULE_UNREADABLE, "reason" => reason).increment(1);
}

/// Cancels the scheduler finished: interrupted between taking the hold and appending its event.
pub fn schedule_cancels_finished(n: usize) {
    counter!(SCHEDULE_CANCELS_FINISHED).increment(n as u64);
    if n > 0 {
        tracing::info!(holds = n, "finished cancels interrupted before their cancelled event");
    }
}

pub fn retention_deleted(records: u64) {
    counter!(RETENTION_DELETED).increment(records);
    if records > 0 {
        tracing::debug!(records, "retention deleted consumed records");
    }
}

/// The webhook collector wrote batches of outcome events to the outbox.
pub struct WebhookBatchesEnqueued {
    pub partition: u32,
    pub batches: usize,
    pub events: usize,
}

impl WebhookBatchesEnqueued {
    pub fn emit(&self) {
        counter!(WEBHOOK_BATCHES_ENQUEUED).increment(self.batches as u64);
        counter!(WEBHOOK_EVENTS_ENQUEUED).increment(self.events as u64);
        tracing::debug!(
            partition = self.partition,
            batches = self.batches,
            events = self.events,
            "webhook batches enqueued"
        );
    }
}

/// A receiver accepted a batch (2xx).
pub struct WebhookBatchSent<'a> {
    pub client_id: &'a str,
    pub batch_id: &'a str,
    pub events: u32,
    pub status: u16,
    /// The POST's duration.
    pub elapsed: Duration,
    /// From the batch's making to its acceptance (waits for the receiver included).
    pub age: Duration,
}

impl WebhookBatchSent<'_> {
    pub fn emit(&self) {
        counter!(WEBHOOK_BATCHES_SENT).increment(1);
        histogram!(WEBHOOK_REQUEST_SECONDS).record(self.elapsed.as_secs_f64());
        histogram!(WEBHOOK_DELAY_SECONDS).record(self.age.as_secs_f64());
        tracing::debug!(
            client_id = self.client_id,
            batch_id = self.batch_id,
            events = self.events,
            status = self.status,
            ms = self.elapsed.as_millis() as u64,
            "webhook batch delivered"
        );
    }
}

/// A POST of a batch failed; it is sent again after `retry_in`.
pub struct WebhookAttemptFailed<'a> {
    pub client_id: &'a str,
    pub batch_id: &'a str,
    pub error: &'a herald_connectors::webhooks::WebhookError,
    /// The client's failures in a row, this one included.
    pub failures: u32,
    pub retry_in: Duration,
}

impl WebhookAttemptFailed<'_> {
    pub fn emit(&self) {
        counter!(WEBHOOK_FAILURES, "class" => self.error.class()).increment(1);
        let retry_in_ms = self.retry_in.as_millis() as u64;
        // The first failure of a run is worth a warning; the retries that follow, a debug line.
        if self.failures == 1 {
            tracing::warn!(client_id = self.client_id, batch_id = self.batch_id, error = %self.error, retry_in_ms, "webhook delivery failed; retrying");
        } else {
            tracing::debug!(client_id = self.client_id, batch_id = self.batch_id, error = %self.error, failures = self.failures, retry_in_ms, "webhook delivery failed again");
        }
    }
}

/// A batch was given up: too old (`max_age`), or unreadable.
pub struct WebhookBatchDropped<'a> {
    pub client_id: &'a str,
    pub batch_id: &'a str,
    pub events: u32,
    pub age: Duration,
    /// The last failure's class (a bounded label).
    pub class: &'static str,
    pub last_error: &'a str,
}

impl WebhookBatchDropped<'_> {
    pub fn emit(&self) {
        counter!(WEBHOOK_BATCHES_DROPPED, "class" => self.class).increment(1);
        tracing::error!(
            client_id = self.client_id,
            batch_id = self.batch_id,
            events = self.events,
            age_s = self.age.as_secs(),
            last_error = self.last_error,
            "webhook batch dropped: not accepted within webhooks.max_age"
        );
    }
}

/// Batches waiting in this worker's webhook outbox (approximate between recounts).
pub fn webhook_pending(batches: i64) {
    gauge!(WEBHOOK_PENDING).set(batches.max(0) as f64);
}

/// A client's receiver started (true) or stopped (false) failing.
pub fn webhook_client_failing(failing: bool) {
    let gauge = gauge!(WEBHOOK_CLIENTS_FAILING);
    if failing { gauge.increment(1.0) } else { gauge.decrement(1.0) }
}

/// Cumulative time and records per stage in this process (for `herald bench`).
static STAGE_TOTALS: std::sync::Mutex<Vec<StageTotal>> = std::sync::Mutex::new(Vec::new());

/// What one stage did in this process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTotal {
    pub stage: &'static str,
    pub batches: u64,
    pub records: u64,
    #[serde(serialize_with = "as_ms")]
    pub busy: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn record_stage_time(stage: &'static str, records: usize, elapsed: Duration) {
    let Ok(mut totals) = STAGE_TOTALS.lock() else { return };
    match totals.iter_mut().find(|t| t.stage == stage) {
        Some(t) => {
            t.batches += 1;
            t.records += records as u64;
            t.busy += elapsed;
        }
        None => totals.push(StageTotal { stage, batches: 1, records: records as u64, busy: elapsed }),
    }
}

/// Every stage that ran, in first-seen order.
pub fn stage_totals() -> Vec<StageTotal> {
    STAGE_TOTALS.lock().map(|t| t.clone()).unwrap_or_default()
}
