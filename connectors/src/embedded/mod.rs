//! The embedded backend: one data directory, one fjall database holding the topic log and every
//! state store, for a single-process Herald.
//!
//! # What is promised
//! - **One owner.** A data directory belongs to one process: [`EmbeddedDb::open`] takes an OS lock
//!   on `<dir>/LOCK` (released by the kernel when the process ends, even on SIGKILL); a second open,
//!   from this or another process, fails with [`EmbeddedError::Locked`].
//! - **Durable before return.** Every call that writes (append, offset commit, every store write)
//!   returns only once its data is on disk (`fdatasync` of fjall's journal). Concurrent writers share
//!   one fsync: each writes its batch, then waits for the next sync that starts after its write
//!   (group commit, performed by a dedicated thread; the bulk threads have one of their own, so a
//!   transactional write never waits for theirs).
//! - **Atomic per call.** A call's writes go in one fjall write batch: after a crash either all of
//!   them are there or none.
//! - **Short calls in place, long waits off the runtime.** fjall calls (microseconds) run on the
//!   calling task; the fsync runs on the committer thread and retention on the blocking pool.
//! - **Readers see only durable records**, in offset order, with no gaps below what they see.
//!
//! Retention is not automatic: the runtime calls [`EmbeddedDb::apply_retention`] periodically
//! (every minute is plenty; it blocks, so from `spawn_blocking`); it deletes consumed log records
//! older than [`EmbeddedOptions::retention`] and expired dedup claims. On a clean shutdown the
//! runtime calls [`EmbeddedDb::persist`] after its last write.
//!
//! # Layout
//! - `db.rs`: [`EmbeddedDb`], opening, keyspaces, the blocking-pool bridge, retention.
//! - `lock.rs`: the data-directory lock.
//! - `commit.rs`: group commit (two committers: the bulk threads' and everyone else's).
//! - `log.rs`: the topic log (keys, recovery of end offsets, reads that wait).
//! - `index.rs`: the key-group index of `herald-events`, which the timeline reads.
//! - `stores.rs`: contacts, templates, dedup, throttle, ledger, API keys, timeline (read from the
//!   events log through the index).
//! - `remote.rs`: what the database keeps when the topics live elsewhere (Fluvio): consumer
//!   positions ([`herald_schemas::store::OffsetStore`]) and the timeline's own copy of the events
//!   ([`herald_schemas::store::TimelineFeed`]).
//! - `schedule.rs`: the schedule index and digests ([`herald_schemas::store::ScheduleStore`]).
//! - `subscriptions.rs`: topic subscriptions and broadcast progress
//!   ([`herald_schemas::store::SubscriptionStore`]).
//! - `webhooks.rs`: status webhook registrations and the webhook outbox
//!   ([`herald_schemas::store::WebhookStore`]).

mod commit;
mod db;
mod index;
mod lock;
mod log;
mod reaper;
mod remote;
mod schedule;
mod stores;
mod subscriptions;
mod webhooks;

pub use commit::CommitStats;
pub use db::{EmbeddedDb, EmbeddedOptions, KeyspaceHealth, StoreHealth};
pub use reaper::Reaped;

use herald_schemas::store::StoreError;
use herald_schemas::topic::LogError;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the embedded backend.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The operator's: another Herald process owns the directory. Not retryable.
    #[error(
        "data directory {} is in use by a running Herald server; use its HTTP API instead \
         (or stop that server first)",
        dir.display()
    )]
    Locked { dir: PathBuf },
    /// The operator's: options that cannot work. Not retryable.
    #[error("invalid embedded database options: {0}")]
    InvalidOptions(String),
    /// An outside system's (the file system): the directory or its lock file.
    #[error("cannot use data directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An outside system's (disk): the storage engine failed. May succeed if retried, unless the
    /// engine says it is poisoned (a failed fsync), in which case restart the process.
    #[error("storage engine failed: {0}")]
    Engine(#[from] fjall::Error),
    /// An outside system's (disk): the group commit's fsync failed; the write may be lost.
    #[error("could not make writes durable: {0}")]
    Persist(#[source] Arc<fjall::Error>),
    /// Ours: bytes on disk we cannot read back.
    #[error("corrupt stored value in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The database is shutting down.
    #[error("embedded database is closed")]
    Closed,
}

impl EmbeddedError {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        EmbeddedError::Corrupt { what, detail: detail.into() }
    }
}

impl From<EmbeddedError> for LogError {
    fn from(error: EmbeddedError) -> Self {
        match error {
            EmbeddedError::Closed => LogError::Closed,
            other => LogError::Backend(other.to_string()),
        }
    }
}

impl From<EmbeddedError> for StoreError {
    fn from(error: EmbeddedError) -> Self {
        match error {
            EmbeddedError::Closed => StoreError::Closed,
            EmbeddedError::Corrupt { what, detail } => StoreError::Corrupt { store: what, detail },
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// A database in a fresh temporary directory, for tests (the directory goes with the guard).
#[cfg(test)]
pub(crate) fn open_temp() -> (tempfile::TempDir, EmbeddedDb) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).expect("the database opens");
    (dir, db)
}
