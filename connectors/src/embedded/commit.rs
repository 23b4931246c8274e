//! Group commit: concurrent writers share one fsync.
//!
//! A writer first commits its fjall write batch (into the memtable and the journal's buffers, no
//! sync), then [`GroupCommit::enqueue`]s. One dedicated thread takes every waiter queued so far and
//! runs one persist (`fdatasync` of the journal). Because a waiter is queued only after its write,
//! and the thread takes the queue before it starts the persist, every persist covers the writes of
//! every waiter it answers: "wait for a sync that started after my write". Writers that queue while
//! a persist runs are answered by the next one, so under load one fsync serves a whole crowd.
//!
//! fjall holds its journal lock while it syncs, so writers that arrive during a persist finish
//! their writes right after it, one by one. Were the committer to start the next persist at the
//! first of them, the rest would each pay a persist of their own. So writers announce themselves
//! ([`GroupCommit::writing`]) before they write, and the committer, before it starts a persist,
//! waits for writers already in the middle of a write to queue (at most [`GATHER_LIMIT`]). A lone
//! writer never waits for anyone.
//!
//! Each waiter can carry an action to run once its write is durable (the log uses it to publish a
//! partition's new end to readers); the action runs on the committer thread before the waiter is
//! told, and runs even if the waiter stopped listening, so a cancelled append never hides records
//! that are already durable.
//!
//! # Two committers
//! The database runs two of these over its one journal: one for the bulk threads' writes (the
//! marketing lanes, retries, sinks: `herald_connectors::channels::io::on_bulk`), one for everyone
//! else's (the priority lane, the API, the monitor). A persist covers every write made before it,
//! whichever committer queued it, so the guarantees above hold unchanged. What the split buys: a
//! transactional write never waits for a persist that is gathering bulk writers (bulk threads run
//! at a lower OS priority, so a writer of theirs in the middle of a write can be preempted for
//! milliseconds, and the gather waits for it), nor for a persist busy with a flood's journal
//! bytes. Measured with `herald-loadtest priority` (README, "Priority lanes"): the acknowledgement
//! p99 of transactional requests under a marketing flood fell from 8.3–10.5 ms to 6.4–7.1 ms.

use super::EmbeddedError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The longest a persist waits for writers already writing (a write takes microseconds; this
/// bounds the wait when one is stalled, e.g. by fjall's write backpressure).
pub(crate) const GATHER_LIMIT: Duration = Duration::from_millis(1);

type PersistResult = Result<(), Arc<fjall::Error>>;
type OnDurable = Box<dyn FnOnce() + Send>;

/// Counters of the group commit, for metrics: `waiters / syncs` is the sharing factor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Persists performed (one fsync each).
    pub syncs: u64,
    /// Writes made durable by them.
    pub waiters: u64,
}

struct Waiter {
    done: oneshot::Sender<PersistResult>,
    on_durable: Option<OnDurable>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    closing: bool,
    /// Writers between [`GroupCommit::writing`] and the drop of its guard.
    writing: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    syncs: AtomicU64,
    waiters: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (pushes and swaps only).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The committer: owns the thread that persists. Dropping it serves everyone still queued, then
/// stops and joins the thread.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A queued write's claim on a future persist.
#[must_use = "a write is durable only once its ticket is awaited"]
pub(crate) struct Ticket(oneshot::Receiver<PersistResult>);

impl Ticket {
    /// Waits until the persist covering this write finished.
    pub(crate) async fn durable(self) -> Result<(), EmbeddedError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(EmbeddedError::Persist(error)),
            Err(_) => Err(EmbeddedError::Closed),
        }
    }
}

impl GroupCommit {
    /// Starts the committer thread, named `name`; `persist` makes every write made before it was
    /// called durable.
    pub(crate) fn start(
        name: &str,
        persist: impl FnMut() -> Result<(), fjall::Error> + Send + 'static,
    ) -> std::io::Result<GroupCommit> {
        GroupCommit::start_with_gather(name, persist, GATHER_LIMIT)
    }

    fn start_with_gather(
        name: &str,
        mut persist: impl FnMut() -> Result<(), fjall::Error> + Send + 'static,
        gather_limit: Duration,
    ) -> std::io::Result<GroupCommit> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let shared = thread_shared;
            loop {
                let batch = {
                    let mut queue = shared.queue();
                    while queue.waiting.is_empty() && !queue.closing {
                        queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
                    }
                    if queue.waiting.is_empty() {
                        break;
                    }
                    let deadline = Instant::now() + gather_limit;
                    while queue.writing > 0 && !queue.closing {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        queue =
                            shared.wake.wait_timeout(queue, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
                    }
                    std::mem::take(&mut queue.waiting)
                };
                let started = Instant::now();
                let result = persist().map_err(Arc::new);
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                shared.waiters.fetch_add(batch.len() as u64, Ordering::Relaxed);
                match &result {
                    Ok(()) => tracing::trace!(
                        waiters = batch.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "group commit persisted"
                    ),
                    Err(error) => tracing::error!(%error, waiters = batch.len(), "group commit failed to persist"),
                }
                for waiter in batch {
                    if result.is_ok()
                        && let Some(action) = waiter.on_durable
                    {
                        action();
                    }
                    // The writer may have stopped waiting (cancelled); its data is durable anyway.
                    let _ = waiter.done.send(result.clone());
                }
            }
            tracing::debug!("group commit thread stopped");
        })?;
        Ok(GroupCommit { shared, thread: Some(thread) })
    }

    /// Announces a writer about to write and then [`enqueue`](Self::enqueue); hold the guard until
    /// after the enqueue (or the failure).
    pub(crate) fn writing(&self) -> Writing<'_> {
        self.shared.queue().writing += 1;
        Writing(&self.shared)
    }

    /// Queues a write that was already made; `on_durable` runs once it is durable.
    pub(crate) fn enqueue(&self, on_durable: Option<OnDurable>) -> Result<Ticket, EmbeddedError> {
        let (done, wait) = oneshot::channel();
        {
            let mut queue = self.shared.queue();
            if queue.closing {
                return Err(EmbeddedError::Closed);
            }
            queue.waiting.push(Waiter { done, on_durable });
        }
        self.shared.wake.notify_one();
        Ok(Ticket(wait))
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            waiters: self.shared.waiters.load(Ordering::Relaxed),
        }
    }
}

/// A writer in the middle of a write; see [`GroupCommit::writing`].
pub(crate) struct Writing<'a>(&'a Shared);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.queue().writing -= 1;
        self.0.wake.notify_one();
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.queue().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("group commit thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test]
    async fn writers_queued_during_a_persist_share_the_next_one() {
        let persists = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&persists);
        let commit = GroupCommit::start("test-commit", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        })
        .unwrap();

        let first = commit.enqueue(None).unwrap();
        // Once the committer is inside the first persist, queue ten more behind it.
        while persists.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let published = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&published);
        let mut rest: Vec<Ticket> = (0..9).map(|_| commit.enqueue(None).unwrap()).collect();
        rest.push(commit.enqueue(Some(Box::new(move || flag.store(true, Ordering::SeqCst)))).unwrap());

        first.durable().await.unwrap();
        for ticket in rest {
            ticket.durable().await.unwrap();
        }
        assert!(published.load(Ordering::SeqCst));
        assert_eq!(persists.load(Ordering::SeqCst), 2);
        assert_eq!(commit.stats(), CommitStats { syncs: 2, waiters: 11 });
    }

    #[tokio::test]
    async fn persist_waits_for_writers_already_writing() {
        let persists = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&persists);
        let commit = GroupCommit::start_with_gather(
            "test-commit",
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            Duration::from_secs(60),
        )
        .unwrap();
        let slow_writer = commit.writing();
        let first = commit.enqueue(None).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(persists.load(Ordering::SeqCst), 0, "persist started while a writer was writing");
        let second = commit.enqueue(None).unwrap();
        drop(slow_writer);
        first.durable().await.unwrap();
        second.durable().await.unwrap();
        assert_eq!(persists.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stalled_writer_delays_a_persist_only_up_to_the_limit() {
        let commit = GroupCommit::start_with_gather("test-commit", || Ok(()), Duration::from_millis(30)).unwrap();
        let _stalled = commit.writing();
        let started = Instant::now();
        commit.enqueue(None).unwrap().durable().await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test]
    async fn failed_persist_reaches_every_waiter_and_skips_actions() {
        let commit = GroupCommit::start("test-commit", || Err(fjall::Error::Poisoned)).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let ticket = commit.enqueue(Some(Box::new(move || flag.store(true, Ordering::SeqCst)))).unwrap();
        assert!(matches!(ticket.durable().await, Err(EmbeddedError::Persist(_))));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn drop_serves_queued_waiters_then_stops() {
        let commit = GroupCommit::start("test-commit", || Ok(())).unwrap();
        let ticket = commit.enqueue(None).unwrap();
        drop(commit);
        ticket.durable().await.unwrap();
    }
}
