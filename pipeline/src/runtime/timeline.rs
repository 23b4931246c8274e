//! The timeline sink: `herald-events` → a timeline store that keeps its own
//! copy ([`TimelineFeed`]), behind `GET /v1/notifications/{id}`. It runs only
//! for such a store: the embedded one reads the events log through its key
//! index, and needs no sink.
//!
//! The store keeps an event id once, so a replay after a crash (events
//! written, offset not committed) changes nothing. That is also why neither
//! the store writes nor the offset commit wait for an fsync: both are
//! ordered writes, durable with the next durable write of anyone, and losing
//! them replays writes that change nothing.

use super::queue::QueueRx;
use super::reader::{ReadSettings, spawn_readers};
use super::supervise::{TaskFailed, TaskResult};
use herald_schemas::EncodedEvent;
use herald_schemas::codec::CodecError;
use herald_schemas::store::TimelineFeed;
use herald_schemas::topic::{self, StoredRecord, TopicLog};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "herald-timeline";

#[derive(Clone)]
pub struct TimelineSink {
    pub log: Arc<dyn TopicLog>,
    pub store: Arc<dyn TimelineFeed>,
    /// The partitions of `herald-events` this worker processes.
    pub partitions: Arc<[u32]>,
    pub read: ReadSettings,
}

/// Only the ids, from the record key: the timeline stores the bytes as they are.
fn decode_event(record: &StoredRecord) -> Result<EncodedEvent, CodecError> {
    EncodedEvent::from_record(&record.key, record.value.clone()).ok_or(CodecError::Empty)
}

impl TimelineSink {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = self.partitions.iter().map(|&p| (topic::EVENTS.to_string(), p));
        let rx = spawn_readers("timeline", &self.log, sources, GROUP, &self.read, decode_event, &token, tasks);
        tasks.spawn(self.clone().run(rx));
    }

    async fn run(self, mut rx: QueueRx<EncodedEvent>) -> TaskResult {
        while let Some(batch) = rx.recv_merged(self.read.batch_size, self.read.linger).await {
            if !batch.items.is_empty() {
                self.store.add_events(&batch.items).await.map_err(|e| TaskFailed::new("timeline", e))?;
            }
            // Both writes are ordered, not waited for: a crash that loses the commit
            // replays blind, idempotent timeline writes.
            self.log.commit_ordered(batch.commits(GROUP)).await.map_err(|e| TaskFailed::new("timeline", e))?;
        }
        Ok(())
    }
}
