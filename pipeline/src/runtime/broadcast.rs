//! Broadcasts: a request naming a `topic` becomes one notification per subscriber.
//!
//! The expander reads `herald-broadcasts` (the worker's partitions). For each broadcast, in
//! order, it reads the topic's subscribers a page at a time (`page` users: all it holds in
//! memory, whatever the number of subscribers), appends one request per subscriber to its lane's
//! topic with an `accepted` event, in one durable append per page, and then records the cursor
//! after the page. Only when every page is appended does it commit the broadcast's offset.
//!
//! Each subscriber's notification is an ordinary one from then on: its id is derived from the
//! broadcast and the user ([`NotificationId::for_subscriber`]), so a crash between a page's append
//! and its cursor appends the page again with the same ids, which dedup and the ledger absorb;
//! and it goes through the whole chain, so each subscriber's opt-outs, caps and quiet hours apply.
//! An `idempotency_key` of the broadcast becomes `<key>/<user>` on each, so a broadcast submitted
//! twice reaches each subscriber once.
//!
//! While the normal lane lags more than `lag_high_water` requests, the expander waits before its
//! next page: a million subscribers enter the pipeline at its pace, not all at once.

use super::queue::QueueRx;
use super::reader::{ReadSettings, spawn_readers};
use super::requests::{event_appends, request_appends};
use super::supervise::{TaskFailed, TaskResult};
use herald_schemas::codec::{self, CodecError};
use herald_schemas::stage::Clock;
use herald_schemas::store::{BROADCAST_DONE, SubscriptionStore};
use herald_schemas::topic::{self, StoredRecord, TopicLog};
use herald_schemas::{DeliveryEvent, EventKind, NotificationId, RequestEnvelope};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "herald-broadcast";

#[derive(Clone)]
pub struct BroadcastExpander {
    pub log: Arc<dyn TopicLog>,
    pub store: Arc<dyn SubscriptionStore>,
    /// The partitions of `herald-broadcasts` this worker expands.
    pub owned: Arc<[u32]>,
    pub partitions: u32,
    pub read: ReadSettings,
    pub clock: Arc<dyn Clock>,
    /// Subscribers read and appended per step.
    pub page: usize,
    /// The normal lane's lag, and how much of it the expander lets build before it waits.
    pub request_lag: Arc<AtomicU64>,
    pub lag_high_water: u64,
}

fn decode(record: &StoredRecord) -> Result<RequestEnvelope, CodecError> {
    codec::decode(&record.value)
}

impl BroadcastExpander {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = self.owned.iter().map(|&p| (topic::BROADCASTS.to_string(), p));
        let rx = spawn_readers("broadcast", &self.log, sources, GROUP, &self.read, decode, &token, tasks);
        tasks.spawn(self.clone().run(rx, token));
    }

    async fn run(self, mut rx: QueueRx<RequestEnvelope>, token: CancellationToken) -> TaskResult {
        while let Some(batch) = rx.recv().await {
            for broadcast in &batch.items {
                if !self.expand(broadcast, &token).await? {
                    // Stopping: the broadcast is not committed and resumes from its cursor.
                    return Ok(());
                }
            }
            let commits = batch.commits(GROUP);
            self.log.append_and_commit(Vec::new(), commits).await.map_err(|e| TaskFailed::new("broadcast", e))?;
        }
        Ok(())
    }

    /// Fans `broadcast` out from where it stands; false when stopped before the end.
    async fn expand(&self, broadcast: &RequestEnvelope, token: &CancellationToken) -> Result<bool, TaskFailed> {
        let failed = |e| TaskFailed::new("broadcast", e);
        let Some(topic_name) = broadcast.request.topic.clone() else { return Ok(true) };
        let mut cursor = self.store.broadcast_cursor(&broadcast.id).await.map_err(failed)?;
        if cursor.as_deref() == Some(BROADCAST_DONE) {
            return Ok(true);
        }
        if broadcast.expired_at(self.clock.now_ms()) {
            let event = self.event(broadcast, "", EventKind::Expired, None);
            self.append(Vec::new(), vec![event]).await?;
            self.store.set_broadcast_cursor(&broadcast.id, BROADCAST_DONE).await.map_err(failed)?;
            return Ok(true);
        }
        let mut recipients = 0u64;
        loop {
            while self.request_lag.load(Ordering::Relaxed) > self.lag_high_water {
                if token.is_cancelled() {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (users, next) =
                self.store.subscribers(&topic_name, cursor.as_deref(), self.page).await.map_err(failed)?;
            let envelopes: Vec<RequestEnvelope> =
                users.iter().map(|user| self.for_subscriber(broadcast, user)).collect();
            let reason = || Some(format!("broadcast:{}", broadcast.id));
            let events =
                envelopes.iter().map(|e| self.event(e, &e.request.user_id, EventKind::Accepted, reason())).collect();
            recipients += envelopes.len() as u64;
            crate::telemetry::broadcast_recipients(envelopes.len());
            self.append(envelopes, events).await?;
            let done = next.is_none();
            cursor = next;
            self.store
                .set_broadcast_cursor(&broadcast.id, cursor.as_deref().unwrap_or(BROADCAST_DONE))
                .await
                .map_err(failed)?;
            if done {
                tracing::info!(broadcast = %broadcast.id, topic = %topic_name, recipients, "broadcast fanned out");
                return Ok(true);
            }
            if token.is_cancelled() {
                return Ok(false);
            }
        }
    }

    fn for_subscriber(&self, broadcast: &RequestEnvelope, user: &str) -> RequestEnvelope {
        let mut request = broadcast.request.clone();
        request.user_id = user.to_string();
        request.topic = None;
        request.idempotency_key = broadcast.request.idempotency_key.as_ref().map(|k| format!("{k}/{user}"));
        let id = NotificationId::for_subscriber(&broadcast.id, user);
        let mut envelope = RequestEnvelope::new(id, broadcast.client_id.clone(), broadcast.received_at_ms, request);
        envelope.expires_at_ms = broadcast.expires_at_ms;
        envelope
    }

    fn event(&self, e: &RequestEnvelope, user: &str, kind: EventKind, reason: Option<String>) -> DeliveryEvent {
        DeliveryEvent::new(&e.id, &e.client_id, user, kind, None, reason, self.clock.now_ms())
    }

    async fn append(&self, envelopes: Vec<RequestEnvelope>, events: Vec<DeliveryEvent>) -> Result<(), TaskFailed> {
        let mut parts = request_appends(&envelopes, self.partitions);
        parts.extend(event_appends(&events, self.partitions));
        self.log.append_and_commit(parts, Vec::new()).await.map_err(|e| TaskFailed::new("broadcast", e))?;
        Ok(())
    }
}
