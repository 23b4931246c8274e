//! Partition readers: one task per (topic, partition) a component consumes.
//!
//! A reader starts at the group's committed offset and reads ahead of it,
//! decoding records and pushing batches into a bounded [`queue`](super::queue).
//! It never commits: the task at the end of the chain does, in order, once
//! everything produced from a batch is durable. A record that cannot be
//! decoded (a bug or a foreign writer) is logged and skipped so it cannot
//! wedge its partition; its offset is still covered by the batch's commit.

use super::queue::{Batch, QueueRx, QueueTx, Source, queue};
use super::supervise::{TaskFailed, TaskResult};
use crate::telemetry::RecordUndecodable;
use herald_schemas::codec::CodecError;
use herald_schemas::topic::{StoredRecord, TopicLog};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How every component reads and batches (from `[pipeline]` in the configuration).
#[derive(Debug, Clone)]
pub struct ReadSettings {
    /// Most records per read and per merged batch.
    pub batch_size: usize,
    /// How long a reader waits for new records before looking again.
    pub read_wait: Duration,
    /// Records a queue between two tasks holds.
    pub queue_records: usize,
    /// How long a component's head waits to fill a batch (see [`QueueRx::recv_merged`]).
    pub linger: Duration,
}

/// Spawns one reader per `(topic, partition)` into `tasks`, all feeding one
/// queue named `name`, and returns its receiving end.
#[allow(clippy::too_many_arguments)]
pub fn spawn_readers<T: Send + 'static>(
    name: &'static str,
    log: &Arc<dyn TopicLog>,
    sources: impl IntoIterator<Item = (String, u32)>,
    group: &str,
    settings: &ReadSettings,
    decode: Decoder<T>,
    token: &CancellationToken,
    tasks: &mut JoinSet<TaskResult>,
) -> QueueRx<T> {
    let (tx, rx) = queue::<T>(name, settings.queue_records);
    let sources: Vec<(String, u32)> = sources.into_iter().collect();
    // A reader whose queue is full holds the batch it read until there is room: each reads at most
    // its share of the queue, so all of them together hold no more than the queue does.
    let share = (settings.queue_records / sources.len().max(1)).clamp(1, settings.batch_size.max(1));
    for (topic, partition) in sources {
        let spec =
            ReaderSpec { topic, partition, group: group.to_string(), batch_size: share, wait: settings.read_wait };
        tasks.spawn(run_reader(log.clone(), spec, decode, tx.clone(), token.clone()));
    }
    rx
}

/// What a reader reads and how.
#[derive(Debug, Clone)]
pub struct ReaderSpec {
    pub topic: String,
    pub partition: u32,
    pub group: String,
    pub batch_size: usize,
    pub wait: Duration,
}

pub type Decoder<T> = fn(&StoredRecord) -> Result<T, CodecError>;

/// Reads until `token` is cancelled (dropping its sender) or the queue closes.
pub async fn run_reader<T: Send + 'static>(
    log: Arc<dyn TopicLog>,
    spec: ReaderSpec,
    decode: Decoder<T>,
    tx: QueueTx<T>,
    token: CancellationToken,
) -> TaskResult {
    let mut position =
        log.committed(&spec.group, &spec.topic, spec.partition).await.map_err(|e| TaskFailed::new("reader", e))?;
    tracing::debug!(topic = %spec.topic, partition = spec.partition, position, "reader started");
    loop {
        let records = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = log.read(&spec.topic, spec.partition, position, spec.batch_size, spec.wait) => {
                r.map_err(|e| TaskFailed::new("reader", e))?
            }
        };
        let Some(last) = records.last() else { continue };
        let next_offset = last.offset + 1;
        let mut items = Vec::with_capacity(records.len());
        for record in &records {
            match decode(record) {
                Ok(item) => items.push(item),
                Err(error) => {
                    RecordUndecodable { topic: &spec.topic, partition: spec.partition, offset: record.offset, error }
                        .emit()
                }
            }
        }
        position = next_offset;
        let source = Source { topic: spec.topic.clone(), partition: spec.partition, next_offset };
        if tx.send(Batch::new(source, items)).await.is_err() {
            // The next task stopped (failure or shutdown): nothing to do.
            return Ok(());
        }
    }
}
