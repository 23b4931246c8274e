//! The state stores of [`herald_schemas::store`] on a ScyllaDB cluster, for distributed mode: one
//! table per store, every query by partition key, lightweight transactions (LWT, Paxos) only where
//! losing a concurrent update would be a bug. Entry points: [`ScyllaOptions::from_url`],
//! [`migrate`] (or [`schema_statements`] to print it), [`ScyllaState::connect`].
//!
//! # What is promised
//! - **Durable when a call returns**: every write is acknowledged by the configured consistency
//!   (default `LOCAL_QUORUM`); the store module's "ordered durability" holds trivially.
//! - **The same answers as the embedded stores** ("was it new", dedup First/Replay/Duplicate,
//!   reopen only of failed deliveries, one timeline entry per event id, time-ordered), also under
//!   concurrent callers in other processes: where an answer depends on what is stored, it comes from
//!   an LWT's compare-and-set, never from a read followed by a blind write.
//! - **Items of one call keep their order** where a later one must see an earlier one (a user or a
//!   dedup key twice in one call): items sharing a key run one after another, other keys run
//!   concurrently (at most [`CONCURRENCY`] requests of a call in flight).
//! - **Routing**: the driver's default load balancing policy is token-aware (and shard-aware):
//!   every statement is prepared and binds its whole partition key, so it goes straight to a
//!   replica, LWTs to the replicas in a fixed order (fewer Paxos conflicts). The driver's default
//!   retry policy retries idempotent statements ([`statements`] marks which are).
//! - **Client-side timestamps** from a monotonic generator: a retried write that the server applies
//!   late can never overwrite a later call's write (ledger states, offsets). Clocks of Herald's hosts
//!   and the cluster must be synchronized (NTP), as ScyllaDB requires anyway: an LWT takes its
//!   timestamp from the server, and the one row both kinds of write touch is a ledger entry
//!   (`reopen_failed` deletes it with an LWT; a replay writes it again, seconds later at the
//!   earliest, far more than any skew NTP leaves).
//! - **LWTs need a keyspace without tablets** on the ScyllaDB releases where LWT does not support
//!   them, so [`migrate`] creates it with `tablets = {'enabled': false}` unless told otherwise
//!   ([`Tablets`]).
//!
//! # Tables (see [`schema_statements`])
//! - `users (user_id PK, data blob, version bigint)`: the `User` as JSON, like the embedded store.
//!   Every write is an LWT on `version` (`INSERT … IF NOT EXISTS`, `UPDATE … IF version = ?`), read
//!   again and retried on conflict, so `put_users` keeping dead addresses, `mark_unreachable` and
//!   `add_opt_out` never lose each other's updates, and "was it new" is exact.
//! - `templates (template_id, locale, data, default_locale STATIC)`: the default variant is the
//!   partition's static `default_locale`, so exactly one variant is the default: a `default: true`
//!   write sets it; any other write sets it only if unset (`IF default_locale = null`), so the first
//!   variant stored is the default until another claims it. Variant writes are LWTs (exact "was it
//!   new"). Should the static cell be missing (a crash between the two writes), the first variant by
//!   locale is the default.
//! - `dedup (dedup_key PK, notification, expires_at_ms)`, rows with a TTL to their expiry plus a
//!   grace minute. A claim is `INSERT … IF NOT EXISTS` (a lost claim would be a duplicate send);
//!   when the holder's stored expiry has passed, `UPDATE … IF notification = ? AND expires_at_ms = ?`
//!   takes it over. Decisions read the stored expiry, never the TTL.
//! - `throttle_hits (cap_key, notification, at_ms)`, all three the primary key, rows with a TTL of
//!   the cap window. Writing is a plain insert (no LWT on the send path): a replay at another time
//!   adds a row, and a read keeps each notification's earliest hit, so a notification counts once,
//!   at its first time. `hits` reads the key's whole partition (a window's hits of one user and
//!   category: a handful) and filters `at_ms >= since` in Herald, because the earliest hit must be
//!   seen to know a later row is a replay. Old hits are forgotten by their TTL rather than deleted
//!   (no tombstones on the send path): they stay readable up to the grace period after they leave
//!   the window, and every caller asks only for hits inside it.
//! - `ledger (delivery_id PK, state tinyint)` and `sink_positions (sink PK, position bigint)`:
//!   `record_deliveries` with a sink position is one LOGGED batch, so the position and the states
//!   land together or not at all (the states alone would lose outbox messages a torn tail cut);
//!   `reopen_failed` is `DELETE … IF state = failed` per id.
//! - `api_keys (hash PK, data blob)`: `ApiKeyRecord` as JSON.
//! - `timeline (notification_id, event_id, data blob)`: events as encoded on `herald-events`; the
//!   event id is the clustering key, so an event written twice is kept once (the last copy). Rows
//!   expire after [`ScyllaOptions::timeline_ttl`]. Implements both [`TimelineStore`] and
//!   [`TimelineFeed`].
//! - `offsets ((consumer_group, topic, partition_id) PK, next_offset)`: plain writes; each
//!   partition is committed by one task, in order.
//! - `workers (cluster, worker)` with a TTL per heartbeat, and `leases (cluster, partition_id,
//!   owner)`: a lease is taken with `INSERT … IF NOT EXISTS USING TTL`, renewed with `UPDATE … USING
//!   TTL … IF owner = ?`, released with `DELETE … IF owner = ?`, so a partition never has two holders.
//! - The schedule ([`ScheduleStore`]; `schedule.rs` and `digests.rs` say why each write is what it
//!   is):
//!   - `holds ((notification_id), reason)`: each hold's state and index position. Every write an
//!     LWT on `state`: created `IF state = null` (a replay finds the state it has), taken for
//!     release `IF state = waiting`, ended `IF state = releasing` / `waiting` (so a cancel and a
//!     release never both win), ending rewriting every column `USING TTL` of a week.
//!   - `schedule ((partition_id, bucket), due_at_ms, notification_id, reason) → envelope`: the
//!     index, one partition per hour of due times of one Herald partition (`bucket = due / 1 h`),
//!     plain writes; `schedule_buckets (partition_id, bucket)`: the buckets that may have rows, so
//!     the scheduler's `due` reads a few bounded partitions, never a scan; a bucket found empty an
//!     hour after its end leaves the list (a back-dated delete, checked again after).
//!   - `digests (digest_id PK, …, member_count, last_member, collecting)`: every write an LWT (a
//!     join's sequence number is a compare-and-set on the count, refused once `collecting` is
//!     false); `digest_members ((digest_id), seq) → envelope`, plain writes with a TTL;
//!     `digest_open ((user_id, digest_key)) → digest_id`, opened `IF NOT EXISTS`, closed `IF
//!     digest_id = ?`; `digest_member_of (member_id PK) → digest_id`, `IF NOT EXISTS` with a TTL of
//!     the window plus a week (a replayed join changes nothing).
//! - Subscriptions ([`SubscriptionStore`]; `subscriptions.rs` says why): `user_topics (user_id
//!   PK, topics set<text>)`; `topic_subscribers ((topic, bucket), user_id)`, a topic's subscribers
//!   split into 16 partitions by a salted hash of the user id and paged in (bucket, user id) order
//!   with `LIMIT`, a few bounded queries per page; `broadcast_cursors (broadcast_id PK, cursor)`
//!   with a TTL of 30 days. All plain writes: `set_topics` widens the stored set before it touches
//!   the index and narrows it after, so a crash never leaves an index row it would not remove.
//! - `webhooks (scope, client_id, data)`, `webhook_status (client_id PK, data)` and `webhook_outbox
//!   ((client_id, partition_id), first_offset, …)`: status webhooks, see `webhooks.rs`; the
//!   outbox's positions are rows of `sink_positions`.
//!
//! # Layout
//! - `options.rs`: [`ScyllaOptions`] and the `scylla://` URL.
//! - `schema.rs`: [`schema_statements`], [`migrate`].
//! - `statements.rs`: every statement's text and idempotence ([`statement_specs`]), prepared once.
//! - `state.rs`: [`ScyllaState`]: the session and the request helpers every store uses.
//! - `values.rs`: column encodings, TTLs, reading an LWT's answer.
//! - One file per store: `contacts.rs`, `templates.rs`, `dedup.rs`, `throttle.rs`, `ledger.rs`,
//!   `keys.rs`, `timeline.rs`, `offsets.rs`, `membership.rs`, `schedule.rs` (with `digests.rs`),
//!   `subscriptions.rs`;
//!   each keeps its decisions in pure functions, tested without a cluster. Tests against a live
//!   cluster are in `connectors/tests/scylla.rs` (they run when `HERALD_SCYLLA_NODES` is set).
//!   `keys.rs`, `timeline.rs`, `offsets.rs`, `membership.rs`, `webhooks.rs`; each keeps its
//!   decisions in pure functions, tested without a cluster. Tests against a live cluster are in
//!   `connectors/tests/scylla.rs` (they run when `HERALD_SCYLLA_NODES` is set).
//!
//! [`ScheduleStore`]: herald_schemas::store::ScheduleStore
//! [`SubscriptionStore`]: herald_schemas::store::SubscriptionStore
//! [`TimelineStore`]: herald_schemas::store::TimelineStore
//! [`TimelineFeed`]: herald_schemas::store::TimelineFeed

mod contacts;
mod dedup;
mod digests;
mod keys;
mod ledger;
mod membership;
mod offsets;
mod options;
mod schedule;
mod schema;
mod state;
pub mod statements;
mod subscriptions;
mod templates;
mod throttle;
mod timeline;
mod values;
mod webhooks;

pub use options::{
    DEFAULT_CLUSTER, DEFAULT_KEYSPACE, DEFAULT_PAGE_SIZE, DEFAULT_PORT, Keyspace, ReplicationSpec, ScyllaOptions,
    ScyllaOptionsError, Tablets, parse_consistency,
};
pub use schema::{migrate, schema_statements};
pub use state::{CONCURRENCY, ScyllaState};
pub use statements::{StatementSpec, statement_specs};

use ::scylla::errors::{ExecutionError, NewSessionError, PrepareError, SchemaAgreementError};
use herald_schemas::store::StoreError;
use statements::Stmt;

/// Everything that can go wrong with the ScyllaDB backend.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    /// The operator's: options that cannot work. Not retryable.
    #[error(transparent)]
    Options(#[from] ScyllaOptionsError),
    /// An outside system's (the cluster, the network) or the operator's (nodes, credentials).
    #[error("cannot connect to ScyllaDB at {nodes}: {source}")]
    Connect {
        nodes: String,
        #[source]
        source: Box<NewSessionError>,
    },
    /// Usually the operator's: the keyspace or a table does not exist yet.
    #[error("cannot prepare {statement:?} (has `herald migrate` created keyspace {keyspace}?): {source}")]
    Prepare {
        statement: Stmt,
        keyspace: String,
        #[source]
        source: Box<PrepareError>,
    },
    /// An outside system's, or the operator's (permissions, replication naming unknown data centers).
    #[error("schema statement failed: {statement}: {source}")]
    Migrate {
        statement: String,
        #[source]
        source: Box<ExecutionError>,
    },
    /// An outside system's: some node did not take the new schema in time. Running again is safe.
    #[error("ScyllaDB nodes did not agree on the schema: {0}")]
    SchemaAgreement(#[source] Box<SchemaAgreementError>),
    /// An outside system's (a node down, a timeout, overload): may succeed if retried.
    #[error("{statement:?} on table {table} failed: {source}")]
    Request {
        statement: Stmt,
        table: &'static str,
        #[source]
        source: Box<ExecutionError>,
    },
    /// An outside system's: concurrent writers kept winning a compare-and-set. May succeed if retried.
    #[error("table {table}: gave up on {key:?} after {attempts} conflicting concurrent writes")]
    Contention { table: &'static str, key: String, attempts: u32 },
    /// Ours: rows we cannot read back (a value Herald did not write, or a table of another shape).
    #[error("corrupt stored value in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// Ours or the caller's: a number too large for its column.
    #[error("{what} {value} does not fit its CQL column")]
    OutOfRange { what: &'static str, value: u64 },
    /// Ours: a broken invariant of this module.
    #[error("internal error in the ScyllaDB backend: {0}")]
    Internal(&'static str),
}

impl ScyllaError {
    pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> Self {
        ScyllaError::Corrupt { table, detail: detail.into() }
    }
}

impl From<ScyllaError> for StoreError {
    fn from(error: ScyllaError) -> Self {
        match error {
            ScyllaError::Corrupt { table, detail } => StoreError::Corrupt { store: table, detail },
            ScyllaError::OutOfRange { what, .. } => StoreError::Corrupt { store: what, detail: error.to_string() },
            other => StoreError::Backend(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outside_failures_are_retryable() {
        let contention = ScyllaError::Contention { table: "users", key: "u1".into(), attempts: 8 };
        assert!(StoreError::from(contention).is_retryable());
        let corrupt = StoreError::from(ScyllaError::corrupt("ledger", "unknown state 9"));
        assert!(matches!(corrupt, StoreError::Corrupt { store: "ledger", .. }) && !corrupt.is_retryable());
        let range = StoreError::from(ScyllaError::OutOfRange { what: "offset", value: u64::MAX });
        assert!(!range.is_retryable());
    }
}
