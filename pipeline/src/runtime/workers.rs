//! Partitions shared among workers (distributed mode, state on ScyllaDB).
//!
//! # Assignment
//! Every worker announces itself with a heartbeat that expires ([`Membership::heartbeat`]). The
//! live workers, sorted by id, each own the partitions whose number modulo their count is the
//! worker's rank ([`desired`]): every worker computes the same split from the same list, so there
//! is nothing to negotiate. A partition number names that partition of every topic (a user's
//! records are in the same partition of each).
//!
//! # Safety: one processor per partition
//! A worker processes a partition only while it holds the partition's lease, taken and renewed by
//! compare-and-set ([`Membership::acquire_lease`]); a lease expires on its own `lease_ttl` after
//! its last renewal. A keeper task renews the held leases every `heartbeat`, independently of
//! rebalancing and draining; should a renewal fail or find the lease lost, or should renewals
//! stop succeeding for half a `lease_ttl`, the worker stops its chains at once.
//!
//! # Rebalance ("eager", like Kafka's classic protocol)
//! When the set of leases a worker can hold changes (a worker joined, left or died), it stops its
//! runtime (every chain drains and commits), gives back the leases it no longer wants, takes the
//! free ones it wants, and starts again on what it holds. A partition it wants but another still
//! holds (that worker is draining) is taken at a later heartbeat, once released or expired.
//! On SIGTERM a worker drains, commits, releases its leases and leaves the live set at once, so
//! the others take its partitions at their next heartbeat: a graceful hand-over.

use super::Runtime;
use crate::app::App;
use herald_schemas::store::{Membership, StoreError};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The partitions `worker` should own among `live` (sorted or not): those whose number modulo the
/// number of live workers is the worker's rank. Empty when `worker` is not live.
pub fn desired(live: &[String], worker: &str, partitions: u32) -> BTreeSet<u32> {
    let mut sorted: Vec<&str> = live.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let Some(rank) = sorted.iter().position(|w| *w == worker) else { return BTreeSet::new() };
    let n = sorted.len() as u32;
    (0..partitions).filter(|p| p % n == rank as u32).collect()
}

/// How a worker takes part in the assignment.
#[derive(Clone)]
pub struct Coordinator {
    pub membership: Arc<dyn Membership>,
    /// This worker's id, unique among the workers (host name, process id and a random part).
    pub worker: String,
    pub partitions: u32,
    /// How long a heartbeat and a lease last without renewal.
    pub lease_ttl: Duration,
    /// How often heartbeats and leases are renewed and the assignment looked at again.
    pub heartbeat: Duration,
}

/// The leases a worker holds, shared with the keeper task.
#[derive(Default)]
struct Held {
    partitions: BTreeSet<u32>,
    /// When every held lease was last renewed.
    renewed: Option<Instant>,
}

impl Coordinator {
    /// Keeps a runtime on the partitions this worker holds until `shutdown`; then drains,
    /// releases every lease and leaves. `request_lag` is the runtime's, for the API's 503.
    pub async fn run(self, app: Arc<App>, shutdown: CancellationToken, request_lag: Arc<AtomicU64>) {
        let held = Arc::new(Mutex::new(Held::default()));
        let fence = CancellationToken::new();
        let keeper = tokio::spawn(self.clone().keep_leases(held.clone(), fence.clone(), shutdown.clone()));
        let mut runtime: Option<Runtime> = None;
        let mut lag_task: Option<tokio::task::JoinHandle<()>> = None;
        tracing::info!(worker = %self.worker, partitions = self.partitions, "joining the workers");
        loop {
            if fence.is_cancelled() {
                // A lease was lost: stop processing at once, then start over with what we hold.
                tracing::warn!(worker = %self.worker, "a partition lease was lost or not renewed; stopping the chains");
                if let Some(r) = runtime.take() {
                    r.stop().await;
                }
                lock(&held).partitions.clear();
                break self.leave(&held, runtime, lag_task).await;
            }
            match self.rebalance(&held).await {
                Ok(Some((release, now_held))) => {
                    if let Some(r) = runtime.take() {
                        tracing::info!(worker = %self.worker, "assignment changed: draining before the hand-over");
                        r.stop().await;
                    }
                    if let Some(t) = lag_task.take() {
                        t.abort();
                    }
                    for p in release {
                        if let Err(error) = self.membership.release_lease(p, &self.worker).await {
                            tracing::warn!(partition = p, %error, "lease not released; it expires on its own");
                        }
                    }
                    lock(&held).partitions = now_held.clone();
                    tracing::info!(worker = %self.worker, owned = ?now_held, "partitions assigned");
                    if !now_held.is_empty() {
                        let owned: Arc<[u32]> = now_held.iter().copied().collect();
                        let r = Runtime::start_owning(&app, owned);
                        lag_task = Some(tokio::spawn(mirror(r.request_lag.clone(), request_lag.clone())));
                        runtime = Some(r);
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(worker = %self.worker, %error, "assignment not refreshed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break self.leave(&held, runtime, lag_task).await,
                _ = fence.cancelled() => {}
                _ = tokio::time::sleep(self.heartbeat) => {}
            }
        }
        keeper.abort();
    }

    /// One look at the assignment: heartbeat, the live workers, leases to take. Returns the
    /// leases to give back and the new held set when the held set changes.
    async fn rebalance(&self, held: &Mutex<Held>) -> Result<Option<(Vec<u32>, BTreeSet<u32>)>, StoreError> {
        self.membership.heartbeat(&self.worker, self.lease_ttl).await?;
        let live = self.membership.live_workers().await?;
        let want = desired(&live, &self.worker, self.partitions);
        let current = lock(held).partitions.clone();
        let mut next: BTreeSet<u32> = current.intersection(&want).copied().collect();
        for &p in want.difference(&current) {
            if self.membership.acquire_lease(p, &self.worker, self.lease_ttl).await? {
                next.insert(p);
            } else {
                tracing::debug!(partition = p, "wanted partition still held by another worker");
            }
        }
        if next == current {
            return Ok(None);
        }
        let release = current.difference(&want).copied().collect();
        Ok(Some((release, next)))
    }

    /// Renews the held leases every heartbeat; cancels `fence` when one is lost, or when renewals
    /// have failed for half a lease's life (the lease may be about to expire under us).
    async fn keep_leases(self, held: Arc<Mutex<Held>>, fence: CancellationToken, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.heartbeat) => {}
            }
            let partitions = lock(&held).partitions.clone();
            let mut ok = true;
            for p in partitions {
                match self.membership.acquire_lease(p, &self.worker, self.lease_ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(partition = p, worker = %self.worker, "partition lease lost");
                        fence.cancel();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(partition = p, %error, "lease not renewed");
                        ok = false;
                    }
                }
            }
            let mut h = lock(&held);
            if ok {
                h.renewed = Some(Instant::now());
            } else if h.renewed.is_some_and(|at| at.elapsed() > self.lease_ttl / 2) {
                fence.cancel();
                return;
            }
        }
    }

    /// Drains, gives back every lease and leaves the live set.
    async fn leave(&self, held: &Mutex<Held>, runtime: Option<Runtime>, lag: Option<tokio::task::JoinHandle<()>>) {
        if let Some(r) = runtime {
            r.stop().await;
        }
        if let Some(t) = lag {
            t.abort();
        }
        let partitions = std::mem::take(&mut lock(held).partitions);
        for p in partitions {
            if let Err(error) = self.membership.release_lease(p, &self.worker).await {
                tracing::warn!(partition = p, %error, "lease not released; it expires on its own");
            }
        }
        if let Err(error) = self.membership.leave(&self.worker).await {
            tracing::warn!(%error, "not removed from the live workers; the heartbeat expires on its own");
        }
        tracing::info!(worker = %self.worker, "left the workers");
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copies the current runtime's request lag into the one the API reads.
async fn mirror(from: Arc<AtomicU64>, to: Arc<AtomicU64>) {
    loop {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A worker id: host name, process id and a random part, so a restarted process is a new worker.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "herald".to_string() } else { host };
    format!("{host}-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_whatever_the_order() {
        let live = names(&["w-c", "w-a", "w-b"]);
        let mut seen = BTreeSet::new();
        for w in &live {
            for p in desired(&live, w, 16) {
                assert!(seen.insert(p), "partition {p} owned twice");
            }
        }
        assert_eq!(seen, (0..16).collect());
        // Order of the list does not matter; ranks come from the sorted ids.
        assert_eq!(desired(&live, "w-a", 16), desired(&names(&["w-b", "w-a", "w-c"]), "w-a", 16));
        assert_eq!(desired(&live, "w-a", 6), BTreeSet::from([0, 3]));
    }

    /// Our own `Membership` in memory, with the promises of the real ones (leases by
    /// compare-and-set, expiry), to run the assignment steps of several workers against.
    #[derive(Default)]
    struct Shared {
        workers: Mutex<std::collections::BTreeMap<String, Instant>>,
        leases: Mutex<std::collections::BTreeMap<u32, (String, Instant)>>,
    }

    #[async_trait::async_trait]
    impl Membership for Shared {
        async fn heartbeat(&self, worker: &str, ttl: Duration) -> Result<(), StoreError> {
            self.workers.lock().unwrap().insert(worker.into(), Instant::now() + ttl);
            Ok(())
        }
        async fn live_workers(&self) -> Result<Vec<String>, StoreError> {
            let now = Instant::now();
            Ok(self.workers.lock().unwrap().iter().filter(|(_, until)| **until > now).map(|(w, _)| w.clone()).collect())
        }
        async fn leave(&self, worker: &str) -> Result<(), StoreError> {
            self.workers.lock().unwrap().remove(worker);
            Ok(())
        }
        async fn acquire_lease(&self, partition: u32, worker: &str, ttl: Duration) -> Result<bool, StoreError> {
            let mut leases = self.leases.lock().unwrap();
            let now = Instant::now();
            match leases.get(&partition) {
                Some((owner, until)) if owner != worker && *until > now => Ok(false),
                _ => {
                    leases.insert(partition, (worker.into(), now + ttl));
                    Ok(true)
                }
            }
        }
        async fn release_lease(&self, partition: u32, worker: &str) -> Result<(), StoreError> {
            let mut leases = self.leases.lock().unwrap();
            if leases.get(&partition).is_some_and(|(owner, _)| owner == worker) {
                leases.remove(&partition);
            }
            Ok(())
        }
    }

    fn coordinator(shared: &Arc<Shared>, worker: &str) -> Coordinator {
        Coordinator {
            membership: shared.clone(),
            worker: worker.into(),
            partitions: 4,
            lease_ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(3),
        }
    }

    /// One assignment step as `run` makes it: rebalance, then give back and record.
    async fn step(c: &Coordinator, held: &Mutex<Held>) -> BTreeSet<u32> {
        if let Some((release, now_held)) = c.rebalance(held).await.unwrap() {
            for p in release {
                c.membership.release_lease(p, &c.worker).await.unwrap();
            }
            lock(held).partitions = now_held;
        }
        lock(held).partitions.clone()
    }

    #[tokio::test]
    async fn partitions_move_to_a_joining_worker_only_once_given_back_and_back_when_it_leaves() {
        let shared = Arc::new(Shared::default());
        let (a, b) = (coordinator(&shared, "a"), coordinator(&shared, "b"));
        let (held_a, held_b) = (Mutex::new(Held::default()), Mutex::new(Held::default()));
        assert_eq!(step(&a, &held_a).await, BTreeSet::from([0, 1, 2, 3]));
        // b joins: it wants 1 and 3, which a still holds, so it gets nothing yet.
        assert_eq!(step(&b, &held_b).await, BTreeSet::new());
        // a sees b, drains and gives 1 and 3 back; b takes them at its next step.
        assert_eq!(step(&a, &held_a).await, BTreeSet::from([0, 2]));
        assert_eq!(step(&b, &held_b).await, BTreeSet::from([1, 3]));
        // Never two holders.
        let leases = shared.leases.lock().unwrap().clone();
        assert_eq!(leases.iter().filter(|(_, (w, _))| w == "a").map(|(p, _)| *p).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(leases.iter().filter(|(_, (w, _))| w == "b").map(|(p, _)| *p).collect::<Vec<_>>(), [1, 3]);
        // b leaves gracefully: gives its leases back; a takes everything at its next step.
        b.leave(&held_b, None, None).await;
        assert_eq!(step(&a, &held_a).await, BTreeSet::from([0, 1, 2, 3]));
    }

    #[tokio::test]
    async fn a_dead_workers_partitions_are_taken_once_its_leases_expire() {
        let shared = Arc::new(Shared::default());
        let mut a = coordinator(&shared, "a");
        let b = coordinator(&shared, "b");
        a.lease_ttl = Duration::from_millis(50);
        let (held_a, held_b) = (Mutex::new(Held::default()), Mutex::new(Held::default()));
        assert_eq!(step(&a, &held_a).await, BTreeSet::from([0, 1, 2, 3]));
        assert!(step(&b, &held_b).await.is_empty());
        assert_eq!(step(&a, &held_a).await, BTreeSet::from([0, 2]));
        assert_eq!(step(&b, &held_b).await, BTreeSet::from([1, 3]));
        // a dies (no leave, no release): b takes its partitions only after heartbeat and leases expire.
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(step(&b, &held_b).await, BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn a_worker_not_live_owns_nothing_and_one_worker_owns_all() {
        assert!(desired(&names(&["a", "b"]), "c", 8).is_empty());
        assert_eq!(desired(&names(&["a"]), "a", 4), BTreeSet::from([0, 1, 2, 3]));
        // A duplicate in the list does not shift the ranks.
        assert_eq!(desired(&names(&["a", "a", "b"]), "b", 4), BTreeSet::from([1, 3]));
    }
}
