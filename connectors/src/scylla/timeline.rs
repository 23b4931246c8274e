//! [`TimelineFeed`] and [`TimelineStore`] on `timeline`: one partition per notification, one row
//! per event id (so an event written twice is kept once, the last copy), the bytes as they travel
//! on `herald-events`.

use super::ScyllaError;
use super::state::{ScyllaState, each, groups_by_key, last_per_key};
use super::statements::Stmt;
use super::values::ttl_secs;
use ::scylla::statement::batch::{Batch, BatchType};
use async_trait::async_trait;
use herald_schemas::codec;
use herald_schemas::event::{DeliveryEvent, EncodedEvent};
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{StoreError, TimelineFeed, TimelineStore};

const TABLE: &str = "timeline";

/// The events of one notification in a call, each event id once (its last copy).
pub fn per_notification(events: &[EncodedEvent]) -> Vec<Vec<&EncodedEvent>> {
    groups_by_key(events, |e| e.notification_id.0.as_str())
        .into_iter()
        .map(|group| {
            let group: Vec<&EncodedEvent> = group.into_iter().filter_map(|i| events.get(i)).collect();
            last_per_key(&group, |e| e.event_id.as_str()).into_iter().copied().collect()
        })
        .collect()
}

/// The embedded store's order: time, then kind (the order a notification goes through), then id.
pub fn in_time_order(mut events: Vec<DeliveryEvent>) -> Vec<DeliveryEvent> {
    events.sort_by(|a, b| (a.at_ms, a.kind, &a.event_id).cmp(&(b.at_ms, b.kind, &b.event_id)));
    events
}

#[async_trait]
impl TimelineFeed for ScyllaState {
    /// A notification's events go in one single-partition (unlogged) batch, which ScyllaDB applies
    /// atomically on the partition's replicas; notifications run concurrently.
    async fn add_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        let ttl = ttl_secs(self.options().timeline_ttl);
        let groups = per_notification(events);
        each(&groups, |group| async move {
            let rows: Vec<(&str, &str, &[u8], i32)> = group
                .iter()
                .map(|e| (e.notification_id.0.as_str(), e.event_id.as_str(), e.bytes.as_slice(), ttl))
                .collect();
            if let [row] = rows.as_slice() {
                return self.write(Stmt::TimelineInsert, row).await;
            }
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in &rows {
                batch.append_statement(self.prepared(Stmt::TimelineInsert).clone());
            }
            batch.set_is_idempotent(true);
            self.run_batch(Stmt::TimelineInsert, &batch, rows).await
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl TimelineStore for ScyllaState {
    async fn timeline(&self, id: &NotificationId) -> Result<Vec<DeliveryEvent>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.select_all(Stmt::TimelineSelect, (id.0.as_str(),)).await?;
        let events = rows
            .iter()
            .map(|(event_id, data)| {
                codec::decode::<DeliveryEvent>(data)
                    .map_err(|e| ScyllaError::corrupt(TABLE, format!("event {event_id} of {id}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(in_time_order(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::event::EventKind;
    use herald_schemas::ids::DeliveryId;
    use herald_schemas::job::Route;

    fn nid(s: &str) -> NotificationId {
        NotificationId(s.to_string())
    }

    fn event(n: &str, kind: EventKind, at_ms: u64) -> DeliveryEvent {
        DeliveryEvent::new(&nid(n), "client", "u1", kind, None, None, at_ms)
    }

    #[test]
    fn events_are_grouped_by_notification_each_id_once_the_last_copy() {
        let first = EncodedEvent::encode(&event("n1", EventKind::Accepted, 5));
        let replayed = EncodedEvent::encode(&event("n1", EventKind::Accepted, 7));
        let other = EncodedEvent::encode(&event("n2", EventKind::Accepted, 1));
        let sent = EncodedEvent::encode(&event("n1", EventKind::Sent, 9));
        let events = [first, other.clone(), replayed.clone(), sent.clone()];
        let groups = per_notification(&events);
        assert_eq!(groups, vec![vec![&replayed, &sent], vec![&other]]);
        assert!(per_notification(&[]).is_empty());
    }

    #[test]
    fn a_timeline_is_in_time_then_kind_then_id_order() {
        let sent = event("n1", EventKind::Sent, 10).for_delivery(&DeliveryId("d".into()), Route::Sms, 1);
        let events = vec![sent.clone(), event("n1", EventKind::Throttled, 5), event("n1", EventKind::Accepted, 5)];
        let kinds: Vec<(EventKind, u64)> = in_time_order(events).iter().map(|e| (e.kind, e.at_ms)).collect();
        assert_eq!(kinds, [(EventKind::Accepted, 5), (EventKind::Throttled, 5), (EventKind::Sent, 10)]);
    }

    #[test]
    fn stored_bytes_are_the_events_encoding() {
        let e = event("n1", EventKind::Accepted, 5);
        let encoded = EncodedEvent::encode(&e);
        assert_eq!(codec::decode::<DeliveryEvent>(&encoded.bytes).unwrap(), e);
    }
}
