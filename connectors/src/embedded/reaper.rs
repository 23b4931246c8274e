//! Frees the storage engine's flushed memtables on a thread of their own, off the engine's locks.
//!
//! When fjall (`lsm-tree` 3.1) has flushed a memtable to disk, or rotates one, it drops the
//! versions of the tree that became obsolete while it holds that tree's version lock, which every
//! read and every write of the keyspace takes. The last of those versions holds the flushed
//! memtable, so unless someone else still holds it its skiplist is freed right there, under the
//! lock, item by item: 0.2–0.3 µs an item, about 150 ms for a 64 MiB memtable of small items
//! (measured with a timed copy of `lsm-tree`; README, "Found: the growth"). Every call on that
//! keyspace waits for it, a one-time password's included. A rotation of any keyspace runs the same
//! clean-up over all of them, on the writing thread.
//!
//! The [`Reaper`] holds a reference of its own to every keyspace's memtable from the moment it
//! sees it active, so the engine's drop is never the last one. Once the reaper's reference is the
//! only one left, nobody can take another (the engine reaches memtables only through its versions),
//! and the reaper drops it on its own thread, under no lock. A memtable lives from seconds to
//! minutes; the reaper looks every [`INTERVAL`], so it sees every one that lives longer than that.
//!
//! This reads the engine's memtables through `Keyspace::tree`, which fjall exports without
//! documenting it: the workspace pins fjall's exact version, and the tests below fail if a new one
//! stops handing the reaper the memtable that the keyspace fills and flushes.

use fjall::{AbstractTree, Keyspace};
use lsm_tree::Memtable;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the reaper adopts new memtables and frees the ones the engine has let go of.
pub(crate) const INTERVAL: Duration = Duration::from_millis(20);

/// What the reaper has freed since the database opened ([`super::StoreHealth`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Memtables freed.
    pub memtables: u64,
    /// Items (keys with their versions) those memtables held.
    pub items: u64,
}

impl std::ops::AddAssign for Reaped {
    fn add_assign(&mut self, other: Reaped) {
        self.memtables += other.memtables;
        self.items += other.items;
    }
}

/// The memtables held, and the keyspaces they come from.
pub(crate) struct Keeper {
    keyspaces: Vec<Keyspace>,
    /// (keyspace name, memtable), every one adopted and not freed yet.
    kept: Vec<(String, Arc<Memtable>)>,
}

impl Keeper {
    pub(crate) fn new(keyspaces: Vec<Keyspace>) -> Keeper {
        Keeper { keyspaces, kept: Vec::new() }
    }

    /// Frees the memtables only the keeper still holds, then adopts every keyspace's active one.
    pub(crate) fn step(&mut self) -> Reaped {
        let reaped = self.reap();
        self.adopt();
        reaped
    }

    fn adopt(&mut self) {
        for keyspace in &self.keyspaces {
            let active = keyspace.tree.active_memtable();
            if !self.kept.iter().any(|(_, kept)| Arc::ptr_eq(kept, &active)) {
                self.kept.push(((**keyspace.name()).to_string(), active));
            }
        }
    }

    fn reap(&mut self) -> Reaped {
        let mut reaped = Reaped::default();
        // Strong count 1: the engine has no version left that holds it, so it cannot take the
        // memtable again, and the count cannot rise between this check and the drop.
        let (free, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.kept).into_iter().partition(|(_, memtable)| Arc::strong_count(memtable) == 1);
        self.kept = kept;
        for (keyspace, memtable) in free {
            let items = memtable.len() as u64;
            let started = Instant::now();
            drop(memtable);
            reaped += Reaped { memtables: 1, items };
            if items > 0 {
                tracing::debug!(
                    keyspace,
                    items,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "freed a flushed memtable off the store's locks"
                );
            }
        }
        reaped
    }
}

/// The reaper's thread, for as long as the database is open.
pub(crate) struct Reaper {
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    totals: Arc<Totals>,
}

/// [`Reaped`] since the start, added to by the thread, read by [`Reaper::reaped`].
#[derive(Default)]
struct Totals {
    memtables: AtomicU64,
    items: AtomicU64,
}

impl Reaper {
    /// Adopts the memtables active in `keyspaces`, then starts the thread over them. It takes the
    /// calling thread's priority: it frees what the engine's own workers would otherwise have
    /// freed, at theirs.
    pub(crate) fn start(keyspaces: Vec<Keyspace>) -> std::io::Result<Reaper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let totals = Arc::new(Totals::default());
        let added = totals.clone();
        let mut keeper = Keeper::new(keyspaces);
        // The memtables active now, adopted before the caller writes anything.
        keeper.step();
        let thread = std::thread::Builder::new().name("herald-reaper".into()).spawn(move || {
            loop {
                let reaped = keeper.step();
                added.memtables.fetch_add(reaped.memtables, Ordering::Relaxed);
                added.items.fetch_add(reaped.items, Ordering::Relaxed);
                match stopped.recv_timeout(INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        Ok(Reaper { stop: Some(stop), thread: Some(thread), totals })
    }

    pub(crate) fn reaped(&self) -> Reaped {
        let totals = &self.totals;
        Reaped { memtables: totals.memtables.load(Ordering::Relaxed), items: totals.items.load(Ordering::Relaxed) }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the memtable reaper panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::{Database, KeyspaceCreateOptions};

    /// Fills a keyspace, flushes it, and makes the engine run its version clean-up (every rotation
    /// runs it over every keyspace) until it has let go of the flushed memtable. At most `rounds`.
    fn flush_and_reap(db: &Database, filled: &Keyspace, keeper: &mut Keeper, rounds: usize) -> Reaped {
        let other = db.keyspace("other", KeyspaceCreateOptions::default).unwrap();
        filled.rotate_memtable_and_wait().unwrap();
        let mut reaped = Reaped::default();
        for round in 0..rounds {
            reaped += keeper.step();
            if reaped.items > 0 {
                break;
            }
            other.insert(round.to_be_bytes(), b"x").unwrap();
            other.rotate_memtable_and_wait().unwrap();
        }
        reaped
    }

    /// A database with the keyspace `filled` (the keeper's) and `other` (rotated to make the engine
    /// clean up its versions).
    fn open() -> (tempfile::TempDir, Database, Keyspace) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let filled = db.keyspace("filled", KeyspaceCreateOptions::default).unwrap();
        (dir, db, filled)
    }

    fn fill(keyspace: &Keyspace, items: u32) {
        for i in 0..items {
            keyspace.insert(i.to_be_bytes(), b"v").unwrap();
        }
    }

    #[test]
    fn the_keeper_holds_a_flushed_memtable_until_the_engine_lets_go_then_frees_it_itself() {
        let (_dir, db, filled) = open();
        let mut keeper = Keeper::new(vec![filled.clone()]);
        assert_eq!(keeper.step(), Reaped::default(), "nothing to free before any flush");
        fill(&filled, 20_000);
        // Adopted while active, before the flush, as the running reaper does.
        let adopted = keeper.kept.iter().find(|(name, _)| name == "filled").map(|(_, m)| m.clone()).unwrap();
        assert_eq!(adopted.len(), 20_000, "the keeper holds the memtable the keyspace fills");
        drop(adopted);

        let reaped = flush_and_reap(&db, &filled, &mut keeper, 20);

        assert_eq!(reaped, Reaped { memtables: 1, items: 20_000 }, "freed by the keeper, once");
        assert_eq!(filled.len().unwrap(), 20_000, "the data is on disk, not lost with the memtable");
        assert_eq!(keeper.step(), Reaped::default(), "freed once");
    }

    #[test]
    fn a_memtable_still_read_is_not_freed() {
        let (_dir, db, filled) = open();
        let mut keeper = Keeper::new(vec![filled.clone()]);
        keeper.step();
        fill(&filled, 1_000);
        // An iterator holds the tree's version of its start, memtable included.
        let mut reading = filled.iter();
        let reaped = flush_and_reap(&db, &filled, &mut keeper, 3);
        assert_eq!(reaped.items, 0, "freed while an iterator still reads it");
        assert_eq!(reading.next().map(|guard| guard.key().unwrap().to_vec()), Some(0u32.to_be_bytes().to_vec()));
        drop(reading);
        let reaped = flush_and_reap(&db, &filled, &mut keeper, 20);
        assert_eq!(reaped.items, 1_000, "freed once the iterator is gone");
    }

    #[test]
    fn the_thread_counts_what_it_frees_and_stops_with_the_handle() {
        let (_dir, db, filled) = open();
        let reaper = Reaper::start(vec![filled.clone()]).unwrap();
        fill(&filled, 5_000);
        let other = db.keyspace("other", KeyspaceCreateOptions::default).unwrap();
        filled.rotate_memtable_and_wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut round = 0u32;
        while reaper.reaped().items < 5_000 && Instant::now() < deadline {
            other.insert(round.to_be_bytes(), b"x").unwrap();
            other.rotate_memtable_and_wait().unwrap();
            round += 1;
            std::thread::sleep(INTERVAL);
        }
        assert!(reaper.reaped().items >= 5_000, "reaped: {:?}", reaper.reaped());
        drop(reaper);
    }
}
