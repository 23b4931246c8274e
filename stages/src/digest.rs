//! Digest: notifications that ask for one (`"digest": {"key", "window", "template"}`) are folded
//! into one message per user and key.
//!
//! Contract, per item with a `digest`:
//! - It joins its user's digest of its key ([`ScheduleStore::join_digests`]): the first
//!   notification of a key opens a digest, due `window` later in the schedule index; the ones
//!   after it, until the scheduler releases the digest, join it. After the release, the next one
//!   opens a new digest.
//! - The item stops here with a `digested` event whose `reason` is the digest's notification id;
//!   the digest is delivered as a notification of its own, rendered from the digest template.
//! - A replayed item finds its membership and changes nothing (its event repeats, same id).
//!
//! Items without a digest pass. The store is called once per batch with digests.

use crate::{short_answer, store_error};
use async_trait::async_trait;
use herald_schemas::codec;
use herald_schemas::store::{DigestJoin, ScheduleStore};
use herald_schemas::topic::partition_for_key;
use herald_schemas::{Clock, DeliveryEvent, EventKind, Stage, StageError, StageOutput, WorkItem};
use std::sync::Arc;

/// Folds items into digests.
pub struct DigestStage {
    store: Arc<dyn ScheduleStore>,
    /// Partitions of `herald-requests`, to put each digest in its user's partition.
    partitions: u32,
    clock: Arc<dyn Clock>,
}

impl DigestStage {
    pub fn new(store: Arc<dyn ScheduleStore>, partitions: u32, clock: Arc<dyn Clock>) -> Self {
        Self { store, partitions, clock }
    }
}

#[async_trait]
impl Stage for DigestStage {
    fn name(&self) -> &'static str {
        "digest"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let now = self.clock.now_ms();
        let mut joins = Vec::new();
        let mut members = Vec::new();
        for item in batch {
            let e = &item.envelope;
            let Some(spec) = &e.request.digest else {
                out.items.push(item);
                continue;
            };
            // Checked when accepted; a record written straight into the topic with a bad window is
            // folded with the shortest one rather than lost.
            let window = crate::timing::digest_window(spec).unwrap_or(crate::timing::DIGEST_WINDOW.0);
            joins.push(DigestJoin {
                user_id: e.request.user_id.clone(),
                key: spec.key.clone(),
                member: e.id.clone(),
                window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                partition: partition_for_key(e.request.user_id.as_bytes(), self.partitions),
                client_id: e.client_id.clone(),
                envelope: codec::encode(e),
            });
            members.push(item);
        }
        if joins.is_empty() {
            return Ok(());
        }
        let joined = self.store.join_digests(&joins, now).await.map_err(|e| store_error("digest", e))?;
        if joined.len() != members.len() {
            return Err(short_answer("digest", "schedule", members.len(), joined.len()));
        }
        for (item, joined) in members.iter().zip(joined) {
            let e = &item.envelope;
            out.events.push(DeliveryEvent::new(
                &e.id,
                &e.client_id,
                &e.request.user_id,
                EventKind::Digested,
                None,
                Some(joined.digest().0.clone()),
                now,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Schedule};
    use herald_schemas::request::DigestSpec;
    use herald_schemas::stage::ManualClock;
    use herald_schemas::{ChannelKind, NotificationId};

    fn item(id: &str, user: &str, key: Option<&str>) -> WorkItem {
        let mut request = fakes::request(user, "comment", &[ChannelKind::Push]);
        request.digest =
            key.map(|k| DigestSpec { key: k.into(), window: "10m".into(), template: "comment-digest".into() });
        fakes::item(id, request)
    }

    #[tokio::test]
    async fn five_of_one_key_fold_into_one_digest_and_others_pass() {
        let store = Arc::new(Schedule::default());
        let mut stage = DigestStage::new(store.clone(), 8, Arc::new(ManualClock::new(1_000)));
        let mut batch: Vec<WorkItem> = (1..=5).map(|n| item(&format!("n{n}"), "u1", Some("comments"))).collect();
        batch.push(item("plain", "u1", None));
        batch.push(item("other-user", "u2", Some("comments")));
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        assert_eq!(out.items.iter().map(|i| i.envelope.id.0.as_str()).collect::<Vec<_>>(), ["plain"]);
        let first = NotificationId::for_digest(&NotificationId("n1".into()));
        let reasons: Vec<_> = out.events.iter().map(|e| (e.kind, e.reason.clone().unwrap())).collect();
        assert_eq!(reasons.len(), 6);
        assert!(reasons[..5].iter().all(|(k, r)| *k == EventKind::Digested && *r == first.0), "{reasons:?}");
        assert_ne!(reasons[5].1, first.0, "another user's digest");
        assert_eq!(store.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one store call per batch");

        // A replay finds its membership: same events, nothing new.
        let mut again = StageOutput::default();
        stage.process(vec![item("n3", "u1", Some("comments"))], &mut again).await.unwrap();
        assert_eq!(again.events[0].event_id, out.events[2].event_id);
        assert_eq!(store.open.lock().unwrap().len(), 2);
    }
}
