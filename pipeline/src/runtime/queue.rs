//! Bounded queues between stages, sized in records.
//!
//! A batch takes as many permits as it has records (at least one, at most the
//! capacity) and gives them back when the next stage receives it, so a queue
//! holds at most `capacity` records however large its batches are. A full
//! queue makes `send` wait: the stage before it stops, its own input fills
//! up, and finally the partition readers stop reading. The backlog stays on
//! disk in the topic, never in memory.

use herald_schemas::DeliveryEvent;
use herald_schemas::topic::Commit;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Where a batch came from: committing `next_offset` acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub topic: String,
    pub partition: u32,
    /// The offset after the batch's last record.
    pub next_offset: u64,
}

/// Records on their way through a chain of stages, with the events stages
/// emitted for the ones that stopped, and the positions they came from.
///
/// A batch read from one partition has one source; [`QueueRx::recv_merged`]
/// joins queued batches into one, keeping each partition's records in order.
#[derive(Debug)]
pub struct Batch<T> {
    pub sources: Vec<Source>,
    pub items: Vec<T>,
    pub events: Vec<DeliveryEvent>,
}

impl<T> Batch<T> {
    pub fn new(source: Source, items: Vec<T>) -> Self {
        Self { sources: vec![source], items, events: Vec::new() }
    }

    /// The offsets that acknowledge this batch for `group`: one per partition, the furthest.
    pub fn commits(&self, group: &str) -> Vec<Commit> {
        let mut commits: Vec<Commit> = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            match commits.iter_mut().find(|c| c.topic == s.topic && c.partition == s.partition) {
                Some(c) => c.next_offset = c.next_offset.max(s.next_offset),
                None => commits.push(Commit {
                    group: group.to_string(),
                    topic: s.topic.clone(),
                    partition: s.partition,
                    next_offset: s.next_offset,
                }),
            }
        }
        commits
    }

    fn absorb(&mut self, other: Batch<T>) {
        self.sources.extend(other.sources);
        self.items.extend(other.items);
        self.events.extend(other.events);
    }
}

struct Shared {
    name: &'static str,
    capacity: usize,
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
}

pub struct QueueTx<T> {
    tx: mpsc::UnboundedSender<(Batch<T>, OwnedSemaphorePermit, usize)>,
    shared: Arc<Shared>,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), shared: self.shared.clone() }
    }
}

pub struct QueueRx<T> {
    rx: mpsc::UnboundedReceiver<(Batch<T>, OwnedSemaphorePermit, usize)>,
    shared: Arc<Shared>,
}

/// The receiving stage has stopped.
#[derive(Debug, thiserror::Error)]
#[error("queue {0} is closed")]
pub struct Closed(pub &'static str);

/// A queue named `name` (for metrics) holding at most `capacity` records.
pub fn queue<T>(name: &'static str, capacity: usize) -> (QueueTx<T>, QueueRx<T>) {
    let capacity = capacity.max(1);
    let shared =
        Arc::new(Shared { name, capacity, permits: Arc::new(Semaphore::new(capacity)), queued: AtomicUsize::new(0) });
    let (tx, rx) = mpsc::unbounded_channel();
    (QueueTx { tx, shared: shared.clone() }, QueueRx { rx, shared })
}

impl<T> QueueTx<T> {
    /// Waits for room, then enqueues the batch.
    pub async fn send(&self, batch: Batch<T>) -> Result<(), Closed> {
        let n = batch.items.len().clamp(1, self.shared.capacity);
        let permit =
            self.shared.permits.clone().acquire_many_owned(n as u32).await.map_err(|_| Closed(self.shared.name))?;
        let queued = self.shared.queued.fetch_add(batch.items.len(), Ordering::Relaxed) + batch.items.len();
        crate::telemetry::queue_depth(self.shared.name, queued);
        self.tx.send((batch, permit, n)).map_err(|_| Closed(self.shared.name))
    }
}

impl<T> QueueRx<T> {
    /// The next batch, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Batch<T>> {
        let (batch, permit, _) = self.rx.recv().await?;
        drop(permit);
        let queued = self.shared.queued.fetch_sub(batch.items.len(), Ordering::Relaxed) - batch.items.len();
        crate::telemetry::queue_depth(self.shared.name, queued);
        Some(batch)
    }

    /// The next batch joined with the batches that follow it, up to
    /// `max_records` records, waiting at most `linger` after the first for
    /// more to arrive (zero: only what is already queued). Under load this
    /// turns many small per-partition batches into few large ones, and every
    /// batch costs one durable write downstream; when idle it adds at most
    /// `linger` of latency.
    pub async fn recv_merged(&mut self, max_records: usize, linger: Duration) -> Option<Batch<T>> {
        let mut batch = self.recv().await?;
        self.merge_into(&mut batch, max_records, linger).await;
        Some(batch)
    }

    /// Joins the batches that follow into `batch`, as [`recv_merged`](Self::recv_merged) does
    /// after its first.
    async fn merge_into(&mut self, batch: &mut Batch<T>, max_records: usize, linger: Duration) {
        let deadline = tokio::time::Instant::now() + linger;
        while batch.items.len() < max_records {
            let next = match self.rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                // A zero linger must not touch the timer: a deadline already due still waits for
                // the timer driver's next tick (about a millisecond), at every hop of the chain.
                Err(mpsc::error::TryRecvError::Empty) if linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            let (next, permit, _) = next;
            drop(permit);
            let queued = self.shared.queued.fetch_sub(next.items.len(), Ordering::Relaxed) - next.items.len();
            crate::telemetry::queue_depth(self.shared.name, queued);
            batch.absorb(next);
        }
    }

    /// The next batch of `first` if it has one waiting (or it arrives first), else of `second`,
    /// merged like [`recv_merged`](Self::recv_merged) with what follows it in its own queue;
    /// `None` once both are closed and empty. A priority lane: `second`'s batches wait only while
    /// `first` has something, and a batch of `first` waits at most for the one batch of `second`
    /// already taken.
    pub async fn recv_either(
        first: &mut QueueRx<T>,
        second: &mut QueueRx<T>,
        max_records: usize,
        linger: Duration,
    ) -> Option<Batch<T>> {
        // `recv` is cancel-safe (an mpsc receive): the losing branch loses nothing.
        let (mut batch, rx) = tokio::select! {
            biased;
            Some(b) = first.recv() => (b, first),
            Some(b) = second.recv() => (b, second),
            else => return None,
        };
        rx.merge_into(&mut batch, max_records, linger).await;
        Some(batch)
    }

    /// Records currently waiting.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source {
        Source { topic: "t".into(), partition: 0, next_offset: 1 }
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_sender_until_received() {
        let (tx, mut rx) = queue::<u32>("test", 10);
        tx.send(Batch::new(src(), (0..6).collect())).await.unwrap();
        // 6 of 10 records queued: another 6 must wait.
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(Batch::new(src(), (0..6).collect())).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished());
        assert_eq!(rx.queued(), 6);
        assert_eq!(rx.recv().await.unwrap().items.len(), 6);
        blocked.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().items.len(), 6);
    }

    #[tokio::test]
    async fn merged_batches_keep_order_and_commit_the_furthest_offset_per_partition() {
        let (tx, mut rx) = queue::<u32>("test", 100);
        for (i, p) in [(1u64, 0u32), (2, 1), (3, 0)] {
            let source = Source { topic: "t".into(), partition: p, next_offset: i * 10 };
            tx.send(Batch::new(source, vec![i as u32; 3])).await.unwrap();
        }
        let batch = rx.recv_merged(7, Duration::ZERO).await.unwrap();
        assert_eq!(batch.items, vec![1, 1, 1, 2, 2, 2, 3, 3, 3]);
        let commits = batch.commits("g");
        assert_eq!(commits.len(), 2);
        assert_eq!(commits.iter().find(|c| c.partition == 0).unwrap().next_offset, 30);
        assert_eq!(commits.iter().find(|c| c.partition == 1).unwrap().next_offset, 20);
        assert_eq!(rx.queued(), 0);
    }

    #[tokio::test]
    async fn the_first_queue_goes_first_and_both_drain_before_the_end() {
        let (tx_first, mut first) = queue::<u32>("first", 100);
        let (tx_second, mut second) = queue::<u32>("second", 100);
        tx_second.send(Batch::new(src(), vec![20, 21])).await.unwrap();
        tx_first.send(Batch::new(src(), vec![10])).await.unwrap();
        tx_first.send(Batch::new(src(), vec![11])).await.unwrap();
        let got = QueueRx::recv_either(&mut first, &mut second, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.items, [10, 11], "the first queue, merged");
        let got = QueueRx::recv_either(&mut first, &mut second, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.items, [20, 21]);
        drop((tx_first, tx_second));
        assert!(QueueRx::recv_either(&mut first, &mut second, 10, Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn oversized_batches_still_pass_and_order_is_kept() {
        let (tx, mut rx) = queue::<u32>("test", 4);
        let sender = tokio::spawn(async move {
            for i in 0..5u32 {
                tx.send(Batch::new(src(), vec![i; 9])).await.unwrap();
            }
        });
        for i in 0..5u32 {
            assert_eq!(rx.recv().await.unwrap().items[0], i);
        }
        sender.await.unwrap();
        assert!(rx.recv().await.is_none());
    }
}
