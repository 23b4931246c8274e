//! The `herald-ingest` consumer: bulk producers write one notification per
//! record (the JSON object of the HTTP API, any key or none) straight into
//! the topic; Herald validates each like an API item, attributes it to the
//! configured client, and re-keys it by recipient into `herald-requests`.
//!
//! A record's notification id is derived from its partition and offset, so
//! replaying a batch after a crash produces the same ids, which the dedup
//! stage recognises as replays and the ledger absorbs downstream.

use super::queue::QueueRx;
use super::reader::{ReadSettings, spawn_readers};
use super::supervise::{TaskFailed, TaskResult};
use crate::ingest::{Ingestor, Submission};
use herald_schemas::NotificationId;
use herald_schemas::codec::CodecError;
use herald_schemas::ids::hash_hex;
use herald_schemas::topic::{self, StoredRecord, TopicLog};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "herald-ingest";

#[derive(Clone)]
pub struct IngestConsumer {
    pub log: Arc<dyn TopicLog>,
    pub ingestor: Arc<Ingestor>,
    pub client_id: String,
    /// The partitions of `herald-ingest` this worker processes.
    pub partitions: Arc<[u32]>,
    pub read: ReadSettings,
}

struct IngestRecord {
    offset: u64,
    value: Vec<u8>,
}

fn decode_ingest(record: &StoredRecord) -> Result<IngestRecord, CodecError> {
    Ok(IngestRecord { offset: record.offset, value: record.value.clone() })
}

impl IngestConsumer {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = self.partitions.iter().map(|&p| (topic::INGEST.to_string(), p));
        let rx = spawn_readers("ingest", &self.log, sources, GROUP, &self.read, decode_ingest, &token, tasks);
        tasks.spawn(self.clone().run(rx));
    }

    async fn run(self, mut rx: QueueRx<IngestRecord>) -> TaskResult {
        while let Some(batch) = rx.recv().await {
            let commits = batch.commits(GROUP);
            // Not merged: one batch, one partition.
            let partition = batch.sources.first().map_or(0, |s| s.partition);
            let items = batch
                .items
                .into_iter()
                .map(|r| Submission {
                    id: Some(NotificationId(format!(
                        "ingest-{}",
                        &hash_hex(&[topic::INGEST.as_bytes(), &partition.to_le_bytes(), &r.offset.to_le_bytes()])
                    ))),
                    raw: serde_json::from_slice(&r.value).map_err(|e| format!("record is not JSON: {e}")),
                })
                .collect();
            self.ingestor
                .submit_and_commit(&self.client_id, items, commits)
                .await
                .map_err(|e| TaskFailed::new("ingest", e))?;
        }
        Ok(())
    }
}
