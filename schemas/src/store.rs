//! State stores. Every query is by partition key; nothing needs a join, so
//! each store maps to one ScyllaDB table, and in embedded mode all of them
//! live in the same storage engine as the topic log.
//!
//! Writes that stages make are idempotent: replaying a batch after a crash
//! (the consumer had not committed) writes the same facts again.
//!
//! # Durability
//! Writes made through the API-facing stores (contacts, templates, keys) are
//! durable when they return. Writes made while processing a batch (dedup
//! claims, throttle hits, ledger entries, timeline events) are *ordered*:
//! durable when they return, or at the latest together with the next durable
//! log append or commit made after they returned. The embedded backend keeps
//! log and stores in one journal, so one fsync covers both; ScyllaDB writes
//! are durable on their own. Every consumer ends a batch with a durable
//! commit, so a batch's state is durable before its offset is, and a crash
//! loses at most a suffix of writes whose batches are then replayed.

use crate::contacts::User;
use crate::event::{DeliveryEvent, EncodedEvent};
use crate::ids::{DeliveryId, NotificationId};
use crate::template::Template;
use crate::topic::Commit;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An outside system's (disk, cluster): may succeed if retried.
    #[error("state store backend failed: {0}")]
    Backend(String),
    /// Ours: stored bytes we cannot read back.
    #[error("corrupt stored value in {store}: {detail}")]
    Corrupt { store: &'static str, detail: String },
    #[error("state store is closed")]
    Closed,
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

#[async_trait]
pub trait ContactStore: Send + Sync + 'static {
    /// One answer per id, in order; `None` for an unknown user.
    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<User>>, StoreError>;
    /// Stores the users (replacing, but keeping the dead addresses they still name, see
    /// [`User::unreachable`]); returns for each whether it was new.
    async fn put_users(&self, users: &[User]) -> Result<Vec<bool>, StoreError>;
    /// Records that a provider reported `address` of the user as dead. Returns whether it was
    /// recorded now (false: unknown user, an address the user no longer has, or already dead).
    async fn mark_unreachable(&self, user_id: &str, address: &str) -> Result<bool, StoreError>;
    /// Adds `category` to the user's category opt-outs (a one-click unsubscribe). Returns whether
    /// it was added now (false: unknown user, or already opted out).
    async fn add_opt_out(&self, user_id: &str, category: &str) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait TemplateStore: Send + Sync + 'static {
    /// Stores a variant; returns whether it was new.
    async fn put_template(&self, template: &Template) -> Result<bool, StoreError>;
    /// Every locale variant of the template id (empty when unknown).
    async fn get_template(&self, id: &str) -> Result<Vec<Template>, StoreError>;
}

/// A dedup claim: `key` is taken by `notification` until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupClaim {
    pub key: String,
    pub notification: NotificationId,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupDecision {
    /// The key was free (or expired); it is now claimed.
    First,
    /// The same notification claimed it before: a replay, let it through.
    Replay,
    /// Another notification holds the key.
    Duplicate { original: NotificationId },
}

#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Claims each key at `now_ms`, in order (a later claim in the same call
    /// sees an earlier one). Ordered durability (see the module doc).
    async fn claim(&self, claims: &[DedupClaim], now_ms: u64) -> Result<Vec<DedupDecision>, StoreError>;
}

/// One counted send against a frequency cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapHit {
    pub notification: NotificationId,
    pub at_ms: u64,
}

#[async_trait]
pub trait ThrottleStore: Send + Sync + 'static {
    /// The hits recorded for each key (`user/category`) at or after `since_ms`.
    async fn hits(&self, keys: &[String], since_ms: u64) -> Result<Vec<Vec<CapHit>>, StoreError>;
    /// Records hits (idempotent per notification) and forgets those before `prune_before_ms`.
    async fn record_hits(&self, hits: &[(String, CapHit)], prune_before_ms: u64) -> Result<(), StoreError>;
}

/// Where a delivery stands in a dispatcher's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// Handed to a provider, answer not yet recorded.
    InFlight,
    /// Accepted by the provider (or written to the outbox).
    Sent,
    /// Refused for good (permanent error or dead address).
    Failed,
}

impl LedgerState {
    /// Finished: never handed to a channel again.
    pub fn is_done(self) -> bool {
        matches!(self, LedgerState::Sent | LedgerState::Failed)
    }
}

/// A position in a sink Herald owns (a file outbox): committed with the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkPosition {
    pub sink: String,
    pub position: u64,
}

#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// The state of each delivery (`None`: never seen).
    async fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<LedgerState>>, StoreError>;
    /// Records states and, atomically with them, the sink position (ordered durability, see the module doc).
    async fn record_deliveries(
        &self,
        entries: &[(DeliveryId, LedgerState)],
        sink: Option<SinkPosition>,
    ) -> Result<(), StoreError>;
    async fn sink_position(&self, sink: &str) -> Result<Option<u64>, StoreError>;
    /// Makes failed deliveries sendable again, for a replay from the dead-letter queue: each id
    /// whose state is `Failed` is forgotten (true); any other is left as it is (false), so a
    /// delivery sent meanwhile is never sent again.
    async fn reopen_failed(&self, ids: &[DeliveryId]) -> Result<Vec<bool>, StoreError>;
}

/// Scopes an API key can carry; `admin` implies every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Send,
    Contacts,
    Templates,
    Analytics,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Send, Scope::Contacts, Scope::Templates, Scope::Analytics, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Contacts => "contacts",
            Scope::Templates => "templates",
            Scope::Analytics => "analytics",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// An API key as stored: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// The client identity requests made with this key belong to.
    pub client_id: String,
    pub scopes: Vec<Scope>,
    pub created_at_ms: u64,
}

impl ApiKeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
}

/// Per-notification event history, for `GET /v1/notifications/{id}`.
#[async_trait]
pub trait TimelineStore: Send + Sync + 'static {
    /// Events of the notification in time order, each event id once.
    async fn timeline(&self, id: &NotificationId) -> Result<Vec<DeliveryEvent>, StoreError>;
}

/// A timeline store that keeps its own copy of the events, fed from `herald-events` by the
/// runtime's timeline sink. A store that reads the events log itself (the embedded one, through
/// the log's key index) has no feed and no sink runs for it.
#[async_trait]
pub trait TimelineFeed: Send + Sync + 'static {
    /// Adds events as they are on `herald-events` (an event id already present is kept once).
    async fn add_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError>;
}

/// Consumer positions kept by the state backend, for a topic log whose own offsets Herald does not
/// use (Fluvio: its consumer offsets follow a stream's reads, Herald's follow what is durable
/// downstream). Each `(group, topic, partition)` is committed by one task, in order.
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// Records each commit's `next_offset`; durable when it returns.
    async fn save_offsets(&self, commits: &[Commit]) -> Result<(), StoreError>;
    /// The group's position (`None` when it never committed).
    async fn load_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, StoreError>;
}

/// Workers sharing the partitions (distributed mode): who is alive, and who holds each partition.
///
/// A worker processes a partition only while it holds the partition's lease; leases are taken and
/// renewed with a compare-and-set (a lightweight transaction in ScyllaDB), so a partition never has
/// two holders, and expire on their own when a worker dies.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Announces (or refreshes) `worker` as alive for `ttl`.
    async fn heartbeat(&self, worker: &str, ttl: Duration) -> Result<(), StoreError>;
    /// The workers alive now, sorted.
    async fn live_workers(&self) -> Result<Vec<String>, StoreError>;
    /// Removes `worker` from the live workers at once (a graceful stop).
    async fn leave(&self, worker: &str) -> Result<(), StoreError>;
    /// Takes the partition's lease for `worker` if it is free (or already `worker`'s), for `ttl`
    /// from now. Returns whether `worker` holds it now.
    async fn acquire_lease(&self, partition: u32, worker: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives the lease back if `worker` holds it (a no-op otherwise).
    async fn release_lease(&self, partition: u32, worker: &str) -> Result<(), StoreError>;
}

/// How long a released or cancelled hold, and a digest membership, are remembered (after its
/// window), so that a replayed hold or join is recognised.
pub const REMEMBER_DONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most members a digest keeps the envelopes of; later ones are counted only.
pub const MAX_DIGEST_MEMBERS: u64 = 1_000;

/// Why a notification waits in the schedule index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// Its `send_at` is ahead.
    SendAt,
    /// The user's quiet hours: it waits for their end.
    QuietHours,
    /// A digest collecting notifications until its window closes.
    Digest,
}

impl HoldReason {
    pub const ALL: [HoldReason; 3] = [HoldReason::SendAt, HoldReason::QuietHours, HoldReason::Digest];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::SendAt => "send_at",
            HoldReason::QuietHours => "quiet_hours",
            HoldReason::Digest => "digest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A notification (or a digest) waiting in the schedule index for its time. One hold per
/// `(id, reason)`: a notification released from its `send_at` may be held again for quiet hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: NotificationId,
    pub reason: HoldReason,
    /// The partition of `herald-requests` it goes back to; the worker owning that partition
    /// releases it.
    pub partition: u32,
    pub due_at_ms: u64,
    /// Who sent it: only they (or an admin) may cancel it.
    pub client_id: String,
    /// The encoded `RequestEnvelope` to append when due. For a digest: the envelope of its first
    /// notification, which the digest message takes its recipient, channels and category from.
    pub envelope: Vec<u8>,
}

impl Hold {
    /// The `cancelled` event of a hold taken for cancelling. The user comes from its envelope (a
    /// digest's: its first member's); an envelope that cannot be read leaves it empty.
    pub fn cancelled_event(&self, at_ms: u64) -> DeliveryEvent {
        let user_id = crate::codec::decode::<crate::RequestEnvelope>(&self.envelope)
            .map(|e| e.request.user_id)
            .unwrap_or_default();
        DeliveryEvent::new(&self.id, &self.client_id, &user_id, crate::EventKind::Cancelled, None, None, at_ms)
    }
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// In the index, not yet due (or due and not yet taken).
    Waiting,
    /// Taken by the scheduler, which appends it to `herald-requests` and then marks it released.
    /// It can no longer be cancelled; found again after a crash, it is released again (the
    /// pipeline absorbs the repeat: same notification id, same delivery ids).
    Releasing,
    /// Appended to `herald-requests`; out of the index.
    Released,
    /// Taken by a cancel, which appends the `cancelled` event and then marks it cancelled. It can
    /// no longer be released (a digest stops collecting here) and stays in the index until the
    /// cancel is finished: found again after a crash, by a repeated cancel or by the scheduler
    /// once it falls due, its event is appended again (the event id follows from its content, so
    /// a repeat is absorbed) and the cancel finished.
    Cancelling,
    /// Cancelled while waiting, its `cancelled` event appended; out of the index, never released.
    Cancelled,
}

/// A hold's id and reason: what the release and cancel calls name.
pub type HoldKey = (NotificationId, HoldReason);

/// One notification joining a digest (see [`ScheduleStore::join_digests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestJoin {
    pub user_id: String,
    /// The producer's digest key.
    pub key: String,
    pub member: NotificationId,
    /// How long a digest this notification opens collects.
    pub window_ms: u64,
    /// The partition of `herald-requests` the digest goes to (the user's).
    pub partition: u32,
    pub client_id: String,
    /// The member's encoded `RequestEnvelope`.
    pub envelope: Vec<u8>,
}

/// What joining did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestJoined {
    /// No digest of this user and key was collecting: this notification opened one, due at
    /// `due_at_ms`, with a hold of reason [`HoldReason::Digest`].
    Opened { digest: NotificationId, due_at_ms: u64 },
    /// Added to the digest collecting.
    Joined { digest: NotificationId },
    /// It had joined before (a replay): nothing changed.
    AlreadyMember { digest: NotificationId },
}

impl DigestJoined {
    pub fn digest(&self) -> &NotificationId {
        match self {
            DigestJoined::Opened { digest, .. }
            | DigestJoined::Joined { digest }
            | DigestJoined::AlreadyMember { digest } => digest,
        }
    }
}

/// The schedule index (due time → request) and the digests collecting.
///
/// Waiting notifications live here, not in memory: the scheduler reads what is due a page at a
/// time. A hold is released in two steps so that a cancel never races a release:
/// [`begin_release`](Self::begin_release) (waiting → releasing, durable), the append to
/// `herald-requests`, then [`finish_release`](Self::finish_release). A crash between them
/// releases it again, which the pipeline absorbs. A cancel has the same shape, so that its
/// `cancelled` event is never lost: [`cancel`](Self::cancel) (waiting → cancelling, durable), the
/// event's append to `herald-events`, then [`finish_cancel`](Self::finish_cancel).
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Puts each hold in the index unless its `(id, reason)` has a state already (a replay):
    /// returns the state each had (`None`: it was new and now waits). Ordered durability.
    async fn hold(&self, holds: &[Hold]) -> Result<Vec<Option<HoldState>>, StoreError>;
    /// Up to `limit` holds of `partition` due at or before `now_ms`, soonest first, each with its
    /// state: waiting, releasing, or cancelling (a cancel that has yet to be finished).
    async fn due(&self, partition: u32, now_ms: u64, limit: usize) -> Result<Vec<(Hold, HoldState)>, StoreError>;
    /// Takes each hold for release: waiting (or already releasing) → releasing, true; anything
    /// else (cancelling or cancelled meanwhile, unknown), false. A digest stops collecting here: a
    /// later notification of its user and key opens a new one. Durable when it returns.
    async fn begin_release(&self, holds: &[HoldKey]) -> Result<Vec<bool>, StoreError>;
    /// Releasing → released, out of the index (with a digest's members). Ordered durability.
    async fn finish_release(&self, holds: &[HoldKey]) -> Result<(), StoreError>;
    /// Takes the waiting holds of notification `id` (of `client_id`'s only, unless `None`) for
    /// cancelling: waiting → cancelling, so that they are never released, and a digest stops
    /// collecting. Returns every hold of the notification found, with the state it had; the
    /// caller appends the `cancelled` event of those it found waiting or cancelling, then
    /// [finishes](Self::finish_cancel) them. Durable when it returns.
    async fn cancel(&self, id: &NotificationId, client_id: Option<&str>) -> Result<Vec<(Hold, HoldState)>, StoreError>;
    /// Cancelling → cancelled, out of the index (with a digest's members); any other state is
    /// left as it is. Ordered durability.
    async fn finish_cancel(&self, holds: &[HoldKey]) -> Result<(), StoreError>;
    /// Joins each notification to its user's digest of its key, in order (a later join sees an
    /// earlier one). Ordered durability.
    async fn join_digests(&self, joins: &[DigestJoin], now_ms: u64) -> Result<Vec<DigestJoined>, StoreError>;
    /// The encoded envelopes of a digest's members in the order they joined, at most `limit`,
    /// and how many joined in all.
    async fn digest_members(&self, digest: &NotificationId, limit: usize) -> Result<(Vec<Vec<u8>>, u64), StoreError>;
}

/// Users' subscriptions to named topics, and where each broadcast's fan-out stands.
///
/// A broadcast reads a topic's subscribers a page at a time ([`subscribers`](Self::subscribers)),
/// so a million subscribers are never in memory at once.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Replaces the user's topics; returns the ones it had. Durable when it returns.
    async fn set_topics(&self, user_id: &str, topics: &[String]) -> Result<Vec<String>, StoreError>;
    /// The user's topics, sorted.
    async fn topics_of(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// At most `limit` subscribers of `topic` after `cursor` (from the start when `None`), in an
    /// order that does not change while paging, and the cursor of the next page (`None`: the end).
    async fn subscribers(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), StoreError>;
    /// Where broadcast `id`'s fan-out stands: the cursor after its last appended page (`None`:
    /// not started). Ordered durability.
    async fn broadcast_cursor(&self, id: &NotificationId) -> Result<Option<String>, StoreError>;
    async fn set_broadcast_cursor(&self, id: &NotificationId, cursor: &str) -> Result<(), StoreError>;
}

/// The cursor a broadcast's fan-out records once every page is appended.
pub const BROADCAST_DONE: &str = "\u{0}done";
/// Status webhooks: each client's registration, its delivery status, and the webhook outbox, the
/// durable queue of batches waiting to be POSTed ([`crate::webhook`]).
///
/// # The outbox's promises
/// - Batches are keyed `(client, partition, first_offset)` and a page lists one (client,
///   partition)'s batches in `first_offset` order.
/// - [`enqueue_webhook_batches`](Self::enqueue_webhook_batches) is durable when it returns and
///   records, with the batches, the partition's *position*: the offset of `herald-events` after
///   the last event it covered. The consumer skips events below the position (they were enqueued
///   already, and may have been sent and acknowledged since), so a replay never enqueues an event
///   twice. A backend that cannot write both atomically writes the batches first; batches at or
///   past a partition's position were then written by a call that did not finish, and the
///   consumer removes them ([`drop_webhook_batches`](Self::drop_webhook_batches)) before it
///   resumes, so they are never sent.
/// - Senders read only batches below the position their consumer published, never a batch a
///   crash could take back.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores (replaces) the client's registration; returns whether it was new. Durable.
    async fn put_webhook(&self, registration: &crate::webhook::WebhookRegistration) -> Result<bool, StoreError>;
    async fn get_webhook(&self, client_id: &str) -> Result<Option<crate::webhook::WebhookRegistration>, StoreError>;
    /// Every registration (a few per client at most: the senders' and the consumer's cache).
    async fn list_webhooks(&self) -> Result<Vec<crate::webhook::WebhookRegistration>, StoreError>;
    /// Removes the registration and its status; returns whether there was one. Durable. The
    /// outbox is cleared separately ([`drop_webhook_batches`](Self::drop_webhook_batches)).
    async fn delete_webhook(&self, client_id: &str) -> Result<bool, StoreError>;
    async fn webhook_status(&self, client_id: &str) -> Result<Option<crate::webhook::WebhookStatus>, StoreError>;
    /// Ordered durability (see the module doc): a status lost in a crash is rewritten at the next
    /// attempt.
    async fn record_webhook_status(
        &self,
        client_id: &str,
        status: &crate::webhook::WebhookStatus,
    ) -> Result<(), StoreError>;

    /// Adds `batches` (all of `partition`) and sets the partition's position to `position`.
    /// Durable when it returns; writing a batch again replaces it.
    async fn enqueue_webhook_batches(
        &self,
        partition: u32,
        batches: &[crate::webhook::WebhookBatch],
        position: u64,
    ) -> Result<(), StoreError>;
    /// The partition's position (`None`: nothing was ever enqueued from it).
    async fn webhook_position(&self, partition: u32) -> Result<Option<u64>, StoreError>;
    /// Up to `limit` batches of the client from `partition` with `first_offset` in `from..below`,
    /// in order.
    async fn pending_webhook_batches(
        &self,
        client_id: &str,
        partition: u32,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<crate::webhook::WebhookBatch>, StoreError>;
    /// Removes one batch (sent, or given up). Ordered durability: a removal lost in a crash sends
    /// the batch again, under its id.
    async fn ack_webhook_batch(&self, client_id: &str, partition: u32, first_offset: u64) -> Result<(), StoreError>;
    /// Removes the client's batches of `partition` whose `first_offset` is at least `from` (0:
    /// all of them). Durable.
    async fn drop_webhook_batches(&self, client_id: &str, partition: u32, from: u64) -> Result<(), StoreError>;
    /// How many batches of the client wait in `partition`, counting up to `limit`.
    async fn count_webhook_batches(&self, client_id: &str, partition: u32, limit: usize) -> Result<usize, StoreError>;
}
