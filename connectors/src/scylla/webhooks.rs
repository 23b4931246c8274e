//! [`WebhookStore`] on `webhooks`, `webhook_status`, `webhook_outbox` and `sink_positions`.
//!
//! - `webhooks (scope, client_id, data)`: every registration in one partition (`scope` is always
//!   [`SCOPE`]), so the senders' cache lists them with one single-partition read. Plain writes:
//!   "was it new" comes from a read before the write, so two concurrent first `PUT`s of one client
//!   may both answer "new" (only the HTTP status differs; the last write wins).
//! - `webhook_status (client_id, data)`: plain writes, the last wins.
//! - `webhook_outbox ((client_id, partition_id), first_offset, …)`: one partition per (client,
//!   events partition), batches in offset order, so a sender's page is one slice of one partition.
//! - The positions are rows of `sink_positions` named `webhooks/<partition>`.
//!
//! Enqueueing cannot be one atomic write (a logged batch would be as large as the whole read
//! batch's events): the batches are written first, then the position. A call that fails in
//! between leaves batches at or past the position; the consumer drops them before it resumes the
//! partition (see [`WebhookStore`]).

use super::ScyllaError;
use super::state::{ScyllaState, each};
use super::statements::Stmt;
use super::values::{bigint, from_json, int, to_json, unsigned};
use async_trait::async_trait;
use herald_schemas::store::{StoreError, WebhookStore};
use herald_schemas::webhook::{WebhookBatch, WebhookRegistration, WebhookStatus};

/// The one partition key of `webhooks`.
pub const SCOPE: &str = "all";
const OUTBOX: &str = "webhook_outbox";

fn position_sink(partition: u32) -> String {
    format!("webhooks/{partition}")
}

/// A page size for a `LIMIT ?` bind marker.
fn limit(n: usize) -> i32 {
    i32::try_from(n.max(1)).unwrap_or(i32::MAX)
}

/// A row of [`Stmt::OutboxPage`] as the batch it stores.
pub fn batch_of_row(
    client_id: &str,
    partition: u32,
    (first_offset, created_at_ms, events, body): (i64, i64, i32, Vec<u8>),
) -> Result<WebhookBatch, ScyllaError> {
    Ok(WebhookBatch {
        client_id: client_id.to_string(),
        partition,
        first_offset: unsigned(OUTBOX, first_offset)?,
        created_at_ms: unsigned(OUTBOX, created_at_ms)?,
        events: u32::try_from(events).map_err(|_| ScyllaError::corrupt(OUTBOX, format!("event count {events}")))?,
        body,
    })
}

#[async_trait]
impl WebhookStore for ScyllaState {
    async fn put_webhook(&self, registration: &WebhookRegistration) -> Result<bool, StoreError> {
        let client = registration.client_id.as_str();
        let existed = self.select_one::<(Vec<u8>,)>(Stmt::WebhookSelect, (SCOPE, client)).await?.is_some();
        let data = to_json("webhooks", registration)?;
        self.write(Stmt::WebhookUpsert, (SCOPE, client, &data)).await?;
        Ok(!existed)
    }

    async fn get_webhook(&self, client_id: &str) -> Result<Option<WebhookRegistration>, StoreError> {
        match self.select_one::<(Vec<u8>,)>(Stmt::WebhookSelect, (SCOPE, client_id)).await? {
            Some((data,)) => Ok(Some(from_json("webhooks", &data)?)),
            None => Ok(None),
        }
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookRegistration>, StoreError> {
        let rows: Vec<(Vec<u8>,)> = self.select_all(Stmt::WebhookList, (SCOPE,)).await?;
        Ok(rows.iter().map(|(data,)| from_json("webhooks", data)).collect::<Result<_, _>>()?)
    }

    async fn delete_webhook(&self, client_id: &str) -> Result<bool, StoreError> {
        let existed = self.select_one::<(Vec<u8>,)>(Stmt::WebhookSelect, (SCOPE, client_id)).await?.is_some();
        self.write(Stmt::WebhookDelete, (SCOPE, client_id)).await?;
        self.write(Stmt::WebhookStatusDelete, (client_id,)).await?;
        Ok(existed)
    }

    async fn webhook_status(&self, client_id: &str) -> Result<Option<WebhookStatus>, StoreError> {
        match self.select_one::<(Vec<u8>,)>(Stmt::WebhookStatusSelect, (client_id,)).await? {
            Some((data,)) => Ok(Some(from_json("webhook_status", &data)?)),
            None => Ok(None),
        }
    }

    async fn record_webhook_status(&self, client_id: &str, status: &WebhookStatus) -> Result<(), StoreError> {
        let data = to_json("webhook_status", status)?;
        self.write(Stmt::WebhookStatusUpsert, (client_id, &data)).await?;
        Ok(())
    }

    async fn enqueue_webhook_batches(
        &self,
        partition: u32,
        batches: &[WebhookBatch],
        position: u64,
    ) -> Result<(), StoreError> {
        let partition_id = int("partition", partition)?;
        each(batches, |b| async move {
            let first = bigint("first_offset", b.first_offset)?;
            let created = bigint("created_at_ms", b.created_at_ms)?;
            let events = i32::try_from(b.events)
                .map_err(|_| ScyllaError::OutOfRange { what: "webhook batch events", value: u64::from(b.events) })?;
            let values = (b.client_id.as_str(), partition_id, first, created, events, b.body.as_slice());
            self.write(Stmt::OutboxInsert, values).await
        })
        .await?;
        // Only once every batch is durable: a sender reads below the position.
        let position = bigint("webhook position", position)?;
        self.write(Stmt::SinkUpsert, (position_sink(partition).as_str(), position)).await?;
        Ok(())
    }

    async fn webhook_position(&self, partition: u32) -> Result<Option<u64>, StoreError> {
        match self.select_one::<(i64,)>(Stmt::SinkSelect, (position_sink(partition).as_str(),)).await? {
            Some((position,)) => Ok(Some(unsigned("sink_positions", position)?)),
            None => Ok(None),
        }
    }

    async fn pending_webhook_batches(
        &self,
        client_id: &str,
        partition: u32,
        from: u64,
        below: u64,
        max: usize,
    ) -> Result<Vec<WebhookBatch>, StoreError> {
        if from >= below {
            return Ok(Vec::new());
        }
        let partition_id = int("partition", partition)?;
        // Offsets past i64::MAX cannot be stored, so such a bound means "all of them".
        let below = i64::try_from(below).unwrap_or(i64::MAX);
        let values = (client_id, partition_id, bigint("from", from)?, below, limit(max));
        let rows: Vec<(i64, i64, i32, Vec<u8>)> = self.select_all(Stmt::OutboxPage, values).await?;
        Ok(rows.into_iter().map(|row| batch_of_row(client_id, partition, row)).collect::<Result<_, _>>()?)
    }

    async fn ack_webhook_batch(&self, client_id: &str, partition: u32, first_offset: u64) -> Result<(), StoreError> {
        let values = (client_id, int("partition", partition)?, bigint("first_offset", first_offset)?);
        self.write(Stmt::OutboxDelete, values).await?;
        Ok(())
    }

    async fn drop_webhook_batches(&self, client_id: &str, partition: u32, from: u64) -> Result<(), StoreError> {
        let values = (client_id, int("partition", partition)?, bigint("from", from)?);
        self.write(Stmt::OutboxDeleteFrom, values).await?;
        Ok(())
    }

    async fn count_webhook_batches(&self, client_id: &str, partition: u32, max: usize) -> Result<usize, StoreError> {
        let values = (client_id, int("partition", partition)?, limit(max));
        let rows: Vec<(i64,)> = self.select_all(Stmt::OutboxKeys, values).await?;
        Ok(rows.len().min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_rows_read_back_as_batches_and_bad_numbers_are_corrupt() {
        let batch = batch_of_row("acme", 3, (42, 7, 2, b"{}".to_vec())).unwrap();
        assert_eq!(
            batch,
            WebhookBatch {
                client_id: "acme".into(),
                partition: 3,
                first_offset: 42,
                created_at_ms: 7,
                events: 2,
                body: b"{}".to_vec()
            }
        );
        assert!(matches!(batch_of_row("acme", 3, (-1, 7, 2, vec![])), Err(ScyllaError::Corrupt { .. })));
        assert!(matches!(batch_of_row("acme", 3, (1, 7, -2, vec![])), Err(ScyllaError::Corrupt { .. })));
    }

    #[test]
    fn positions_have_their_own_sink_names_and_limits_fit_the_bind_marker() {
        assert_eq!(position_sink(3), "webhooks/3");
        assert_eq!(limit(0), 1);
        assert_eq!(limit(usize::MAX), i32::MAX);
    }
}
