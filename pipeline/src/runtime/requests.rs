//! The request chain: `herald-requests` → validate → enrich → dedup →
//! throttle → render → fan-out.
//!
//! One reader per assigned partition feeds the first stage; every stage is
//! its own task joined to the next by a bounded queue. The fan-out task at
//! the end appends the delivery jobs (one topic per route) and the events of
//! the batch in one durable append, and only then commits the batch's offset
//! for [`GROUP`]. Batches of a partition travel in order through one chain,
//! so commits are in order.
//!
//! A crash or failure after the append and before the commit replays the
//! batch: the dedup stage recognises its own claims (`Replay`), the throttle
//! stage its own hits, and delivery ids are derived, so the dispatchers'
//! ledger absorbs the repeated jobs.

use super::queue::{QueueRx, QueueTx, queue};
use super::reader::{ReadSettings, spawn_readers};
use super::supervise::{TaskFailed, TaskResult};
use crate::telemetry::StageBatchProcessed;
use herald_schemas::codec::{self, CodecError};
use herald_schemas::job::{DeliveryJob, Route};
use herald_schemas::topic::{self, Append, Record, StoredRecord, TopicLog};
use herald_schemas::{DeliveryEvent, EncodedEvent, RequestEnvelope, Stage, StageOutput, WorkItem};
use herald_stages::fanout::fan_out;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The consumer group of the request chain on `herald-requests`.
pub const GROUP: &str = "herald-pipeline";

/// Builds a fresh set of stages for each (re)start of the chain.
pub type StageFactory = Arc<dyn Fn() -> Vec<Box<dyn Stage>> + Send + Sync>;

#[derive(Clone)]
pub struct RequestChain {
    pub log: Arc<dyn TopicLog>,
    /// The lane's topic: [`topic::REQUESTS`] or [`topic::REQUESTS_PRIORITY`].
    pub topic: &'static str,
    pub stages: StageFactory,
    /// Partitions of `herald-requests` this worker owns.
    pub partitions: Vec<u32>,
    pub route_partitions: u32,
    pub event_partitions: u32,
    pub read: ReadSettings,
}

fn decode_request(record: &StoredRecord) -> Result<WorkItem, CodecError> {
    codec::decode::<RequestEnvelope>(&record.value).map(WorkItem::new)
}

impl RequestChain {
    /// Spawns readers, stages and the fan-out sink into `tasks`.
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = self.partitions.iter().map(|&p| (self.topic.to_string(), p));
        let mut rx = spawn_readers("validate", &self.log, sources, GROUP, &self.read, decode_request, &token, tasks);
        let stages = (self.stages)();
        let names: Vec<&'static str> = stages.iter().map(|s| s.name()).skip(1).chain(["fanout"]).collect();
        for (i, (stage, next)) in stages.into_iter().zip(names).enumerate() {
            let (tx, next_rx) = queue::<WorkItem>(next, self.read.queue_records);
            // Only the head lingers; later stages join what is already queued.
            let linger = if i == 0 { self.read.linger } else { Duration::ZERO };
            tasks.spawn(run_stage(stage, rx, tx, self.read.batch_size, linger));
            rx = next_rx;
        }
        tasks.spawn(run_fanout(self.clone(), rx));
    }
}

/// Runs one stage over every batch until its input closes.
async fn run_stage(
    mut stage: Box<dyn Stage>,
    mut rx: QueueRx<WorkItem>,
    tx: QueueTx<WorkItem>,
    merge: usize,
    linger: Duration,
) -> TaskResult {
    let name = stage.name();
    while let Some(mut batch) = rx.recv_merged(merge, linger).await {
        let items = std::mem::take(&mut batch.items);
        let records_in = items.len();
        let started = Instant::now();
        let mut out = StageOutput::with_capacity(records_in);
        stage.process(items, &mut out).await.map_err(|e| TaskFailed::new(name, e))?;
        let dropped = count_by_kind(&out.events);
        StageBatchProcessed {
            stage: name,
            records_in,
            records_out: out.items.len(),
            dropped: &dropped,
            elapsed: started.elapsed(),
        }
        .emit();
        batch.items = out.items;
        batch.events.extend(out.events);
        if tx.send(batch).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn count_by_kind(events: &[DeliveryEvent]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for e in events {
        let kind = e.kind.as_str();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts
}

/// Appends jobs and events durably, then commits the batch's offset.
async fn run_fanout(chain: RequestChain, mut rx: QueueRx<WorkItem>) -> TaskResult {
    while let Some(batch) = rx.recv_merged(chain.read.batch_size, Duration::ZERO).await {
        let started = Instant::now();
        let records_in = batch.items.len();
        let commits = batch.commits(GROUP);
        let jobs = fan_out(batch.items);
        let job_count = jobs.len();
        let mut parts = job_appends(&jobs, chain.route_partitions);
        parts.extend(event_appends(&batch.events, chain.event_partitions));
        let write = Instant::now();
        // Ordered, not waited for: readers see the jobs once a group commit made them durable,
        // and a crash before it replays this batch from `herald-requests`.
        chain.log.append_and_commit_ordered(parts, commits).await.map_err(|e| TaskFailed::new("fanout", e))?;
        crate::telemetry::log_write("fanout.write", records_in, write.elapsed());
        StageBatchProcessed {
            stage: "fanout",
            records_in,
            records_out: job_count,
            dropped: &[],
            elapsed: started.elapsed(),
        }
        .emit();
    }
    Ok(())
}

/// Jobs as appends to their routes' delivery topics (a transactional job to its route's priority
/// lane), keyed by user id, so one user's deliveries keep their order on one partition.
pub fn job_appends<'a>(jobs: impl IntoIterator<Item = &'a DeliveryJob>, partitions: u32) -> Vec<Append> {
    let mut by_topic: Vec<(&'static str, Vec<&DeliveryJob>)> = Vec::with_capacity(2 * Route::ALL.len());
    for job in jobs {
        let topic = job.target.route().topic_for(&job.category);
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(job),
            None => by_topic.push((topic, vec![job])),
        }
    }
    by_topic
        .into_iter()
        .flat_map(|(topic, jobs)| keyed_jobs(topic, partitions, jobs.into_iter().map(|j| (j, codec::encode(j)))))
        .collect()
}

/// Accepted requests as appends to their lane's topic ([`topic::requests_topic`]), keyed by user
/// id; a broadcast (a request naming a `topic`) to [`topic::BROADCASTS`], keyed by its id.
pub fn request_appends(envelopes: &[RequestEnvelope], partitions: u32) -> Vec<Append> {
    let mut lanes: [Vec<Record>; 3] = Default::default();
    for e in envelopes {
        let (lane, key) = match &e.request.topic {
            Some(_) => (2, e.id.0.as_bytes()),
            None if topic::requests_topic(&e.request.category) == topic::REQUESTS_PRIORITY => {
                (1, e.request.user_id.as_bytes())
            }
            None => (0, e.request.user_id.as_bytes()),
        };
        lanes[lane].push(Record { key: key.to_vec(), value: codec::encode(e) });
    }
    [topic::REQUESTS, topic::REQUESTS_PRIORITY, topic::BROADCASTS]
        .into_iter()
        .zip(lanes)
        .flat_map(|(name, records)| topic::keyed_appends(name, partitions, records))
        .collect()
}

/// Records about jobs (the jobs themselves, retries, dead letters), keyed and so partitioned by
/// user id like the delivery topics.
pub fn keyed_jobs<'a>(
    topic_name: &str,
    partitions: u32,
    records: impl Iterator<Item = (&'a DeliveryJob, Vec<u8>)>,
) -> Vec<Append> {
    let records: Vec<Record> =
        records.map(|(job, value)| Record { key: job.user_id.as_bytes().to_vec(), value }).collect();
    if records.is_empty() {
        return Vec::new();
    }
    topic::keyed_appends(topic_name, partitions, records)
}

/// Events as appends to `herald-events`, partitioned by notification id so
/// one notification's timeline stays in one partition, in order (see
/// [`EncodedEvent::record_key`]).
pub fn event_appends(events: &[DeliveryEvent], partitions: u32) -> Vec<Append> {
    if events.is_empty() {
        return Vec::new();
    }
    let records = events.iter().map(|e| {
        let encoded = EncodedEvent::encode(e);
        (encoded.partition(partitions), Record { key: encoded.record_key(), value: encoded.bytes })
    });
    topic::partitioned_appends(topic::EVENTS, records)
}
