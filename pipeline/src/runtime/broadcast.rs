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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::supervise::supervise;
    use async_trait::async_trait;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::stage::SystemClock;
    use herald_schemas::store::StoreError;
    use herald_schemas::topic::{Append, Record};
    use herald_schemas::{ChannelKind, NotificationRequest};
    use std::sync::atomic::AtomicUsize;

    /// The embedded store, remembering the largest page asked for.
    struct Counting {
        db: Arc<EmbeddedDb>,
        largest_page: AtomicUsize,
    }

    #[async_trait]
    impl SubscriptionStore for Counting {
        async fn set_topics(&self, user: &str, topics: &[String]) -> Result<Vec<String>, StoreError> {
            self.db.set_topics(user, topics).await
        }
        async fn topics_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
            self.db.topics_of(user).await
        }
        async fn subscribers(
            &self,
            topic: &str,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<(Vec<String>, Option<String>), StoreError> {
            self.largest_page.fetch_max(limit, Ordering::SeqCst);
            self.db.subscribers(topic, cursor, limit).await
        }
        async fn broadcast_cursor(&self, id: &NotificationId) -> Result<Option<String>, StoreError> {
            self.db.broadcast_cursor(id).await
        }
        async fn set_broadcast_cursor(&self, id: &NotificationId, cursor: &str) -> Result<(), StoreError> {
            self.db.set_broadcast_cursor(id, cursor).await
        }
    }

    #[tokio::test]
    async fn a_broadcast_is_fanned_out_a_page_at_a_time_once_per_follower() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("db"), EmbeddedOptions::default()).unwrap());
        for name in [topic::BROADCASTS, topic::REQUESTS, topic::REQUESTS_PRIORITY, topic::EVENTS] {
            db.ensure_topic(name, 1).await.unwrap();
        }
        for u in 0..2_500 {
            db.set_topics(&format!("u{u:04}"), &["news".to_string()]).await.unwrap();
        }
        let store = Arc::new(Counting { db: db.clone(), largest_page: AtomicUsize::new(0) });
        let request = NotificationRequest {
            user_id: String::new(),
            topic: Some("news".into()),
            template: "t".into(),
            data: serde_json::json!({}),
            channels: vec![ChannelKind::Sms],
            fallback: Vec::new(),
            category: "news".into(),
            idempotency_key: Some("k".into()),
            locale: None,
            send_at: None,
            expires_at: None,
            ttl: None,
            digest: None,
        };
        let broadcast = RequestEnvelope::new(NotificationId("b1".into()), "c".into(), 1, request);
        let record = Record { key: b"b1".to_vec(), value: codec::encode(&broadcast) };
        db.append(vec![Append { topic: topic::BROADCASTS.into(), partition: 0, records: vec![record] }]).await.unwrap();

        let expander = BroadcastExpander {
            log: db.clone(),
            store: store.clone(),
            owned: Arc::from([0]),
            partitions: 1,
            read: ReadSettings {
                batch_size: 10,
                read_wait: Duration::from_millis(20),
                queue_records: 10,
                linger: Duration::ZERO,
            },
            clock: Arc::new(SystemClock),
            page: 1_000,
            request_lag: Arc::new(AtomicU64::new(0)),
            lag_high_water: 1_000,
        };
        let run = |e: BroadcastExpander| async move {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(supervise("broadcast", shutdown.clone(), move |t, set| e.start(t, set)));
            tokio::time::sleep(Duration::from_millis(500)).await;
            shutdown.cancel();
            task.await.unwrap();
        };
        run(expander.clone()).await;
        let requests = db.read(topic::REQUESTS, 0, 0, 10_000, Duration::ZERO).await.unwrap();
        assert_eq!(requests.len(), 2_500, "one request per follower");
        assert_eq!(store.largest_page.load(Ordering::SeqCst), 1_000, "never more than a page");
        let first: RequestEnvelope = codec::decode(&requests[0].value).unwrap();
        assert_eq!(first.id, NotificationId::for_subscriber(&broadcast.id, "u0000"));
        assert_eq!((first.request.user_id.as_str(), first.request.topic.as_deref()), ("u0000", None));
        assert_eq!(first.request.idempotency_key.as_deref(), Some("k/u0000"));
        assert_eq!(db.broadcast_cursor(&broadcast.id).await.unwrap().as_deref(), Some(BROADCAST_DONE));
        assert_eq!(db.committed(GROUP, topic::BROADCASTS, 0).await.unwrap(), 1);

        // Replayed (the offset not committed, the cursor done): nothing is appended again.
        db.commit(GROUP, topic::BROADCASTS, 0, 0).await.unwrap();
        run(expander).await;
        assert_eq!(db.read(topic::REQUESTS, 0, 0, 10_000, Duration::ZERO).await.unwrap().len(), 2_500);
    }
}
