//! [`LedgerStore`] on `ledger` and `sink_positions`.
//!
//! States are plain writes (last write wins; the dispatcher reads states before it writes, and the
//! session's monotonic client timestamps keep a late retry from overwriting a later state). With a
//! sink position they go in one LOGGED batch with it: ScyllaDB applies a logged batch entirely or,
//! after a coordinator failure, replays it from its batch log, so the position never lands without
//! the states nor the states without the position. The batch is as large as the call (a few dozen
//! bytes per delivery): ScyllaDB warns above `batch_size_warn_threshold_in_kb` (128 KiB by
//! default, some 2,000 deliveries) and refuses above `batch_size_fail_threshold_in_kb` (1 MiB).

use super::ScyllaError;
use super::state::{ScyllaState, each, each_in_key_order, last_per_key};
use super::statements::Stmt;
use super::values::{bigint, decode_state, encode_state, unsigned};
use ::scylla::serialize::SerializationError;
use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
use ::scylla::serialize::writers::RowWriter;
use ::scylla::statement::batch::{Batch, BatchType};
use async_trait::async_trait;
use herald_schemas::ids::DeliveryId;
use herald_schemas::store::{LedgerState, LedgerStore, SinkPosition, StoreError};

const TABLE: &str = "sink_positions";

/// The values of one statement of the ledger's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchRow<'a> {
    /// For [`Stmt::LedgerInsert`]: delivery id, state.
    State(&'a str, i8),
    /// For [`Stmt::SinkUpsert`]: sink, position.
    Position(&'a str, i64),
}

impl SerializeRow for BatchRow<'_> {
    fn serialize(&self, ctx: &RowSerializationContext<'_>, writer: &mut RowWriter) -> Result<(), SerializationError> {
        match *self {
            BatchRow::State(id, state) => (id, state).serialize(ctx, writer),
            BatchRow::Position(sink, position) => (sink, position).serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The statements and values of the batch that records `entries` with the sink's position: one
/// state per delivery (its last in the call: statements of a batch share one timestamp, and the
/// server would keep the larger value rather than the later one), then the position.
pub fn ledger_batch<'a>(
    entries: &'a [(DeliveryId, LedgerState)],
    sink: &'a SinkPosition,
) -> Result<Vec<(Stmt, BatchRow<'a>)>, ScyllaError> {
    let mut rows: Vec<(Stmt, BatchRow<'a>)> = last_per_key(entries, |(id, _)| id.0.as_str())
        .into_iter()
        .map(|(id, state)| (Stmt::LedgerInsert, BatchRow::State(id.0.as_str(), encode_state(*state))))
        .collect();
    rows.push((Stmt::SinkUpsert, BatchRow::Position(sink.sink.as_str(), bigint("sink position", sink.position)?)));
    Ok(rows)
}

#[async_trait]
impl LedgerStore for ScyllaState {
    async fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<LedgerState>>, StoreError> {
        let states = each(ids, |id| async move {
            match self.select_one::<(i8,)>(Stmt::LedgerSelect, (id.0.as_str(),)).await? {
                Some((state,)) => decode_state(state).map(Some),
                None => Ok(None),
            }
        })
        .await?;
        Ok(states)
    }

    async fn record_deliveries(
        &self,
        entries: &[(DeliveryId, LedgerState)],
        sink: Option<SinkPosition>,
    ) -> Result<(), StoreError> {
        match &sink {
            Some(sink) => {
                let rows = ledger_batch(entries, sink)?;
                let mut batch = Batch::new(BatchType::Logged);
                for (stmt, _) in &rows {
                    batch.append_statement(self.prepared(*stmt).clone());
                }
                // Plain writes of given values: running it twice leaves what running it once does.
                batch.set_is_idempotent(true);
                let values: Vec<BatchRow> = rows.into_iter().map(|(_, row)| row).collect();
                self.run_batch(Stmt::LedgerInsert, &batch, values).await?;
            }
            None => {
                // Independent rows: each straight to its replica, no batch log.
                let last = last_per_key(entries, |(id, _)| id.0.as_str());
                each(&last, |(id, state)| self.write(Stmt::LedgerInsert, (id.0.as_str(), encode_state(*state))))
                    .await?;
            }
        }
        Ok(())
    }

    async fn sink_position(&self, sink: &str) -> Result<Option<u64>, StoreError> {
        match self.select_one::<(i64,)>(Stmt::SinkSelect, (sink,)).await? {
            Some((position,)) => Ok(Some(unsigned(TABLE, position)?)),
            None => Ok(None),
        }
    }

    /// `DELETE … IF state = failed` per id: a delivery sent meanwhile (or never seen) is left alone.
    /// An id twice in one call is reopened once.
    async fn reopen_failed(&self, ids: &[DeliveryId]) -> Result<Vec<bool>, StoreError> {
        let failed = encode_state(LedgerState::Failed);
        let reopened = each_in_key_order(
            ids,
            |id| id.0.as_str(),
            |id| async move { Ok(self.lwt(Stmt::LedgerReopen, (id.0.as_str(), failed)).await?.applied) },
        )
        .await?;
        Ok(reopened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeliveryId {
        DeliveryId(s.to_string())
    }

    #[test]
    fn the_batch_writes_each_deliverys_last_state_then_the_position() {
        let entries =
            [(id("a"), LedgerState::InFlight), (id("b"), LedgerState::InFlight), (id("a"), LedgerState::Sent)];
        let sink = SinkPosition { sink: "outbox-sms".into(), position: 42 };
        let rows = ledger_batch(&entries, &sink).unwrap();
        assert_eq!(
            rows,
            [
                (Stmt::LedgerInsert, BatchRow::State("b", 1)),
                (Stmt::LedgerInsert, BatchRow::State("a", 2)),
                (Stmt::SinkUpsert, BatchRow::Position("outbox-sms", 42)),
            ]
        );
        // A position alone is a batch of one.
        assert_eq!(ledger_batch(&[], &sink).unwrap().len(), 1);
        let far = SinkPosition { sink: "s".into(), position: u64::MAX };
        assert!(matches!(ledger_batch(&[], &far), Err(ScyllaError::OutOfRange { .. })));
    }
}
