//! [`EmbeddedDb`]: the handle the runtime holds. Cheap to clone; every clone is the same database.
//!
//! It implements [`herald_schemas::topic::TopicLog`] (see `log.rs`) and every store trait of
//! [`herald_schemas::store`] (see `stores.rs`). All of them live in one fjall database under
//! `<dir>/db`, each in its own keyspace, so one write batch can span them.

use super::EmbeddedError;
use super::commit::{CommitStats, GroupCommit, Ticket};
use super::lock::DirLock;
use super::log::TopicState;
use super::reaper::{Reaped, Reaper};
use crate::channels::io::Raised;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the embedded database behaves. `Default` is what `herald serve` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Partitions of a topic created with `ensure_topic(name, 0)`.
    pub default_partitions: u32,
    /// How long a log record is kept once every consumer group of its topic has consumed it.
    /// Records some group has not consumed are kept however old they are.
    pub retention: Duration,
    /// fjall's block cache, in bytes.
    pub cache_bytes: u64,
    /// Topics whose records are indexed by key group (see `index.rs`): `herald-events`, which the
    /// timeline reads that way.
    pub indexed_topics: Vec<String>,
    /// How long an indexed topic's records are kept after their append (at least `retention`,
    /// and never before every consumer group has read them).
    pub indexed_retention: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            default_partitions: 8,
            retention: Duration::from_secs(3600),
            cache_bytes: 64 << 20,
            indexed_topics: vec![herald_schemas::topic::EVENTS.to_string()],
            indexed_retention: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

impl EmbeddedOptions {
    pub(crate) fn indexes(&self, topic: &str) -> bool {
        self.indexed_topics.iter().any(|t| t == topic)
    }
}

/// The keyspaces, one per kind of data.
pub(crate) struct Keyspaces {
    /// Topic name → `TopicMeta` (JSON).
    pub(crate) topics: Keyspace,
    /// `topic id | partition | first offset` (big-endian) → a batch of records (see `log.rs`).
    pub(crate) records: Keyspace,
    /// `topic id | partition` → first offset retention kept (so an emptied partition keeps its end).
    pub(crate) log_starts: Keyspace,
    /// `topic id | partition | group` → next offset to read.
    pub(crate) offsets: Keyspace,
    pub(crate) contacts: Keyspace,
    pub(crate) templates: Keyspace,
    pub(crate) dedup: Keyspace,
    /// `expires_at | dedup key` → (), to drop expired claims without a full scan.
    pub(crate) dedup_expiry: Keyspace,
    pub(crate) throttle: Keyspace,
    pub(crate) ledger: Keyspace,
    /// Sink name → position committed with the ledger.
    pub(crate) sinks: Keyspace,
    pub(crate) api_keys: Keyspace,
    /// Key-group index of the indexed topics (see `index.rs`).
    pub(crate) index: Keyspace,
    /// Consumer positions on a log outside this database (Fluvio), see `remote.rs`.
    pub(crate) positions: Keyspace,
    /// Timeline events fed from a log outside this database, see `remote.rs`.
    pub(crate) timeline: Keyspace,
    /// `written_at_ms | timeline key` → (), to drop old timeline events without a full scan.
    pub(crate) timeline_expiry: Keyspace,
    /// The schedule index and digests, see `schedule.rs`.
    pub(crate) holds: Keyspace,
    pub(crate) schedule: Keyspace,
    pub(crate) schedule_expiry: Keyspace,
    pub(crate) digests: Keyspace,
    pub(crate) digest_open: Keyspace,
    pub(crate) digest_members: Keyspace,
    pub(crate) digest_member_of: Keyspace,
    /// Topic subscriptions and broadcast progress, see `subscriptions.rs`.
    pub(crate) user_topics: Keyspace,
    pub(crate) topic_members: Keyspace,
    pub(crate) broadcast_cursors: Keyspace,
    /// Status webhooks: registrations, delivery status and the outbox, see `webhooks.rs`.
    pub(crate) webhooks: Keyspace,
    pub(crate) webhook_status: Keyspace,
    pub(crate) webhook_outbox: Keyspace,
    /// Every keyspace above, in the order opened, for the store's health gauges and its reaper.
    all: Vec<Keyspace>,
}

impl Keyspaces {
    fn open(db: &Database) -> Result<Keyspaces, fjall::Error> {
        let mut all = Vec::new();
        let mut ks = |name: &str| {
            let keyspace = db.keyspace(name, KeyspaceCreateOptions::default)?;
            all.push(keyspace.clone());
            Ok::<_, fjall::Error>(keyspace)
        };
        let mut keyspaces = Keyspaces {
            topics: ks("topics")?,
            records: ks("records")?,
            log_starts: ks("log_starts")?,
            offsets: ks("offsets")?,
            contacts: ks("contacts")?,
            templates: ks("templates")?,
            dedup: ks("dedup")?,
            dedup_expiry: ks("dedup_expiry")?,
            throttle: ks("throttle")?,
            ledger: ks("ledger")?,
            sinks: ks("sinks")?,
            api_keys: ks("api_keys")?,
            index: ks("log_index")?,
            positions: ks("positions")?,
            timeline: ks("timeline")?,
            timeline_expiry: ks("timeline_expiry")?,
            holds: ks("holds")?,
            schedule: ks("schedule")?,
            schedule_expiry: ks("schedule_expiry")?,
            digests: ks("digests")?,
            digest_open: ks("digest_open")?,
            digest_members: ks("digest_members")?,
            digest_member_of: ks("digest_member_of")?,
            user_topics: ks("user_topics")?,
            topic_members: ks("topic_members")?,
            broadcast_cursors: ks("broadcast_cursors")?,
            webhooks: ks("webhooks")?,
            webhook_status: ks("webhook_status")?,
            webhook_outbox: ks("webhook_outbox")?,
            all: Vec::new(),
        };
        keyspaces.all = all;
        Ok(keyspaces)
    }
}

/// Serializes read-modify-write calls of one store, so two concurrent calls cannot both see a key
/// as free. Held while reading and committing the batch, never while waiting for the fsync.
#[derive(Default)]
pub(crate) struct StoreLocks {
    pub(crate) topics: Mutex<()>,
    pub(crate) dedup: Mutex<()>,
    pub(crate) throttle: Mutex<()>,
    pub(crate) contacts: Mutex<()>,
    pub(crate) templates: Mutex<()>,
    pub(crate) retention: Mutex<()>,
    /// Serializes [`herald_schemas::store::LedgerStore::reopen_failed`]'s read-then-delete.
    pub(crate) ledger: Mutex<()>,
    /// Serializes every call of the schedule store (holds, releases, cancels, digest joins).
    pub(crate) schedule: Mutex<()>,
    /// Serializes `set_topics`' read of the old list and rewrite of the index.
    pub(crate) subscriptions: Mutex<()>,
    /// Serializes webhook registration writes ("was it new?").
    pub(crate) webhooks: Mutex<()>,
}

/// Takes a lock; a panic elsewhere while holding it does not make the data behind it wrong here
/// (fjall holds the data, the lock only orders calls).
pub(crate) fn hold<T>(lock: &Mutex<T>) -> Held<'_, T> {
    // Raised before the lock is taken, so the holder runs raised from its first instant.
    let raised = Raised::enter();
    Held { guard: lock.lock().unwrap_or_else(PoisonError::into_inner), _raised: raised }
}

/// A lock of the store, held. On a bulk thread the holder runs at the process's priority while it
/// holds it ([`Raised`]): the priority lane takes the same locks, and a transactional writer
/// waiting for one must not also wait for the holder's turn on the CPU behind bulk work.
pub(crate) struct Held<'a, T> {
    // Declared first, so dropped first: unlocked, then lowered.
    guard: MutexGuard<'a, T>,
    _raised: Option<Raised>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

pub(crate) struct Inner {
    pub(crate) options: EmbeddedOptions,
    pub(crate) dir: PathBuf,
    /// First to drop: the committers serve their queued writers, then join their threads (which
    /// hold a `Database`). Two over the one journal (see `commit.rs`, "Two committers"): this one
    /// for the writes of the process's own threads (the priority lane, the API, the monitor) ...
    pub(crate) commit: GroupCommit,
    /// ... and this one for the bulk threads' (`herald_connectors::channels::io::on_bulk`).
    pub(crate) bulk_commit: GroupCommit,
    /// Frees the flushed memtables off the engine's locks (see `reaper.rs`); stopped before the
    /// keyspaces it holds are dropped.
    reaper: Reaper,
    pub(crate) ks: Keyspaces,
    pub(crate) topics: RwLock<HashMap<String, Arc<TopicState>>>,
    pub(crate) locks: StoreLocks,
    pub(crate) db: Database,
    /// Last to drop: the directory stays ours until fjall has closed.
    _lock: DirLock,
}

impl Inner {
    /// Commits `batch` (no sync) and queues it for the group commit. An empty batch still gets a
    /// ticket: the caller may have decided from writes of others that are not durable yet, and the
    /// next persist covers those too.
    pub(crate) fn commit_batch(
        &self,
        batch: OwnedWriteBatch,
        on_durable: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Ticket, EmbeddedError> {
        commit(batch)?;
        self.committer().enqueue(on_durable)
    }

    /// The calling thread's committer: the bulk threads' own, or the one of everyone else.
    pub(crate) fn committer(&self) -> &GroupCommit {
        if crate::channels::io::on_bulk() { &self.bulk_commit } else { &self.commit }
    }
}

impl Inner {
    /// Commits `batch` without waiting for a sync ("ordered durability"): fjall keeps one journal
    /// for every keyspace, so the next persist, which every log append and offset commit waits
    /// for, covers this write too, and a crash loses only a suffix of such writes.
    pub(crate) fn commit_ordered(&self, batch: OwnedWriteBatch) -> Result<(), EmbeddedError> {
        commit(batch)
    }
}

/// Commits a write batch (nothing when it is empty). fjall holds its journal lock, which every
/// writer shares, for the whole commit: a bulk thread makes it raised ([`Raised`]).
pub(crate) fn commit(batch: OwnedWriteBatch) -> Result<(), EmbeddedError> {
    if !batch.is_empty() {
        let _raised = Raised::enter();
        batch.commit()?;
    }
    Ok(())
}

/// Makes the journal durable without holding fjall's journal lock during the fsync.
///
/// `Database::persist(SyncData)` fsyncs while it holds the journal writer lock, and every write
/// of every keyspace needs that lock: under load writers queued behind each fsync (measured with
/// `herald bench`: the lock, not the disk, bounded throughput). So the committer asks fjall only to
/// hand its buffered journal bytes to the OS (`PersistMode::Buffer`, a short critical section),
/// then `fdatasync`s the newest journal file through a descriptor of its own, outside the lock.
/// The newest file holds every byte handed over so far unless fjall rotated the journal in
/// between, and fjall syncs a journal file in full when it rotates away from it, so the writes
/// the waiters made are durable either way.
struct JournalSync {
    dir: PathBuf,
    /// The newest journal file seen, opened once.
    current: Option<(u64, std::fs::File)>,
}

impl JournalSync {
    fn new(dir: PathBuf) -> Self {
        Self { dir, current: None }
    }

    fn persist(&mut self, db: &Database) -> Result<(), fjall::Error> {
        db.persist(PersistMode::Buffer)?;
        let newest = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok())
            .max();
        let Some(newest) = newest else {
            // No journal file where fjall keeps them: fall back to fjall's own sync.
            return db.persist(PersistMode::SyncData);
        };
        if self.current.as_ref().is_none_or(|(n, _)| *n != newest) {
            let file = std::fs::File::open(self.dir.join(format!("{newest}.jnl")))?;
            self.current = Some((newest, file));
        }
        if let Some((_, file)) = &self.current {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// [`EmbeddedDb::health`]: the storage engine's backlog at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    pub keyspaces: Vec<KeyspaceHealth>,
    /// Bytes in memtables, active and sealed, over every keyspace.
    pub write_buffer_bytes: u64,
    /// Sealed memtables queued for a flush.
    pub flushes_queued: usize,
    pub compactions_active: usize,
    /// Journal files not yet released (every one holds writes some memtable has not flushed).
    pub journals: usize,
    /// Flushed memtables freed off the engine's locks since the database opened (`reaper.rs`).
    pub reaped: Reaped,
}

/// One keyspace's shape in [`StoreHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceHealth {
    pub name: String,
    /// Memtables full and waiting for their flush (writers halt at 4).
    pub sealed_memtables: usize,
    /// Tables in level 0, not yet compacted into the levels below (writers slow at 20, halt at 30).
    pub l0_tables: usize,
    pub tables: usize,
}

/// The embedded database: topic log and state stores in one data directory.
///
/// Open it once per process ([`EmbeddedDb::open`]) and clone it into every component; the
/// directory is released when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedDb {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl EmbeddedDb {
    /// Opens (creating if needed) the database in `dir`, recovering topics and end offsets.
    ///
    /// Blocking (file I/O and journal recovery): call it before serving, or from
    /// `spawn_blocking`. Fails with [`EmbeddedError::Locked`] when another handle, in this process
    /// or another, has the directory open.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedDb, EmbeddedError> {
        if options.default_partitions == 0 {
            return Err(EmbeddedError::InvalidOptions("default_partitions must be at least 1".into()));
        }
        std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::Io { dir: dir.to_path_buf(), source })?;
        let lock = DirLock::acquire(dir)?;
        let db = Database::builder(dir.join("db")).cache_size(options.cache_bytes).open()?;
        let ks = Keyspaces::open(&db)?;
        let topics = super::log::recover_topics(&ks, &options)?;
        let committer = |name: &str| {
            let committer_db = db.clone();
            let mut journal = JournalSync::new(dir.join("db"));
            GroupCommit::start(name, move || journal.persist(&committer_db))
                .map_err(|source| EmbeddedError::Io { dir: dir.to_path_buf(), source })
        };
        let commit = committer("herald-commit")?;
        let bulk_commit = committer("herald-commit-bulk")?;
        let reaper =
            Reaper::start(ks.all.clone()).map_err(|source| EmbeddedError::Io { dir: dir.to_path_buf(), source })?;
        tracing::info!(dir = %dir.display(), topics = topics.len(), "embedded database opened");
        Ok(EmbeddedDb {
            inner: Arc::new(Inner {
                options,
                dir: dir.to_path_buf(),
                commit,
                bulk_commit,
                reaper,
                ks,
                topics: RwLock::new(topics),
                locks: StoreLocks::default(),
                db,
                _lock: lock,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &EmbeddedOptions {
        &self.inner.options
    }

    /// Group-commit counters since open, both committers together (for `herald bench`).
    pub fn commit_stats(&self) -> CommitStats {
        let (own, bulk) = (self.inner.commit.stats(), self.inner.bulk_commit.stats());
        CommitStats { syncs: own.syncs + bulk.syncs, waiters: own.waiters + bulk.waiters }
    }

    /// The storage engine's backlog: what its background workers have still to flush and compact.
    /// fjall slows a keyspace's writers once it has 20 tables in level 0, halts them at 30, and
    /// halts them while it has 4 memtables waiting for a flush; these gauges show it coming.
    pub fn health(&self) -> StoreHealth {
        let db = &self.inner.db;
        StoreHealth {
            keyspaces: (self.inner.ks.all.iter())
                .map(|ks| KeyspaceHealth {
                    name: (**ks.name()).to_string(),
                    sealed_memtables: ks.sealed_memtable_count(),
                    l0_tables: ks.l0_table_count(),
                    tables: ks.table_count(),
                })
                .collect(),
            write_buffer_bytes: db.write_buffer_size(),
            flushes_queued: db.outstanding_flushes(),
            compactions_active: db.active_compactions(),
            journals: db.journal_count(),
            reaped: self.inner.reaper.reaped(),
        }
    }

    /// Deletes what is no longer needed; returns how many log records it deleted.
    ///
    /// - Log records of a partition below the *smallest* offset committed by any consumer group
    ///   that ever committed on the topic (a group that never committed on that partition counts
    ///   as 0), and older than [`EmbeddedOptions::retention`]. A topic no group has committed on
    ///   keeps everything. Deletion is a prefix of the partition, so the log never has holes, and
    ///   the partition keeps its end offset even when emptied.
    /// - Expired dedup claims (the dedup store also treats them as free before they are dropped).
    ///
    /// Not automatic: the runtime calls it periodically. Blocking (it scans and deletes): call it
    /// from `spawn_blocking`. Concurrent calls run one after the other. Deletions are not fsynced;
    /// a crash may bring some back, and the next call deletes them again.
    pub fn apply_retention(&self) -> Result<u64, EmbeddedError> {
        let inner = &self.inner;
        let now = now_ms();
        let _serial = hold(&inner.locks.retention);
        let records = inner.apply_log_retention(now)?;
        let claims = inner.purge_expired_claims(now)?;
        let timeline =
            inner.purge_fed_timeline(now.saturating_sub(inner.options.indexed_retention.as_millis() as u64))?;
        let holds = inner.purge_done_holds(now)?;
        if records > 0 || claims > 0 || timeline > 0 || holds > 0 {
            tracing::info!(
                records,
                dedup_claims = claims,
                timeline_events = timeline,
                done_holds = holds,
                "retention deleted consumed records, expired claims and old timeline events"
            );
        } else {
            tracing::debug!("retention found nothing to delete");
        }
        Ok(records)
    }

    /// Syncs everything written so far (journal `fsync`), including what retention deleted.
    ///
    /// Writes through the log and store interfaces are already durable when they return; this is
    /// for a clean shutdown, after the last write. Blocking.
    pub fn persist(&self) -> Result<(), EmbeddedError> {
        self.inner.db.persist(PersistMode::SyncAll)?;
        tracing::debug!(dir = %self.inner.dir.display(), "embedded database persisted");
        Ok(())
    }

    /// Runs `f`, a short fjall call (a memtable insert, a point read, a write-batch commit), in
    /// place on the calling task's thread.
    ///
    /// These calls take microseconds: the slow part of a durable write, the fsync, runs on the
    /// group-commit thread and is awaited, and flushes and compactions run on fjall's own
    /// threads. Two other ways were measured with `herald bench` and dropped:
    /// - `spawn_blocking`: the hop to the blocking pool and back cost ~20 ms per call under load.
    /// - `block_in_place`: every call hands the worker's queue to another thread, so the runtime
    ///   grew to ~65 threads, each with its own allocator heap; resident memory reached 1.9 GB
    ///   for 300k notifications (650 MB in place) and throughput was ~8% lower.
    ///
    /// Retention, the one long call, does not come through here: the monitor runs it with
    /// `spawn_blocking`.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, EmbeddedError>
    where
        F: FnOnce(&Inner) -> Result<T, EmbeddedError>,
    {
        f(&self.inner)
    }

    /// Builds and commits a batch (holding whatever locks `f` takes while it commits),
    /// then waits for the group commit that makes it durable.
    pub(crate) async fn write_durable<T, F>(&self, f: F) -> Result<T, EmbeddedError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<(T, Ticket), EmbeddedError> + Send + 'static,
    {
        let (out, ticket) = self.write_queued(f).await?;
        ticket.durable().await?;
        Ok(out)
    }

    /// Builds and commits a batch and queues it for the group commit without waiting for it:
    /// ordered durability (the write is in the journal, after every earlier one; the next persist
    /// makes it durable and runs its on-durable action).
    pub(crate) async fn write_queued<T, F>(&self, f: F) -> Result<(T, Ticket), EmbeddedError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<(T, Ticket), EmbeddedError> + Send + 'static,
    {
        self.call(move |inner| {
            // Announced before the write so the committer lets this write share its persist.
            let _writing = inner.committer().writing();
            f(inner)
        })
        .await
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::channels::io::{enter_bulk, thread_nice};

    /// A bulk thread holding one of the store's locks runs at the process's priority until it
    /// lets go; other threads are left as they are.
    #[test]
    fn bulk_threads_hold_the_stores_locks_raised() {
        let lock = Mutex::new(0u64);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let own = thread_nice().unwrap();
                *hold(&lock) += 1;
                assert_eq!(thread_nice().unwrap(), own, "not a bulk thread: untouched");
                enter_bulk(12).unwrap();
                let lowered = thread_nice().unwrap();
                let mut held = hold(&lock);
                *held += 1;
                let inside = thread_nice().unwrap();
                drop(held);
                assert_eq!(thread_nice().unwrap(), lowered, "lowered again once the lock is let go");
                if inside == lowered {
                    eprintln!("skipped: this process may not lower a nice value (CAP_SYS_NICE)");
                    return;
                }
                assert!(inside < lowered, "raised while holding: {inside} against {lowered}");
            });
        });
        assert_eq!(*hold(&lock), 2);
    }

    /// The health report names every keyspace of the database once, and a write shows in the
    /// write buffer until it is flushed.
    #[test]
    fn health_names_every_keyspace_and_counts_unflushed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let before = db.health();
        let reported: std::collections::BTreeSet<String> = before.keyspaces.iter().map(|k| k.name.clone()).collect();
        let present: std::collections::BTreeSet<String> =
            db.inner.db.list_keyspace_names().iter().map(|name| (**name).to_string()).collect();
        assert_eq!(reported.len(), before.keyspaces.len(), "a keyspace reported twice");
        assert_eq!(reported, present);
        db.inner.ks.records.insert("k", vec![7u8; 8192]).unwrap();
        let after = db.health();
        assert!(
            after.write_buffer_bytes >= before.write_buffer_bytes + 8192,
            "{} then {}",
            before.write_buffer_bytes,
            after.write_buffer_bytes
        );
        let records = after.keyspaces.iter().find(|k| k.name == "records").unwrap();
        assert_eq!((records.sealed_memtables, records.l0_tables), (0, 0), "nothing flushed yet");
    }
}
