//! What the embedded database keeps when the topic log is elsewhere (Fluvio, `--topics
//! fluvio://…` with embedded state): the consumer positions and the timeline's copy of the events.
//!
//! # Keys
//! - positions: `len | group | len | topic | partition (u32 BE)` → next offset (u64 BE).
//! - timeline: `len | notification id | event id` → `written_at_ms (u64 BE) | event as encoded on
//!   herald-events`; timeline_expiry: `written_at_ms | timeline key` → (), so retention drops old
//!   events with a range scan. An event written again (a replay) replaces the earlier copy.

use super::EmbeddedError;
use super::db::{EmbeddedDb, Inner, now_ms};
use super::stores::{be_u64, prefixed};
use async_trait::async_trait;
use herald_schemas::codec;
use herald_schemas::event::{DeliveryEvent, EncodedEvent};
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{OffsetStore, StoreError, TimelineFeed};
use herald_schemas::topic::Commit;

/// Timeline events dropped per write batch by retention.
const PURGE_CHUNK: usize = 10_000;

fn position_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = prefixed(group);
    key.extend_from_slice(&prefixed(topic));
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn timeline_key(notification: &NotificationId, event_id: &str) -> Vec<u8> {
    let mut key = prefixed(&notification.0);
    key.extend_from_slice(event_id.as_bytes());
    key
}

#[async_trait]
impl OffsetStore for EmbeddedDb {
    async fn save_offsets(&self, commits: &[Commit]) -> Result<(), StoreError> {
        let entries: Vec<_> =
            commits.iter().map(|c| (position_key(&c.group, &c.topic, c.partition), c.next_offset)).collect();
        self.write_durable(move |inner| {
            let mut batch = inner.db.batch();
            for (key, next_offset) in entries {
                batch.insert(&inner.ks.positions, key, next_offset.to_be_bytes());
            }
            Ok(((), inner.commit_batch(batch, None)?))
        })
        .await?;
        Ok(())
    }

    async fn load_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, StoreError> {
        let key = position_key(group, topic, partition);
        Ok(self
            .call(move |inner| match inner.ks.positions.get(key)? {
                Some(bytes) => be_u64("positions", &bytes).map(Some),
                None => Ok(None),
            })
            .await?)
    }
}

#[async_trait]
impl TimelineFeed for EmbeddedDb {
    /// An ordered write (see `store`): the timeline sink's offset commit that follows makes it
    /// durable, and a crash before that replays writes that change nothing.
    async fn add_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        let now = now_ms();
        let rows: Vec<_> = events
            .iter()
            .map(|e| {
                let mut value = Vec::with_capacity(8 + e.bytes.len());
                value.extend_from_slice(&now.to_be_bytes());
                value.extend_from_slice(&e.bytes);
                (timeline_key(&e.notification_id, &e.event_id), value)
            })
            .collect();
        self.call(move |inner| {
            let mut batch = inner.db.batch();
            for (key, value) in rows {
                let mut expiry = now.to_be_bytes().to_vec();
                expiry.extend_from_slice(&key);
                batch.insert(&inner.ks.timeline_expiry, expiry, [0u8; 0]);
                batch.insert(&inner.ks.timeline, key, value);
            }
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }
}

impl EmbeddedDb {
    /// The notification's events fed by [`TimelineFeed::add_events`], in no particular order.
    pub(crate) async fn fed_timeline(&self, id: &NotificationId) -> Result<Vec<DeliveryEvent>, EmbeddedError> {
        let prefix = prefixed(&id.0);
        self.call(move |inner| {
            let mut events = Vec::new();
            for guard in inner.ks.timeline.prefix(&prefix) {
                let (key, value) = guard.into_inner()?;
                let bytes = value.get(8..).ok_or_else(|| EmbeddedError::corrupt("timeline", "value too short"))?;
                let event = codec::decode::<DeliveryEvent>(bytes).map_err(|e| {
                    EmbeddedError::corrupt("timeline", format!("{}: {e}", String::from_utf8_lossy(&key)))
                })?;
                events.push(event);
            }
            Ok(events)
        })
        .await
    }
}

impl Inner {
    /// Drops fed timeline events written before `cutoff_ms`; returns how many. Not fsynced.
    pub(crate) fn purge_fed_timeline(&self, cutoff_ms: u64) -> Result<u64, EmbeddedError> {
        let upper = cutoff_ms.to_be_bytes();
        let mut purged = 0;
        loop {
            let mut batch = self.db.batch();
            let mut seen = 0;
            for guard in self.ks.timeline_expiry.range(..upper).take(PURGE_CHUNK) {
                seen += 1;
                let index = guard.key()?;
                let written = be_u64("timeline_expiry", index.get(..8).unwrap_or_default())?;
                let key = index.get(8..).unwrap_or_default();
                // Only if the event was not written again since.
                if let Some(current) = self.ks.timeline.get(key)?
                    && be_u64("timeline", current.get(..8).unwrap_or_default())? == written
                {
                    batch.remove(&self.ks.timeline, key);
                    purged += 1;
                }
                batch.remove(&self.ks.timeline_expiry, index);
            }
            super::db::commit(batch)?;
            if seen < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;
    use herald_schemas::event::EventKind;
    use herald_schemas::store::TimelineStore;

    use crate::embedded::open_temp as open;

    #[tokio::test]
    async fn positions_are_per_group_topic_and_partition_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
            assert_eq!(db.load_offset("g", "t", 0).await.unwrap(), None);
            let commit = |group: &str, topic: &str, partition, next_offset| Commit {
                group: group.into(),
                topic: topic.into(),
                partition,
                next_offset,
            };
            db.save_offsets(&[commit("g", "t", 0, 5), commit("g", "t", 1, 7), commit("h", "t", 0, 9)]).await.unwrap();
            db.save_offsets(&[commit("g", "t", 0, 6)]).await.unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(db.load_offset("g", "t", 0).await.unwrap(), Some(6));
        assert_eq!(db.load_offset("g", "t", 1).await.unwrap(), Some(7));
        assert_eq!(db.load_offset("h", "t", 0).await.unwrap(), Some(9));
        // A group name that is another's prefix does not see its positions.
        assert_eq!(db.load_offset("", "gt", 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn fed_events_make_the_timeline_once_each_and_retention_drops_old_ones() {
        let (_dir, db) = open();
        let n1 = NotificationId("n1".into());
        let event =
            |kind, at_ms| EncodedEvent::encode(&DeliveryEvent::new(&n1, "client", "u1", kind, None, None, at_ms));
        let events = [event(EventKind::Accepted, 1), event(EventKind::Sent, 3), event(EventKind::Throttled, 2)];
        db.add_events(&events).await.unwrap();
        // A replay writes the same events again.
        db.add_events(&events[..2]).await.unwrap();
        let timeline = db.timeline(&n1).await.unwrap();
        let kinds: Vec<EventKind> = timeline.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Accepted, EventKind::Throttled, EventKind::Sent]);
        assert!(db.timeline(&NotificationId("n2".into())).await.unwrap().is_empty());
        assert_eq!(db.inner.purge_fed_timeline(0).unwrap(), 0);
        assert_eq!(db.inner.purge_fed_timeline(now_ms() + 1).unwrap(), 3);
        assert!(db.timeline(&n1).await.unwrap().is_empty());
    }
}
