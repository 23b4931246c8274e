//! The senders: the webhook outbox → signed POSTs.
//!
//! A manager keeps one task per registered client (started when a registration appears, stopped
//! when it goes). A client's task goes round the owned partitions, taking a page of at most
//! [`PAGE`] batches of each, and delivers them one at a time, in order: a partition's batches
//! are never reordered, and the next is not sent before the one before it was accepted or given
//! up. A failure (any non-2xx, a timeout, a refused connection) waits `backoff` — exponential in
//! the client's failures in a row, random below its ceiling, at least `backoff_min`, at least the
//! receiver's `Retry-After` (capped at `backoff_max`) — and sends the same batch again. A batch
//! still failing `max_age` after it was made is dropped: removed from the outbox, logged, counted,
//! alerted.
//!
//! Memory stays bounded: a task holds one page; the backlog stays on disk. Nothing here writes
//! to the log or commits: a sender's failure to reach the store is logged and retried.

use super::{Shared, Snapshot, WebhooksConfig, first_snapshot};
use crate::alerts::Alerts;
use crate::runtime::supervise::TaskResult;
use crate::telemetry::{WebhookAttemptFailed, WebhookBatchDropped, WebhookBatchSent};
use herald_connectors::webhooks::{Attempt, WebhookClient, WebhookError};
use herald_schemas::stage::Clock;
use herald_schemas::store::WebhookStore;
use herald_schemas::webhook::{WebhookBatch, WebhookRegistration, WebhookStatus};
use herald_stages::retry::RetryPolicy;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Batches a sender reads from one partition at a time.
pub const PAGE: usize = 16;
/// How long an idle sender waits before looking again without being woken (a safety net: the
/// collector wakes it when it enqueues).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Batches counted per (client, partition) for the pending gauge.
const COUNT_CAP: usize = 1_000_000;
/// A success updates the stored status at most this often (a failure always does).
const SUCCESS_STATUS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Senders {
    pub store: Arc<dyn WebhookStore>,
    pub client: WebhookClient,
    pub registrations: watch::Receiver<Snapshot>,
    pub shared: Arc<Shared>,
    /// The partitions of `herald-events` this worker owns: it sends what it collected.
    pub partitions: Arc<[u32]>,
    pub config: WebhooksConfig,
    pub alerts: Arc<Alerts>,
    pub clock: Arc<dyn Clock>,
}

/// What became of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Sent,
    Dropped,
    /// The sender is stopping (shutdown, or the registration is gone); the batch stays.
    Stopped,
}

/// The delay before the next attempt after `failures` failures in a row.
pub fn backoff(config: &WebhooksConfig, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let policy =
        RetryPolicy { base_delay: config.backoff_min, max_delay: config.backoff_max, ..RetryPolicy::default() };
    let asked = retry_after.map(|r| r.min(config.backoff_max));
    policy.delay(failures, asked, jitter).max(config.backoff_min)
}

impl Senders {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        tasks.spawn(self.clone().manage(token));
    }

    /// Keeps one sender per registered client until `token`.
    async fn manage(self, token: CancellationToken) -> TaskResult {
        let mut registrations = self.registrations.clone();
        if first_snapshot(&mut registrations, &token).await.is_none() {
            return Ok(());
        }
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut senders = JoinSet::new();
        loop {
            let clients: HashSet<String> =
                registrations.borrow_and_update().as_ref().map(|s| s.keys().cloned().collect()).unwrap_or_default();
            let before = running.len();
            running.retain(|client, stop| {
                let keep = clients.contains(client);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            let stopped = before != running.len();
            let mut started = false;
            for client in clients {
                if running.contains_key(&client) {
                    continue;
                }
                let stop = token.child_token();
                running.insert(client.clone(), stop.clone());
                senders.spawn(self.clone().run(client, stop));
                started = true;
            }
            if started || stopped {
                self.recount(running.keys()).await;
            }
            tokio::select! {
                _ = token.cancelled() => break,
                changed = registrations.changed() => if changed.is_err() { break },
                Some(joined) = senders.join_next() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "a webhook sender panicked");
                    }
                }
            }
        }
        for stop in running.values() {
            stop.cancel();
        }
        while senders.join_next().await.is_some() {}
        Ok(())
    }

    /// Sets the pending gauge from the outbox (counting up to [`COUNT_CAP`] per partition).
    async fn recount(&self, clients: impl Iterator<Item = &String>) {
        let mut total = 0usize;
        for client in clients {
            for &partition in self.partitions.iter() {
                match self.store.count_webhook_batches(client, partition, COUNT_CAP).await {
                    Ok(n) => total += n,
                    Err(error) => {
                        tracing::warn!(%error, "cannot count pending webhook batches");
                        return;
                    }
                }
            }
        }
        self.shared.set_pending(total as i64);
    }

    fn registration(&self, client_id: &str) -> Option<WebhookRegistration> {
        self.registrations.borrow().as_ref().and_then(|s| s.get(client_id).cloned())
    }

    /// One client's sender: round the owned partitions, a page of each, until `stop`.
    async fn run(self, client_id: String, stop: CancellationToken) {
        let wake = self.shared.waker(&client_id);
        let mut next: HashMap<u32, u64> = self.partitions.iter().map(|&p| (p, 0)).collect();
        let mut state = ClientState::new(self.store.webhook_status(&client_id).await.ok().flatten());
        tracing::debug!(client_id, "webhook sender started");
        loop {
            let mut busy = false;
            for &partition in self.partitions.iter() {
                let from = next.get(&partition).copied().unwrap_or(0);
                let below = self.shared.sendable(partition);
                let page = match self.store.pending_webhook_batches(&client_id, partition, from, below, PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%error, client_id, partition, "cannot read the webhook outbox; trying again");
                        busy = false;
                        break;
                    }
                };
                for batch in page {
                    match self.deliver(&batch, &mut state, &stop).await {
                        Fate::Sent | Fate::Dropped => {
                            next.insert(partition, batch.first_offset + 1);
                            busy = true;
                        }
                        Fate::Stopped => return self.stopped(&client_id, &state),
                    }
                }
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return self.stopped(&client_id, &state),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    fn stopped(&self, client_id: &str, state: &ClientState) {
        if state.status.consecutive_failures > 0 {
            crate::telemetry::webhook_client_failing(false);
        }
        tracing::debug!(client_id, "webhook sender stopped");
    }

    /// Sends one batch until it is accepted, given up, or the sender stops.
    async fn deliver(&self, batch: &WebhookBatch, state: &mut ClientState, stop: &CancellationToken) -> Fate {
        let client_id = batch.client_id.as_str();
        let Some(batch_id) = batch.id() else {
            tracing::error!(
                client_id,
                partition = batch.partition,
                offset = batch.first_offset,
                "webhook batch without an id: dropped"
            );
            return self.drop_batch(batch, "unreadable", "the stored body has no id").await;
        };
        loop {
            let Some(registration) = self.registration(client_id) else { return Fate::Stopped };
            let now_ms = self.clock.now_ms();
            let attempt = Attempt {
                url: &registration.url,
                secret: &registration.secret,
                batch_id: &batch_id,
                body: &batch.body,
                unix_seconds: now_ms / 1000,
            };
            let started = Instant::now();
            let result = tokio::select! {
                _ = stop.cancelled() => return Fate::Stopped,
                result = self.client.send(attempt) => result,
            };
            match result {
                Ok(status) => {
                    if let Err(error) =
                        self.store.ack_webhook_batch(client_id, batch.partition, batch.first_offset).await
                    {
                        // It goes again (same id) when this sender next starts; the receiver dedupes.
                        tracing::warn!(%error, client_id, %batch_id, "webhook batch sent but not removed from the outbox");
                    }
                    self.shared.add_pending(-1);
                    let age = Duration::from_millis(self.clock.now_ms().saturating_sub(batch.created_at_ms));
                    WebhookBatchSent {
                        client_id,
                        batch_id: &batch_id,
                        events: batch.events,
                        status,
                        elapsed: started.elapsed(),
                        age,
                    }
                    .emit();
                    if let Some(status) = state.succeeded(now_ms) {
                        self.record_status(client_id, &status).await;
                    }
                    return Fate::Sent;
                }
                Err(error) => {
                    let failures = state.failed(now_ms, &error);
                    self.record_status(client_id, &state.status).await;
                    let age = Duration::from_millis(now_ms.saturating_sub(batch.created_at_ms));
                    if age > self.config.max_age {
                        return self.drop_batch(batch, error.class(), &error.to_string()).await;
                    }
                    let delay = backoff(&self.config, failures, error.retry_after(), rand::random::<f64>());
                    WebhookAttemptFailed { client_id, batch_id: &batch_id, error: &error, failures, retry_in: delay }
                        .emit();
                    tokio::select! {
                        _ = stop.cancelled() => return Fate::Stopped,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn drop_batch(&self, batch: &WebhookBatch, class: &'static str, last_error: &str) -> Fate {
        let client_id = batch.client_id.as_str();
        if let Err(error) = self.store.ack_webhook_batch(client_id, batch.partition, batch.first_offset).await {
            tracing::warn!(%error, client_id, "cannot remove a dropped webhook batch; it will be tried again");
        }
        self.shared.add_pending(-1);
        let age = Duration::from_millis(self.clock.now_ms().saturating_sub(batch.created_at_ms));
        let batch_id = batch.id().unwrap_or_default();
        WebhookBatchDropped { client_id, batch_id: &batch_id, events: batch.events, age, class, last_error }.emit();
        self.alerts.webhook_dropped(client_id, &batch_id, batch.events, age);
        Fate::Dropped
    }

    async fn record_status(&self, client_id: &str, status: &WebhookStatus) {
        if let Err(error) = self.store.record_webhook_status(client_id, status).await {
            tracing::debug!(%error, client_id, "cannot record the webhook delivery status");
        }
    }
}

/// A client's delivery status as its sender keeps it.
struct ClientState {
    status: WebhookStatus,
    /// When a success was last written to the store.
    success_written: Option<Instant>,
}

impl ClientState {
    fn new(stored: Option<WebhookStatus>) -> Self {
        // Failures before this sender started are history: its backoff starts afresh.
        let status = WebhookStatus { consecutive_failures: 0, ..stored.unwrap_or_default() };
        Self { status, success_written: None }
    }

    /// Records a success; the status to store, if it is time to.
    fn succeeded(&mut self, now_ms: u64) -> Option<WebhookStatus> {
        let recovered = self.status.consecutive_failures > 0;
        if recovered {
            crate::telemetry::webhook_client_failing(false);
        }
        self.status.consecutive_failures = 0;
        self.status.last_success_at_ms = Some(now_ms);
        let due = recovered || self.success_written.is_none_or(|at| at.elapsed() >= SUCCESS_STATUS_EVERY);
        if !due {
            return None;
        }
        self.success_written = Some(Instant::now());
        Some(self.status.clone())
    }

    /// Records a failure; the failures in a row.
    fn failed(&mut self, now_ms: u64, error: &WebhookError) -> u32 {
        if self.status.consecutive_failures == 0 {
            crate::telemetry::webhook_client_failing(true);
        }
        self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        self.status.last_error = Some(error.to_string());
        self.status.last_error_at_ms = Some(now_ms);
        self.status.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhooksConfig {
        WebhooksConfig {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_under_a_cap_with_jitter_and_a_floor() {
        let c = config();
        assert_eq!(backoff(&c, 1, None, 0.0), Duration::from_secs(1), "never below backoff_min");
        assert_eq!(backoff(&c, 1, None, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, 4, None, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(&c, 4, None, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(&c, 30, None, 1.0), Duration::from_secs(300), "capped at backoff_max");
        assert_eq!(backoff(&c, u32::MAX, None, 1.0), Duration::from_secs(300));
        // A receiver's Retry-After is a floor, itself capped at backoff_max.
        assert_eq!(backoff(&c, 1, Some(Duration::from_secs(30)), 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&c, 1, Some(Duration::from_secs(86_400)), 0.0), Duration::from_secs(300));
    }

    #[test]
    fn the_status_counts_failures_in_a_row_and_a_success_resets_them() {
        let mut state = ClientState::new(Some(WebhookStatus { consecutive_failures: 9, ..WebhookStatus::default() }));
        assert_eq!(state.status.consecutive_failures, 0, "a new sender starts its backoff afresh");
        let refused = WebhookError::Status { status: 503, retry_after: None };
        assert_eq!(state.failed(10, &refused), 1);
        assert_eq!(state.failed(20, &WebhookError::Timeout(Duration::from_secs(10))), 2);
        assert_eq!(state.status.last_error.as_deref(), Some("timed out after 10s"));
        assert_eq!(state.status.last_error_at_ms, Some(20));
        let written = state.succeeded(30).expect("a recovery is always written");
        assert_eq!((written.consecutive_failures, written.last_success_at_ms), (0, Some(30)));
        assert_eq!(written.last_error_at_ms, Some(20), "the last error stays as history");
        assert!(state.succeeded(31).is_none(), "successes are written at most once a second");
    }
}
