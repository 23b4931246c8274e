//! The retry scheduler: `herald-retry` → back onto the delivery topics when due.
//!
//! Records on `herald-retry` are not in due order (each attempt has its own backoff), so the
//! scheduler reads ahead and keeps the waiting ones in memory, ordered by due time, up to
//! `max_waiting`; when that many wait, it stops reading and the rest wait on disk. A due job is
//! appended to its route's delivery topic with the same delivery id, in one write with the
//! offset commit. The commit of a partition never passes a record that still waits in memory,
//! so a crash or restart reads those again; one re-released twice is absorbed by the
//! dispatcher's ledger, which sends a delivery id once.

use super::queue::QueueRx;
use super::reader::{ReadSettings, spawn_readers};
use super::requests::job_appends;
use super::supervise::{TaskFailed, TaskResult};
use herald_schemas::codec::{self, CodecError};
use herald_schemas::job::RetryJob;
use herald_schemas::stage::now_ms;
use herald_schemas::topic::{self, Commit, StoredRecord, TopicLog};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "herald-retry";

#[derive(Clone)]
pub struct RetryScheduler {
    pub log: Arc<dyn TopicLog>,
    /// Partitions of the delivery topics (where due jobs go back).
    pub partitions: u32,
    /// The partitions of `herald-retry` this worker processes.
    pub owned: Arc<[u32]>,
    pub read: ReadSettings,
    /// Most jobs held in memory waiting for their time.
    pub max_waiting: usize,
}

fn decode(record: &StoredRecord) -> Result<(u64, RetryJob), CodecError> {
    Ok((record.offset, codec::decode(&record.value)?))
}

/// The jobs waiting in memory, and what may be committed.
#[derive(Default)]
struct Waiting {
    /// (due, partition, offset) of every waiting job, soonest first.
    by_due: BinaryHeap<Reverse<(u64, u32, u64)>>,
    /// (partition, offset) → job: the first key of a partition is what its commit must not pass.
    jobs: BTreeMap<(u32, u64), RetryJob>,
    /// Per partition, the offset after the last record read.
    read_to: BTreeMap<u32, u64>,
}

impl Waiting {
    fn add(&mut self, partition: u32, offset: u64, job: RetryJob) {
        self.by_due.push(Reverse((job.due_at_ms, partition, offset)));
        self.jobs.insert((partition, offset), job);
        let next = self.read_to.entry(partition).or_default();
        *next = (*next).max(offset + 1);
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn next_due(&self) -> Option<u64> {
        self.by_due.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Takes the jobs due at `now`, and the commits that acknowledge everything before the first
    /// offset still waiting in each partition they came from.
    fn take_due(&mut self, now: u64) -> (Vec<RetryJob>, Vec<Commit>) {
        let mut due = Vec::new();
        let mut touched = BTreeSet::new();
        while let Some(Reverse((at, partition, offset))) = self.by_due.peek().copied() {
            if at > now {
                break;
            }
            self.by_due.pop();
            if let Some(job) = self.jobs.remove(&(partition, offset)) {
                due.push(job);
            }
            touched.insert(partition);
        }
        let commits = touched
            .into_iter()
            .filter_map(|partition| {
                let first_waiting = self.jobs.range((partition, 0)..=(partition, u64::MAX)).next();
                let next_offset = match first_waiting {
                    Some(((_, offset), _)) => *offset,
                    None => *self.read_to.get(&partition)?,
                };
                Some(Commit { group: GROUP.into(), topic: topic::RETRY.into(), partition, next_offset })
            })
            .collect();
        (due, commits)
    }
}

impl RetryScheduler {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = self.owned.iter().map(|&p| (topic::RETRY.to_string(), p));
        let rx = spawn_readers("retry", &self.log, sources, GROUP, &self.read, decode, &token, tasks);
        tasks.spawn(self.clone().run(rx));
    }

    async fn run(self, mut rx: QueueRx<(u64, RetryJob)>) -> TaskResult {
        let mut waiting = Waiting::default();
        loop {
            let sleep = match waiting.next_due() {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                batch = rx.recv(), if waiting.len() < self.max_waiting => {
                    let Some(batch) = batch else { return Ok(()) };
                    let Some(source) = batch.sources.first() else { continue };
                    let partition = source.partition;
                    for (offset, job) in batch.items {
                        waiting.add(partition, offset, job);
                    }
                    crate::telemetry::retry_waiting(waiting.len());
                }
                _ = tokio::time::sleep(sleep) => {}
            }
            let (due, commits) = waiting.take_due(now_ms());
            if due.is_empty() {
                continue;
            }
            let released = due.len();
            let parts = job_appends(due.iter().map(|r| &r.job), self.partitions);
            self.log.append_and_commit_ordered(parts, commits).await.map_err(|e| TaskFailed::new("retry", e))?;
            crate::telemetry::retry_released(released, waiting.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: &str, due: u64) -> RetryJob {
        RetryJob { job: crate::runtime::dispatch::tests::job(n), due_at_ms: due, last_error: "503".into() }
    }

    #[test]
    fn releases_in_due_order_and_commits_only_below_what_still_waits() {
        let mut w = Waiting::default();
        w.add(0, 10, job("late", 500));
        w.add(0, 11, job("soon", 100));
        w.add(1, 4, job("other", 200));
        assert_eq!(w.next_due(), Some(100));
        let (due, commits) = w.take_due(150);
        assert_eq!(due.iter().map(|j| j.job.notification_id.0.as_str()).collect::<Vec<_>>(), ["soon"]);
        // Offset 10 still waits: partition 0 commits up to it, not past.
        assert_eq!(commits.len(), 1);
        assert_eq!((commits[0].partition, commits[0].next_offset), (0, 10));
        let (due, commits) = w.take_due(1_000);
        assert_eq!(due.len(), 2);
        let mut got: Vec<(u32, u64)> = commits.iter().map(|c| (c.partition, c.next_offset)).collect();
        got.sort_unstable();
        assert_eq!(got, [(0, 12), (1, 5)]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_due(), None);
    }
}
