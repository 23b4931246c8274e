//! Dispatchers: delivery topics → ledger check → channel → events → commit.
//!
//! A dispatcher consumes every partition of its routes' topics and sends
//! through one [`Channel`]. For each batch, in order:
//! 1. deliveries already `Done` in the ledger are skipped (a replay);
//! 2. the rest go to the channel;
//! 3. `sent` / `failed` events are appended durably;
//! 4. the ledger records the finished deliveries, atomically with the
//!    channel's sink position when the channel is a sink Herald owns;
//! 5. the batch's offset is committed.
//!
//! On start the channel is told the position last committed with the
//! ledger, so a file outbox cuts whatever it wrote after it (a torn line, or
//! lines whose ledger entries were not recorded and will be sent again).
//! Event ids are derived, so events appended twice across a crash are kept
//! once by their consumers.
//!
//! A retryable outcome stops the dispatcher after recording the rest of the
//! batch: the supervisor restarts it and the replay sends only what is not
//! `Done`.

use super::queue::{QueueRx, queue};
use super::reader::{ReaderSpec, run_reader};
use super::requests::event_appends;
use super::supervise::{TaskFailed, TaskResult};
use crate::telemetry::ChannelBatchSent;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use herald_schemas::codec::{self, CodecError};
use herald_schemas::job::Route;
use herald_schemas::store::{LedgerState, LedgerStore, SinkPosition};
use herald_schemas::topic::{StoredRecord, TopicLog};
use herald_schemas::{DeliveryEvent, DeliveryJob, EventKind, stage::now_ms};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Opens the channel for each (re)start of the dispatcher.
pub type ChannelFactory = Arc<dyn Fn() -> Result<Box<dyn Channel>, ChannelError> + Send + Sync>;

#[derive(Clone)]
pub struct Dispatcher {
    /// Names the consumer group (`herald-dispatch-<name>`) and the sink position.
    pub name: &'static str,
    pub routes: Vec<Route>,
    pub log: Arc<dyn TopicLog>,
    pub ledger: Arc<dyn LedgerStore>,
    pub channel: ChannelFactory,
    pub route_partitions: u32,
    pub event_partitions: u32,
    pub batch_size: usize,
    pub read_wait: Duration,
    pub queue_records: usize,
}

/// A retryable outcome: the dispatcher restarts and the replay sends it again.
#[derive(Debug, thiserror::Error)]
#[error("{count} deliveries were refused for now ({reason}); replaying")]
struct RetryLater {
    count: usize,
    reason: String,
}

fn decode_job(record: &StoredRecord) -> Result<DeliveryJob, CodecError> {
    codec::decode(&record.value)
}

impl Dispatcher {
    pub fn group(&self) -> String {
        format!("herald-dispatch-{}", self.name)
    }

    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let (tx, rx) = queue::<DeliveryJob>(self.name, self.queue_records);
        for route in &self.routes {
            for partition in 0..self.route_partitions {
                let spec = ReaderSpec {
                    topic: route.topic().to_string(),
                    partition,
                    group: self.group(),
                    batch_size: self.batch_size,
                    wait: self.read_wait,
                };
                tasks.spawn(run_reader(self.log.clone(), spec, decode_job, tx.clone(), token.clone()));
            }
        }
        drop(tx);
        tasks.spawn(self.clone().run(rx));
    }

    async fn run(self, mut rx: QueueRx<DeliveryJob>) -> TaskResult {
        let name = self.name;
        let mut channel = (self.channel)().map_err(|e| TaskFailed::new(name, e))?;
        let committed = self.ledger.sink_position(name).await.map_err(|e| TaskFailed::new(name, e))?;
        channel.recover(committed).await.map_err(|e| TaskFailed::new(name, e))?;
        let group = self.group();
        while let Some(batch) = rx.recv().await {
            let started = Instant::now();
            let ids: Vec<_> = batch.items.iter().map(|j| j.delivery_id.clone()).collect();
            let states = self.ledger.states(&ids).await.map_err(|e| TaskFailed::new(name, e))?;
            let fresh: Vec<DeliveryJob> = batch
                .items
                .into_iter()
                .zip(states)
                .filter(|(_, state)| *state != Some(LedgerState::Done))
                .map(|(job, _)| job)
                .collect();
            let skipped = ids.len() - fresh.len();
            let outcomes = if fresh.is_empty() {
                Vec::new()
            } else {
                channel.send(&fresh).await.map_err(|e| TaskFailed::new(name, e))?
            };
            let now = now_ms();
            let mut events = Vec::with_capacity(fresh.len());
            let mut done = Vec::with_capacity(fresh.len());
            let (mut delivered, mut failed, mut retry) = (0, 0, None::<RetryLater>);
            for (job, outcome) in fresh.iter().zip(&outcomes) {
                let (kind, reason) = match outcome {
                    SendOutcome::Delivered { .. } => {
                        delivered += 1;
                        (EventKind::Sent, None)
                    }
                    SendOutcome::Permanent { reason } => {
                        failed += 1;
                        (EventKind::Failed, Some(format!("permanent:{reason}")))
                    }
                    SendOutcome::BadAddress { reason } => {
                        failed += 1;
                        (EventKind::Failed, Some(format!("bad_address:{reason}")))
                    }
                    SendOutcome::Retryable { reason, .. } => {
                        let r = retry.get_or_insert(RetryLater { count: 0, reason: reason.clone() });
                        r.count += 1;
                        continue;
                    }
                };
                events.push(job_event(job, kind, reason, now));
                done.push((job.delivery_id.clone(), LedgerState::Done));
            }
            if !events.is_empty() {
                self.log
                    .append(event_appends(&events, self.event_partitions))
                    .await
                    .map_err(|e| TaskFailed::new(name, e))?;
            }
            let sink = channel.position().map(|position| SinkPosition { sink: name.to_string(), position });
            if !done.is_empty() {
                self.ledger.record(&done, sink).await.map_err(|e| TaskFailed::new(name, e))?;
            }
            ChannelBatchSent {
                channel: channel.name(),
                delivered,
                failed,
                retryable: retry.as_ref().map_or(0, |r| r.count),
                skipped,
                elapsed: started.elapsed(),
            }
            .emit();
            if let Some(retry) = retry {
                return Err(TaskFailed::new(name, retry));
            }
            let source = &batch.source;
            self.log
                .commit(&group, &source.topic, source.partition, source.next_offset)
                .await
                .map_err(|e| TaskFailed::new(name, e))?;
        }
        Ok(())
    }
}

fn job_event(job: &DeliveryJob, kind: EventKind, reason: Option<String>, at_ms: u64) -> DeliveryEvent {
    DeliveryEvent::new(&job.notification_id, &job.client_id, &job.user_id, kind, None, reason, at_ms).for_delivery(
        &job.delivery_id,
        job.target.route(),
        job.attempt,
    )
}
