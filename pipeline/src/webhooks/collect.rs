//! The collector: `herald-events` → batches of outcome events in the webhook outbox.
//!
//! One task per owned partition (consumer group [`GROUP`]), so a partition's position moves
//! with its own writes only. For each batch read it:
//! 1. keeps the events at or past the partition's position that are outcomes of a client with a
//!    webhook and not a repeat of a recent event id ([`select`]);
//! 2. groups them per client, in log order, into batches of at most `batch_events`
//!    ([`make_batches`]), each keyed by the offset of its first event;
//! 3. enqueues the batches with the new position, durably, then publishes the position to the
//!    senders and wakes the clients it wrote for;
//! 4. commits its offset (ordered: a commit lost in a crash replays events the position skips).
//!
//! On start it drops the batches an unfinished write may have left past the position, and
//! refills its window of recent event ids from the log just below the position.

use super::{Shared, Snapshot, first_snapshot};
use crate::runtime::queue::QueueRx;
use crate::runtime::reader::{ReadSettings, spawn_readers};
use crate::runtime::recent::Recent;
use crate::runtime::supervise::{TaskFailed, TaskResult};
use crate::telemetry::{RecordUndecodable, WebhookBatchesEnqueued};
use herald_schemas::codec::{self, CodecError};
use herald_schemas::stage::Clock;
use herald_schemas::store::{StoreError, WebhookStore};
use herald_schemas::topic::{self, StoredRecord, TopicLog};
use herald_schemas::webhook::{WebhookBatch, WebhookRegistration};
use herald_schemas::{DeliveryEvent, EncodedEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The consumer group of the webhook collectors on `herald-events`.
pub const GROUP: &str = "herald-webhooks";

/// Records read per call when refilling the window of recent ids.
const REFILL_CHUNK: usize = 4096;

#[derive(Clone)]
pub struct Collector {
    pub log: Arc<dyn TopicLog>,
    pub store: Arc<dyn WebhookStore>,
    pub registrations: watch::Receiver<Snapshot>,
    pub shared: Arc<Shared>,
    /// The partitions of `herald-events` this worker owns.
    pub partitions: Arc<[u32]>,
    pub read: ReadSettings,
    pub batch_events: usize,
    pub linger: Duration,
    pub dedup_window: usize,
    pub clock: Arc<dyn Clock>,
}

/// The record's offset and bytes: most events belong to no webhook, so they are decoded only
/// when some client has one.
fn record(record: &StoredRecord) -> Result<(u64, Vec<u8>), CodecError> {
    Ok((record.offset, record.value.clone()))
}

fn failed(error: impl std::error::Error + Send + Sync + 'static) -> TaskFailed {
    TaskFailed::new("webhooks", error)
}

impl Collector {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        for &partition in self.partitions.iter() {
            let source = [(topic::EVENTS.to_string(), partition)];
            let rx = spawn_readers("webhooks", &self.log, source, GROUP, &self.read, record, &token, tasks);
            tasks.spawn(self.clone().run(partition, rx, token.clone()));
        }
    }

    async fn run(self, partition: u32, mut rx: QueueRx<(u64, Vec<u8>)>, token: CancellationToken) -> TaskResult {
        let mut registrations = self.registrations.clone();
        // An outcome of a registered client must never be skipped for not knowing the client yet.
        let Some(known) = first_snapshot(&mut registrations, &token).await else { return Ok(()) };
        let mut position = self.resume(partition, &known).await.map_err(failed)?;
        let mut recent = self.refill(partition, position).await?;
        self.shared.set_sendable(partition, position);
        self.shared.wake_all();
        tracing::debug!(partition, position, "webhook collector resumed");

        while let Some(batch) = rx.recv_merged(self.read.batch_size, self.linger).await {
            let commits = batch.commits(GROUP);
            let next = commits.iter().map(|c| c.next_offset).max().unwrap_or(position);
            let snapshot = registrations.borrow().clone().unwrap_or_default();
            let events = select(batch.items, position, &snapshot, &mut recent, partition);
            if !events.is_empty() {
                let made = make_batches(partition, &events, &snapshot, self.batch_events, self.clock.now_ms());
                self.store.enqueue_webhook_batches(partition, &made, next).await.map_err(failed)?;
                position = next;
                self.shared.set_sendable(partition, position);
                self.shared.add_pending(made.len() as i64);
                for batch in &made {
                    self.shared.wake(&batch.client_id);
                }
                WebhookBatchesEnqueued { partition, batches: made.len(), events: events.len() }.emit();
            }
            // Ordered, not waited for: the enqueue above is durable, and a lost commit replays
            // events below the position, which are skipped.
            self.log.commit_ordered(commits).await.map_err(failed)?;
        }
        Ok(())
    }

    /// The partition's position, once the batches an unfinished enqueue may have left at or past
    /// it are gone.
    async fn resume(&self, partition: u32, known: &HashMap<String, WebhookRegistration>) -> Result<u64, StoreError> {
        let position = self.store.webhook_position(partition).await?.unwrap_or(0);
        for client in known.keys() {
            self.store.drop_webhook_batches(client, partition, position).await?;
        }
        Ok(position)
    }

    /// The ids of the events just below `position`: a replayed copy of one of them, met past
    /// the position, is not sent again.
    async fn refill(&self, partition: u32, position: u64) -> Result<Recent, TaskFailed> {
        let mut recent = Recent::new(self.dedup_window);
        let mut from = position.saturating_sub(self.dedup_window as u64);
        while from < position {
            let want = REFILL_CHUNK.min((position - from) as usize);
            let records = self.log.read(topic::EVENTS, partition, from, want, Duration::ZERO).await.map_err(failed)?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in records.iter().filter(|r| r.offset < position) {
                if let Some(event) = EncodedEvent::from_record(&r.key, Vec::new()) {
                    recent.first_time(&event.event_id);
                }
            }
        }
        Ok(recent)
    }
}

/// The events of `records` (offset, encoded event) a webhook wants, in log order: at or past
/// `position`, outcomes, of a client in `registrations`, and not a repeat of a recent id.
pub fn select(
    records: Vec<(u64, Vec<u8>)>,
    position: u64,
    registrations: &HashMap<String, WebhookRegistration>,
    recent: &mut Recent,
    partition: u32,
) -> Vec<(u64, DeliveryEvent)> {
    if registrations.is_empty() {
        return Vec::new();
    }
    let mut events = Vec::new();
    for (offset, bytes) in records {
        if offset < position {
            continue;
        }
        let event: DeliveryEvent = match codec::decode(&bytes) {
            Ok(event) => event,
            Err(error) => {
                RecordUndecodable { topic: topic::EVENTS, partition, offset, error }.emit();
                continue;
            }
        };
        if event.kind.is_outcome() && registrations.contains_key(&event.client_id) && recent.first_time(&event.event_id)
        {
            events.push((offset, event));
        }
    }
    events
}

/// The batches of `events` (in log order): per client, in order of first appearance, runs of at
/// most `batch_events`, each keyed by its first event's offset.
pub fn make_batches(
    partition: u32,
    events: &[(u64, DeliveryEvent)],
    registrations: &HashMap<String, WebhookRegistration>,
    batch_events: usize,
    now_ms: u64,
) -> Vec<WebhookBatch> {
    let mut per_client: Vec<(&str, Vec<&(u64, DeliveryEvent)>)> = Vec::new();
    for item in events {
        let client = item.1.client_id.as_str();
        match per_client.iter_mut().find(|(c, _)| *c == client) {
            Some((_, items)) => items.push(item),
            None => per_client.push((client, vec![item])),
        }
    }
    let mut batches = Vec::new();
    for (client, items) in per_client {
        let Some(registration) = registrations.get(client) else { continue };
        for run in items.chunks(batch_events.max(1)) {
            let first_offset = run[0].0;
            let events: Vec<DeliveryEvent> = run.iter().map(|(_, e)| e.clone()).collect();
            batches.push(WebhookBatch::new(registration, partition, first_offset, now_ms, &events));
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::EventKind;
    use herald_schemas::ids::NotificationId;
    use herald_schemas::stage::SystemClock;
    use herald_schemas::topic::{Append, Record};

    fn registrations(clients: &[&str]) -> HashMap<String, WebhookRegistration> {
        clients
            .iter()
            .map(|c| {
                let r = WebhookRegistration {
                    client_id: c.to_string(),
                    url: format!("https://{c}.example/hook"),
                    secret: "whsec_x".into(),
                    created_at_ms: 1,
                    updated_at_ms: 1,
                };
                (c.to_string(), r)
            })
            .collect()
    }

    fn event(n: &str, client: &str, kind: EventKind) -> DeliveryEvent {
        DeliveryEvent::new(&NotificationId(n.into()), client, "u1", kind, None, None, 10)
    }

    fn encoded(offset: u64, e: &DeliveryEvent) -> (u64, Vec<u8>) {
        (offset, codec::encode(e))
    }

    #[test]
    fn only_new_outcomes_of_registered_clients_are_selected_each_id_once() {
        let regs = registrations(&["acme"]);
        let sent = event("n1", "acme", EventKind::Sent);
        let records = vec![
            encoded(9, &event("n0", "acme", EventKind::Failed)), // below the position
            encoded(10, &event("n1", "acme", EventKind::Accepted)), // not an outcome
            encoded(11, &sent),
            encoded(12, &event("n2", "other", EventKind::Sent)), // no webhook
            encoded(13, &sent),                                  // a replayed copy
            (14, vec![0xff, 1, 2]),                              // undecodable: skipped
            encoded(15, &event("n3", "acme", EventKind::Throttled)),
        ];
        let mut recent = Recent::new(100);
        let picked = select(records.clone(), 10, &regs, &mut recent, 0);
        let offsets: Vec<u64> = picked.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [11, 15]);
        assert_eq!(picked[0].1, sent);
        // Nobody registered: nothing is decoded or kept.
        assert!(select(records, 0, &HashMap::new(), &mut Recent::new(10), 0).is_empty());
    }

    #[test]
    fn batches_are_per_client_in_log_order_at_most_n_events_keyed_by_their_first_offset() {
        let regs = registrations(&["a", "b"]);
        let events: Vec<(u64, DeliveryEvent)> = [(3, "a"), (4, "b"), (5, "a"), (8, "a"), (9, "b")]
            .into_iter()
            .map(|(o, c)| (o, event(&format!("n{o}"), c, EventKind::Sent)))
            .collect();
        let batches = make_batches(2, &events, &regs, 2, 77);
        let shape: Vec<(&str, u64, u32)> =
            batches.iter().map(|b| (b.client_id.as_str(), b.first_offset, b.events)).collect();
        assert_eq!(shape, [("a", 3, 2), ("a", 8, 1), ("b", 4, 2)]);
        assert!(batches.iter().all(|b| b.partition == 2 && b.created_at_ms == 77));
        let body: serde_json::Value = serde_json::from_slice(&batches[0].body).unwrap();
        let ids: Vec<&str> =
            body["events"].as_array().unwrap().iter().map(|e| e["notification_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["n3", "n5"]);
        // The same events make the same batches (ids included) whenever they are made.
        let again = make_batches(2, &events, &regs, 2, 99);
        assert_eq!(
            again.iter().map(WebhookBatch::id).collect::<Vec<_>>(),
            batches.iter().map(WebhookBatch::id).collect::<Vec<_>>()
        );
    }

    async fn append(db: &EmbeddedDb, events: &[DeliveryEvent]) {
        let records =
            events.iter().map(EncodedEvent::encode).map(|e| Record { key: e.record_key(), value: e.bytes }).collect();
        db.append(vec![Append { topic: topic::EVENTS.into(), partition: 0, records }]).await.unwrap();
    }

    /// The event ids in the client's outbox, batch by batch.
    async fn outbox(db: &EmbeddedDb) -> Vec<Vec<String>> {
        let batches = db.pending_webhook_batches("acme", 0, 0, u64::MAX, 1000).await.unwrap();
        batches
            .iter()
            .map(|b| {
                let body: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
                body["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect()
            })
            .collect()
    }

    /// Runs the collector until the outbox holds `batches` batches (and a little longer, so a
    /// batch too many would show), then stops it.
    async fn collect_until(db: &EmbeddedDb, shared: &Arc<Shared>, batches: usize) {
        let (_tx, registrations) = watch::channel(Some(Arc::new(registrations(&["acme"]))));
        let collector = Collector {
            log: Arc::new(db.clone()),
            store: Arc::new(db.clone()),
            registrations,
            shared: shared.clone(),
            partitions: Arc::from([0u32]),
            read: ReadSettings {
                batch_size: 100,
                read_wait: Duration::from_millis(20),
                queue_records: 1000,
                linger: Duration::ZERO,
            },
            batch_events: 2,
            linger: Duration::ZERO,
            dedup_window: 100,
            clock: Arc::new(SystemClock),
        };
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        collector.start(token.clone(), &mut tasks);
        let started = std::time::Instant::now();
        while outbox(db).await.len() < batches {
            assert!(started.elapsed() < Duration::from_secs(10), "outbox: {:?}", outbox(db).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_replay_after_a_lost_commit_enqueues_no_event_twice() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions { default_partitions: 1, ..EmbeddedOptions::default() })
            .unwrap();
        db.ensure_topic(topic::EVENTS, 1).await.unwrap();
        let shared = Arc::new(Shared::new(1));
        let sent: Vec<DeliveryEvent> = (0..5).map(|i| event(&format!("n{i}"), "acme", EventKind::Sent)).collect();
        let mut first = vec![event("n0", "acme", EventKind::Accepted)];
        first.extend(sent.iter().cloned());
        append(&db, &first).await;
        collect_until(&db, &shared, 3).await;
        let ids = |batches: Vec<Vec<String>>| batches.concat();
        let want: Vec<String> = sent.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids(outbox(&db).await), want);
        assert_eq!(db.webhook_position(0).await.unwrap(), Some(6));
        assert_eq!(shared.sendable(0), 6);

        // A crash lost the offset commit (the enqueue was durable): the collector reads from the
        // start again. Meanwhile a stage replayed n2's outcome (same event id) and a new one came.
        db.commit(GROUP, topic::EVENTS, 0, 0).await.unwrap();
        let later = event("n9", "acme", EventKind::Failed);
        append(&db, &[sent[2].clone(), later.clone()]).await;
        collect_until(&db, &shared, 4).await;
        let mut want = want;
        want.push(later.event_id.clone());
        assert_eq!(ids(outbox(&db).await), want, "each outcome once, the new one after the others");
        assert_eq!(db.webhook_position(0).await.unwrap(), Some(8));

        // After a restart the window of recent ids is refilled from the log: n2's copy, met again
        // past the position, is still dropped.
        drop(db);
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions { default_partitions: 1, ..EmbeddedOptions::default() })
            .unwrap();
        append(&db, &[sent[4].clone(), event("n10", "acme", EventKind::Sent)]).await;
        collect_until(&db, &Arc::new(Shared::new(1)), 5).await;
        let all = ids(outbox(&db).await);
        assert_eq!(all.len(), 7, "{all:?}");
        assert_eq!(all.iter().filter(|id| **id == sent[4].event_id).count(), 1);
    }
}
