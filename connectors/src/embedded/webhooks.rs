//! [`WebhookStore`] on fjall.
//!
//! # Keys
//! - webhooks: client id → `WebhookRegistration` (JSON); webhook_status: client id →
//!   `WebhookStatus` (JSON).
//! - webhook_outbox: `len | client id | partition (u32 BE) | first offset (u64 BE)` →
//!   `created_at_ms (u64 BE) | events (u32 BE) | body`. A (client, partition)'s batches are one key
//!   range in offset order.
//! - The partitions' positions live in `sinks` under `webhooks/<partition>`, written in the same
//!   write batch as the batches they cover: batches and position are durable together or not at
//!   all, so no batch is ever past its partition's position here.

use super::EmbeddedError;
use super::db::{EmbeddedDb, hold};
use super::stores::{be_u64, from_json, get_json, prefixed, to_json};
use async_trait::async_trait;
use herald_schemas::store::{StoreError, WebhookStore};
use herald_schemas::webhook::{WebhookBatch, WebhookRegistration, WebhookStatus};

const OUTBOX: &str = "webhook_outbox";
/// `created_at_ms | events` in front of a batch's body.
const HEADER: usize = 8 + 4;

fn outbox_key(client_id: &str, partition: u32, first_offset: u64) -> Vec<u8> {
    let mut key = prefixed(client_id);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&first_offset.to_be_bytes());
    key
}

fn position_key(partition: u32) -> Vec<u8> {
    format!("webhooks/{partition}").into_bytes()
}

fn encode_batch(batch: &WebhookBatch) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER + batch.body.len());
    value.extend_from_slice(&batch.created_at_ms.to_be_bytes());
    value.extend_from_slice(&batch.events.to_be_bytes());
    value.extend_from_slice(&batch.body);
    value
}

fn decode_batch(client_id: &str, partition: u32, key: &[u8], value: &[u8]) -> Result<WebhookBatch, EmbeddedError> {
    let short = || EmbeddedError::corrupt(OUTBOX, "entry shorter than its header");
    let first_offset = be_u64(OUTBOX, key.get(key.len().saturating_sub(8)..).ok_or_else(short)?)?;
    let created_at_ms = be_u64(OUTBOX, value.get(..8).ok_or_else(short)?)?;
    let events: [u8; 4] = value.get(8..HEADER).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
    Ok(WebhookBatch {
        client_id: client_id.to_string(),
        partition,
        first_offset,
        created_at_ms,
        events: u32::from_be_bytes(events),
        body: value.get(HEADER..).ok_or_else(short)?.to_vec(),
    })
}

#[async_trait]
impl WebhookStore for EmbeddedDb {
    async fn put_webhook(&self, registration: &WebhookRegistration) -> Result<bool, StoreError> {
        let registration = registration.clone();
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.webhooks);
                let key = registration.client_id.as_bytes();
                let fresh = !inner.ks.webhooks.contains_key(key)?;
                let mut batch = inner.db.batch();
                batch.insert(&inner.ks.webhooks, key, to_json("webhooks", &registration)?);
                Ok((fresh, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn get_webhook(&self, client_id: &str) -> Result<Option<WebhookRegistration>, StoreError> {
        let client_id = client_id.to_string();
        Ok(self.call(move |inner| get_json(&inner.ks.webhooks, "webhooks", client_id.as_bytes())).await?)
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookRegistration>, StoreError> {
        Ok(self
            .call(move |inner| {
                inner
                    .ks
                    .webhooks
                    .iter()
                    .map(|guard| from_json("webhooks", &guard.value()?))
                    .collect::<Result<Vec<WebhookRegistration>, EmbeddedError>>()
            })
            .await?)
    }

    async fn delete_webhook(&self, client_id: &str) -> Result<bool, StoreError> {
        let client_id = client_id.to_string();
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.webhooks);
                let key = client_id.as_bytes();
                let existed = inner.ks.webhooks.contains_key(key)?;
                let mut batch = inner.db.batch();
                batch.remove(&inner.ks.webhooks, key);
                batch.remove(&inner.ks.webhook_status, key);
                Ok((existed, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn webhook_status(&self, client_id: &str) -> Result<Option<WebhookStatus>, StoreError> {
        let client_id = client_id.to_string();
        Ok(self.call(move |inner| get_json(&inner.ks.webhook_status, "webhook_status", client_id.as_bytes())).await?)
    }

    async fn record_webhook_status(&self, client_id: &str, status: &WebhookStatus) -> Result<(), StoreError> {
        let (client_id, status) = (client_id.to_string(), status.clone());
        self.call(move |inner| {
            let mut batch = inner.db.batch();
            batch.insert(&inner.ks.webhook_status, client_id.as_bytes(), to_json("webhook_status", &status)?);
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }

    async fn enqueue_webhook_batches(
        &self,
        partition: u32,
        batches: &[WebhookBatch],
        position: u64,
    ) -> Result<(), StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            batches.iter().map(|b| (outbox_key(&b.client_id, b.partition, b.first_offset), encode_batch(b))).collect();
        self.write_durable(move |inner| {
            let mut batch = inner.db.batch();
            for (key, value) in rows {
                batch.insert(&inner.ks.webhook_outbox, key, value);
            }
            batch.insert(&inner.ks.sinks, position_key(partition), position.to_be_bytes());
            Ok(((), inner.commit_batch(batch, None)?))
        })
        .await?;
        Ok(())
    }

    async fn webhook_position(&self, partition: u32) -> Result<Option<u64>, StoreError> {
        Ok(self
            .call(move |inner| match inner.ks.sinks.get(position_key(partition))? {
                Some(bytes) => be_u64("sinks", &bytes).map(Some),
                None => Ok(None),
            })
            .await?)
    }

    async fn pending_webhook_batches(
        &self,
        client_id: &str,
        partition: u32,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<WebhookBatch>, StoreError> {
        if from >= below {
            return Ok(Vec::new());
        }
        let client_id = client_id.to_string();
        Ok(self
            .call(move |inner| {
                let range = outbox_key(&client_id, partition, from)..outbox_key(&client_id, partition, below);
                inner
                    .ks
                    .webhook_outbox
                    .range(range)
                    .take(limit)
                    .map(|guard| {
                        let (key, value) = guard.into_inner()?;
                        decode_batch(&client_id, partition, &key, &value)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?)
    }

    async fn ack_webhook_batch(&self, client_id: &str, partition: u32, first_offset: u64) -> Result<(), StoreError> {
        let key = outbox_key(client_id, partition, first_offset);
        self.call(move |inner| {
            let mut batch = inner.db.batch();
            batch.remove(&inner.ks.webhook_outbox, key);
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }

    async fn drop_webhook_batches(&self, client_id: &str, partition: u32, from: u64) -> Result<(), StoreError> {
        let range = outbox_key(client_id, partition, from)..=outbox_key(client_id, partition, u64::MAX);
        self.write_durable(move |inner| {
            let mut batch = inner.db.batch();
            for guard in inner.ks.webhook_outbox.range(range) {
                batch.remove(&inner.ks.webhook_outbox, guard.key()?);
            }
            Ok(((), inner.commit_batch(batch, None)?))
        })
        .await?;
        Ok(())
    }

    async fn count_webhook_batches(&self, client_id: &str, partition: u32, limit: usize) -> Result<usize, StoreError> {
        let range = outbox_key(client_id, partition, 0)..=outbox_key(client_id, partition, u64::MAX);
        Ok(self
            .call(move |inner| {
                let mut n = 0;
                for guard in inner.ks.webhook_outbox.range(range).take(limit) {
                    guard.key()?;
                    n += 1;
                }
                Ok(n)
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;
    use herald_schemas::event::{DeliveryEvent, EventKind};
    use herald_schemas::ids::NotificationId;

    fn open(dir: &std::path::Path) -> EmbeddedDb {
        EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap()
    }

    fn registration(client: &str, url: &str) -> WebhookRegistration {
        WebhookRegistration {
            client_id: client.into(),
            url: url.into(),
            secret: "whsec_s".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    fn batch(client: &str, partition: u32, first_offset: u64) -> WebhookBatch {
        let event = DeliveryEvent::new(&NotificationId("n".into()), client, "u", EventKind::Sent, None, None, 1);
        WebhookBatch::new(&registration(client, "http://x"), partition, first_offset, 77, &[event])
    }

    #[tokio::test]
    async fn registrations_are_put_replaced_listed_and_deleted_with_their_status() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert!(db.put_webhook(&registration("a", "http://one")).await.unwrap());
        assert!(!db.put_webhook(&registration("a", "http://two")).await.unwrap());
        assert!(db.put_webhook(&registration("b", "http://b")).await.unwrap());
        let status =
            WebhookStatus { last_error: Some("HTTP 503".into()), consecutive_failures: 2, ..Default::default() };
        db.record_webhook_status("a", &status).await.unwrap();
        drop(db);
        let db = open(dir.path());
        assert_eq!(db.get_webhook("a").await.unwrap().unwrap().url, "http://two");
        assert_eq!(db.webhook_status("a").await.unwrap(), Some(status));
        let clients: Vec<String> = db.list_webhooks().await.unwrap().into_iter().map(|r| r.client_id).collect();
        assert_eq!(clients, ["a", "b"]);
        assert!(db.delete_webhook("a").await.unwrap());
        assert!(!db.delete_webhook("a").await.unwrap());
        assert_eq!(db.get_webhook("a").await.unwrap(), None);
        assert_eq!(db.webhook_status("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_outbox_pages_in_order_below_a_bound_and_acks_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert_eq!(db.webhook_position(3).await.unwrap(), None);
        // Written out of order, in two calls; another client and another partition beside them.
        db.enqueue_webhook_batches(3, &[batch("a", 3, 300), batch("a", 3, 5)], 301).await.unwrap();
        db.enqueue_webhook_batches(3, &[batch("a", 3, 40), batch("ab", 3, 1)], 400).await.unwrap();
        db.enqueue_webhook_batches(4, &[batch("a", 4, 2)], 3).await.unwrap();
        drop(db);
        let db = open(dir.path());
        assert_eq!(db.webhook_position(3).await.unwrap(), Some(400));
        assert_eq!(db.webhook_position(4).await.unwrap(), Some(3));
        let offsets = |batches: Vec<WebhookBatch>| batches.into_iter().map(|b| b.first_offset).collect::<Vec<_>>();
        assert_eq!(offsets(db.pending_webhook_batches("a", 3, 0, u64::MAX, 10).await.unwrap()), [5, 40, 300]);
        assert_eq!(offsets(db.pending_webhook_batches("a", 3, 0, 300, 10).await.unwrap()), [5, 40]);
        assert_eq!(offsets(db.pending_webhook_batches("a", 3, 6, 400, 1).await.unwrap()), [40]);
        assert!(db.pending_webhook_batches("a", 3, 9, 9, 10).await.unwrap().is_empty());
        let first = &db.pending_webhook_batches("a", 3, 0, 400, 1).await.unwrap()[0];
        assert_eq!(first, &batch("a", 3, 5));
        assert_eq!(db.count_webhook_batches("a", 3, 100).await.unwrap(), 3);
        assert_eq!(db.count_webhook_batches("a", 3, 2).await.unwrap(), 2);

        db.ack_webhook_batch("a", 3, 5).await.unwrap();
        assert_eq!(offsets(db.pending_webhook_batches("a", 3, 0, 400, 10).await.unwrap()), [40, 300]);
        // Dropping from an offset keeps what is before it; from 0 drops the rest.
        db.drop_webhook_batches("a", 3, 41).await.unwrap();
        assert_eq!(offsets(db.pending_webhook_batches("a", 3, 0, u64::MAX, 10).await.unwrap()), [40]);
        db.drop_webhook_batches("a", 3, 0).await.unwrap();
        assert_eq!(db.count_webhook_batches("a", 3, 100).await.unwrap(), 0);
        // Untouched: the other partition and the client whose id extends this one's.
        assert_eq!(db.count_webhook_batches("a", 4, 100).await.unwrap(), 1);
        assert_eq!(db.count_webhook_batches("ab", 3, 100).await.unwrap(), 1);
    }
}
