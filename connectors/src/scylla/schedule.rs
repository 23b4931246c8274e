//! [`ScheduleStore`] on `holds`, `schedule` and `schedule_buckets` (this file) and on the digest
//! tables (`digests.rs`).
//!
//! # Holds
//! `holds (notification_id, reason)`: the state of every hold with its index position (partition,
//! due time, bucket) and its sender. Every write is a lightweight transaction, because each
//! decision rests on the state: a hold is created with `UPDATE … IF state = null` (a replayed hold
//! finds the state it has), taken for release or for cancelling with `IF state = waiting` (so a
//! cancel and a release never both win), ended with `IF state = releasing` (released) or
//! `IF state = cancelling` (cancelled). Ending
//! writes every column again `USING TTL` [`REMEMBER_DONE`], so the row is forgotten a week later;
//! it is created with an UPDATE rather than an `INSERT … IF NOT EXISTS` because an INSERT's row
//! marker would carry no TTL and keep an empty row forever. Waiting, releasing and cancelling rows
//! never expire.
//! A notification's holds are one partition, so `cancel` reads them with one query.
//!
//! # The index
//! `schedule ((partition_id, bucket), due_at_ms, notification_id, reason) → envelope`, where
//! `bucket = due_at_ms / BUCKET_MS` (one hour): one Scylla partition per hour of due times of one
//! Herald partition, rows soonest first, so no partition grows without bound and `due` reads only
//! the hours that can hold due rows. `schedule_buckets (partition_id, bucket)` lists the buckets of
//! a partition that may hold rows: a writer adds its bucket's row before its index row; `due`
//! reads the listed buckets up to `now`'s (at most [`MAX_BUCKETS_PER_DUE`]), then in each the rows
//! due at or before `now` (a query with a `LIMIT` of what is still wanted), and removes a bucket's
//! row once it finds the bucket empty and [sealed](may_remove_bucket): ended before `now`, and
//! ended [`SEAL_AFTER_MS`] ago by this host's clock. Index rows are plain writes; each is removed
//! after its hold ended (the hold first), so a crash between the two leaves an index row whose
//! hold is no longer waiting: `due` checks each row against its hold (one read by partition key
//! per row returned) and removes the stale ones (a digest's rows with them) instead of returning
//! them.
//!
//! Removing a bucket's row races a writer putting a row into the same bucket (its bucket row may
//! land before the removal, its index row after the emptiness check). Three rules close it:
//! - the remover reads the bucket again after the removal and writes its row back if it is not
//!   empty any more (a later timestamp of the same session);
//! - a writer whose bucket is sealed or within [`LATE_MARGIN_MS`] of it (a hold due long ago: a
//!   replay) writes the bucket's row again after its index row;
//! - the removal is back-dated by [`DELETE_BACKDATE_MS`], so that second write outlives it even if
//!   this host's clock is up to that much ahead of the writer's.
//!
//! So a row can be lost only if a writer whose bucket was more than [`LATE_MARGIN_MS`] from sealing
//! took longer than that between its bucket row and its index row.
//!
//! # Crashes
//! Every call may stop anywhere and be called again (the pipeline replays), so each step is written
//! so that running it again completes it: `hold` writes the index row again for a hold that is
//! still waiting (a crash may have come between the state and the index row); `begin_release`
//! closes the digest again for a hold already releasing; ended holds leave their index row for last.

use super::ScyllaError;
use super::state::{ScyllaState, each, each_in_key_order};
use super::statements::Stmt;
use super::values::{LwtRow, bigint, decode_hold_state, encode_hold_state, int, ttl_secs, unsigned};
use async_trait::async_trait;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{
    DigestJoin, DigestJoined, Hold, HoldKey, HoldReason, HoldState, REMEMBER_DONE, ScheduleStore, StoreError,
};
use std::time::{SystemTime, UNIX_EPOCH};

const TABLE: &str = "holds";

/// The due times one partition of `schedule` covers.
pub const BUCKET_MS: u64 = 3_600_000;
/// How long after its end a bucket's row may be removed from `schedule_buckets` when found empty.
pub const SEAL_AFTER_MS: u64 = 3_600_000;
/// A write into a bucket this close to being sealed (or sealed already) writes the bucket's row
/// again after its index row.
pub const LATE_MARGIN_MS: u64 = 600_000;
/// How far back the removal of a bucket's row is dated.
pub const DELETE_BACKDATE_MS: u64 = 1_000;
/// Buckets one call of `due` reads at most (a backlog of older ones is read by the next calls, as
/// the ones read are emptied).
pub const MAX_BUCKETS_PER_DUE: usize = 16;

/// The bucket of a due time.
pub fn bucket_of(due_at_ms: u64) -> u64 {
    due_at_ms / BUCKET_MS
}

/// The first due time after the bucket.
pub fn bucket_end_ms(bucket: u64) -> u64 {
    bucket.saturating_add(1).saturating_mul(BUCKET_MS)
}

/// When a bucket counts as sealed: from then on, only a late write (a replay) puts rows into it.
pub fn sealed_at_ms(bucket: u64) -> u64 {
    bucket_end_ms(bucket).saturating_add(SEAL_AFTER_MS)
}

/// May `due`, asked at `now_ms` on a host whose clock reads `wall_ms`, remove the row of a bucket
/// it found without due rows? Only if every row the bucket can have was due by `now_ms` (so the
/// bucket is empty, not only of due rows) and the bucket is sealed.
pub fn may_remove_bucket(bucket: u64, now_ms: u64, wall_ms: u64) -> bool {
    bucket_end_ms(bucket) <= now_ms && sealed_at_ms(bucket) <= wall_ms
}

/// Is a write into `bucket` at `wall_ms` late (close to the bucket's sealing, or after)?
pub fn is_late_write(bucket: u64, wall_ms: u64) -> bool {
    wall_ms.saturating_add(LATE_MARGIN_MS) >= sealed_at_ms(bucket)
}

/// The timestamp (µs) of a bucket row's removal at `wall_ms`, back-dated.
pub fn removal_timestamp_us(wall_ms: u64) -> i64 {
    i64::try_from(wall_ms.saturating_sub(DELETE_BACKDATE_MS).saturating_mul(1_000)).unwrap_or(i64::MAX)
}

/// A `LIMIT` bind value (CQL wants a positive int).
pub fn cql_limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX).max(1)
}

/// This host's clock, in ms since the epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A row of `holds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub reason: HoldReason,
    pub state: HoldState,
    pub partition: u32,
    pub due_at_ms: u64,
    pub bucket: u64,
    pub client_id: String,
}

/// The columns of [`Stmt::HoldSelect`].
pub type HoldColumns = (String, i8, i32, i64, i64, String);

pub fn decode_hold_row(
    (reason, state, partition, due_at_ms, bucket, client_id): HoldColumns,
) -> Result<HoldRow, ScyllaError> {
    Ok(HoldRow {
        reason: HoldReason::parse(&reason)
            .ok_or_else(|| ScyllaError::corrupt(TABLE, format!("unknown hold reason {reason:?}")))?,
        state: decode_hold_state(state)?,
        partition: u32::try_from(partition)
            .map_err(|_| ScyllaError::corrupt(TABLE, format!("negative partition {partition}")))?,
        due_at_ms: unsigned(TABLE, due_at_ms)?,
        bucket: unsigned(TABLE, bucket)?,
        client_id,
    })
}

/// Is an index row at `(partition, bucket, due_at_ms)` the index row of this hold? Only while the
/// hold is in the index (waiting, or being released or cancelled) and at the position it was
/// created with; any other row is stale (left by a crash, or by a replayed hold's repair that
/// raced the hold's end).
pub fn indexes(row: &HoldRow, partition: u32, bucket: u64, due_at_ms: u64) -> bool {
    in_index(row.state) && (row.partition, row.bucket, row.due_at_ms) == (partition, bucket, due_at_ms)
}

/// Does a hold in this state keep its index row?
fn in_index(state: HoldState) -> bool {
    matches!(state, HoldState::Waiting | HoldState::Releasing | HoldState::Cancelling)
}

/// The hold state in an LWT's answer (`None`: no row).
fn state_in(answer: &LwtRow) -> Result<Option<HoldState>, ScyllaError> {
    match answer.tinyint("state").map_err(|detail| ScyllaError::corrupt(TABLE, detail))? {
        Some(state) => decode_hold_state(state).map(Some),
        None => Ok(None),
    }
}

/// What [`ScyllaState::hold_one`] found.
pub(super) enum Held {
    /// The hold is new and waits.
    New,
    /// It had a state already (its index row written again if it waits).
    Existing(HoldRow),
}

/// What a compare-and-set of a hold's state ([`ScyllaState::take_one`], [`ScyllaState::end_hold`])
/// did.
enum Moved {
    Applied,
    /// The state was not the one expected; the state it has (`None`: no row).
    Refused(Option<HoldState>),
}

impl Moved {
    /// Is the hold in state `to` now, moved by this call or an earlier one?
    fn reached(&self, to: HoldState) -> bool {
        match self {
            Moved::Applied => true,
            Moved::Refused(now) => *now == Some(to),
        }
    }
}

/// The primary key of an index row, as [`Stmt::ScheduleSelectOne`] and [`Stmt::ScheduleDelete`]
/// bind it.
fn index_key(
    id: &NotificationId,
    reason: HoldReason,
    partition: u32,
    bucket: u64,
    due_at_ms: u64,
) -> Result<(i32, i64, i64, &str, &'static str), ScyllaError> {
    Ok((
        int("partition", partition)?,
        bigint("bucket", bucket)?,
        bigint("due_at_ms", due_at_ms)?,
        id.0.as_str(),
        reason.as_str(),
    ))
}

/// An index row as [`Stmt::ScheduleSelectDue`] reads it.
type IndexColumns = (i64, String, String, Vec<u8>);

impl ScyllaState {
    /// The holds of a notification, in [`HoldReason::ALL`] order.
    async fn hold_rows(&self, id: &NotificationId) -> Result<Vec<HoldRow>, ScyllaError> {
        let columns: Vec<HoldColumns> = self.select_all(Stmt::HoldSelect, (id.0.as_str(),)).await?;
        let mut rows = columns.into_iter().map(decode_hold_row).collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|row| row.reason);
        Ok(rows)
    }

    async fn hold_row(&self, id: &NotificationId, reason: HoldReason) -> Result<Option<HoldRow>, ScyllaError> {
        Ok(self.hold_rows(id).await?.into_iter().find(|row| row.reason == reason))
    }

    /// Writes a hold's index row, its bucket's row first (see the module doc for the late write).
    async fn write_index(
        &self,
        id: &NotificationId,
        reason: HoldReason,
        partition: u32,
        due_at_ms: u64,
        envelope: &[u8],
    ) -> Result<(), ScyllaError> {
        let bucket = bucket_of(due_at_ms);
        let (p, b) = (int("partition", partition)?, bigint("bucket", bucket)?);
        self.write(Stmt::BucketInsert, (p, b)).await?;
        let values = (p, b, bigint("due_at_ms", due_at_ms)?, id.0.as_str(), reason.as_str(), envelope);
        self.write(Stmt::ScheduleInsert, values).await?;
        if is_late_write(bucket, wall_ms()) {
            self.write(Stmt::BucketInsert, (p, b)).await?;
        }
        Ok(())
    }

    async fn delete_index(
        &self,
        id: &NotificationId,
        reason: HoldReason,
        partition: u32,
        bucket: u64,
        due_at_ms: u64,
    ) -> Result<(), ScyllaError> {
        self.write(Stmt::ScheduleDelete, index_key(id, reason, partition, bucket, due_at_ms)?).await
    }

    /// Creates the hold unless it has a state; a hold found in the index (waiting, releasing or
    /// cancelling) gets its index row written again, at its stored position.
    pub(super) async fn hold_one(&self, hold: &Hold) -> Result<Held, ScyllaError> {
        let id = hold.id.0.as_str();
        let reason = hold.reason.as_str();
        let partition = int("partition", hold.partition)?;
        let due = bigint("due_at_ms", hold.due_at_ms)?;
        let bucket = bigint("bucket", bucket_of(hold.due_at_ms))?;
        let waiting = encode_hold_state(HoldState::Waiting);
        for _ in 0..super::state::CAS_ATTEMPTS {
            let values = (waiting, partition, due, bucket, hold.client_id.as_str(), id, reason);
            if self.lwt(Stmt::HoldCreate, values).await?.applied {
                self.write_index(&hold.id, hold.reason, hold.partition, hold.due_at_ms, &hold.envelope).await?;
                return Ok(Held::New);
            }
            // None: its row expired between the two (a hold done a week ago): create it again.
            if let Some(row) = self.hold_row(&hold.id, hold.reason).await? {
                if in_index(row.state) {
                    self.write_index(&hold.id, hold.reason, row.partition, row.due_at_ms, &hold.envelope).await?;
                }
                return Ok(Held::Existing(row));
            }
        }
        Err(ScyllaError::Contention { table: TABLE, key: hold.id.0.clone(), attempts: super::state::CAS_ATTEMPTS })
    }

    /// Moves a hold from `from` to `to` (released or cancelled, kept for [`REMEMBER_DONE`]) and, if
    /// that applied, takes it out of the index with a digest's rows.
    async fn end_hold(
        &self,
        id: &NotificationId,
        row: &HoldRow,
        from: HoldState,
        to: HoldState,
    ) -> Result<Moved, ScyllaError> {
        let values = (
            ttl_secs(REMEMBER_DONE),
            encode_hold_state(to),
            int("partition", row.partition)?,
            bigint("due_at_ms", row.due_at_ms)?,
            bigint("bucket", row.bucket)?,
            row.client_id.as_str(),
            id.0.as_str(),
            row.reason.as_str(),
            encode_hold_state(from),
        );
        let answer = self.lwt(Stmt::HoldEnd, values).await?;
        if !answer.applied {
            return Ok(Moved::Refused(state_in(&answer)?));
        }
        if row.reason == HoldReason::Digest {
            self.end_digest(id).await?;
        }
        // Last: until it is gone, `due` finds the row and finishes what a crash interrupted.
        self.delete_index(id, row.reason, row.partition, row.bucket, row.due_at_ms).await?;
        Ok(Moved::Applied)
    }

    /// Cancels the hold if it waits (a no-op otherwise).
    pub(super) async fn cancel_hold(&self, id: &NotificationId, reason: HoldReason) -> Result<(), ScyllaError> {
        if let Some(row) = self.hold_row(id, reason).await?
            && row.state == HoldState::Waiting
        {
            self.end_hold(id, &row, HoldState::Waiting, HoldState::Cancelled).await?;
        }
        Ok(())
    }

    /// Takes a waiting hold for release or for cancelling (`to`). Once it is in state `to` (moved
    /// by this call or an earlier one), a digest stops collecting (again for one taken earlier: a
    /// crash may have come before its digest closed).
    async fn take_one(&self, id: &NotificationId, reason: HoldReason, to: HoldState) -> Result<Moved, ScyllaError> {
        let values = (encode_hold_state(to), id.0.as_str(), reason.as_str(), encode_hold_state(HoldState::Waiting));
        let answer = self.lwt(Stmt::HoldTake, values).await?;
        let moved = if answer.applied { Moved::Applied } else { Moved::Refused(state_in(&answer)?) };
        if moved.reached(to) && reason == HoldReason::Digest {
            self.close_digest(id).await?;
        }
        Ok(moved)
    }

    /// Ends a hold taken for release or for cancelling (`from`) as `to`; a no-op in any other state.
    async fn finish_one(
        &self,
        id: &NotificationId,
        reason: HoldReason,
        from: HoldState,
        to: HoldState,
    ) -> Result<(), ScyllaError> {
        if let Some(row) = self.hold_row(id, reason).await?
            && row.state == from
        {
            // Refused: finished meanwhile by another call.
            self.end_hold(id, &row, from, to).await?;
        }
        Ok(())
    }

    async fn finish_all(&self, holds: &[HoldKey], from: HoldState, to: HoldState) -> Result<(), ScyllaError> {
        each_in_key_order(holds, |(id, _)| id.0.as_str(), |(id, reason)| self.finish_one(id, *reason, from, to))
            .await?;
        Ok(())
    }

    /// The envelope of a hold's index row (`None`: no row).
    async fn index_envelope(&self, id: &NotificationId, row: &HoldRow) -> Result<Option<Vec<u8>>, ScyllaError> {
        let key = index_key(id, row.reason, row.partition, row.bucket, row.due_at_ms)?;
        Ok(self.select_one::<(Vec<u8>,)>(Stmt::ScheduleSelectOne, key).await?.map(|(envelope,)| envelope))
    }

    /// An index row as a due hold, or `None` (and the row removed) if it is stale.
    async fn check_index_row(
        &self,
        partition: u32,
        bucket: u64,
        (due_at_ms, id, reason, envelope): IndexColumns,
    ) -> Result<Option<(Hold, HoldState)>, ScyllaError> {
        let due_at_ms = unsigned("schedule", due_at_ms)?;
        let id = NotificationId(id);
        let reason = HoldReason::parse(&reason)
            .ok_or_else(|| ScyllaError::corrupt("schedule", format!("unknown hold reason {reason:?}")))?;
        let row = self.hold_row(&id, reason).await?;
        if let Some(row) = row.as_ref().filter(|row| indexes(row, partition, bucket, due_at_ms)) {
            let hold = Hold { id, reason, partition, due_at_ms, client_id: row.client_id.clone(), envelope };
            return Ok(Some((hold, row.state)));
        }
        let ended = row.is_none_or(|row| matches!(row.state, HoldState::Released | HoldState::Cancelled));
        if reason == HoldReason::Digest && ended {
            self.end_digest(&id).await?;
        }
        self.delete_index(&id, reason, partition, bucket, due_at_ms).await?;
        Ok(None)
    }

    /// Removes a bucket found empty from the partition's list, back-dated; writes it back if a row
    /// came in meanwhile.
    async fn remove_bucket(&self, partition: i32, bucket: i64) -> Result<(), ScyllaError> {
        self.write(Stmt::BucketDelete, (removal_timestamp_us(wall_ms()), partition, bucket)).await?;
        let rows: Vec<IndexColumns> =
            self.select_all(Stmt::ScheduleSelectDue, (partition, bucket, i64::MAX, cql_limit(1))).await?;
        if !rows.is_empty() {
            self.write(Stmt::BucketInsert, (partition, bucket)).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for ScyllaState {
    /// Holds of one notification run in order (a later one sees the earlier), others concurrently.
    async fn hold(&self, holds: &[Hold]) -> Result<Vec<Option<HoldState>>, StoreError> {
        let states = each_in_key_order(
            holds,
            |h| h.id.0.as_str(),
            |h| async move {
                Ok(match self.hold_one(h).await? {
                    Held::New => None,
                    Held::Existing(row) => Some(row.state),
                })
            },
        )
        .await?;
        Ok(states)
    }

    async fn due(&self, partition: u32, now_ms: u64, limit: usize) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        let mut due = Vec::new();
        if limit == 0 {
            return Ok(due);
        }
        let p = int("partition", partition)?;
        let now = bigint("now_ms", now_ms.min(i64::MAX as u64))?;
        let top = bigint("bucket", bucket_of(now_ms))?;
        let buckets: Vec<(i64,)> =
            self.select_all(Stmt::BucketSelect, (p, top, cql_limit(MAX_BUCKETS_PER_DUE))).await?;
        let wall = wall_ms();
        for (b,) in buckets {
            let wanted = limit.saturating_sub(due.len());
            if wanted == 0 {
                break;
            }
            let bucket = unsigned("schedule_buckets", b)?;
            let rows: Vec<IndexColumns> =
                self.select_all(Stmt::ScheduleSelectDue, (p, b, now, cql_limit(wanted))).await?;
            if rows.is_empty() {
                if may_remove_bucket(bucket, now_ms, wall) {
                    self.remove_bucket(p, b).await?;
                }
                continue;
            }
            let checked = each(&rows, |row| self.check_index_row(partition, bucket, row.clone())).await?;
            due.extend(checked.into_iter().flatten());
        }
        Ok(due)
    }

    async fn begin_release(&self, holds: &[HoldKey]) -> Result<Vec<bool>, StoreError> {
        let taken = each_in_key_order(
            holds,
            |(id, _)| id.0.as_str(),
            |(id, reason)| async move {
                self.take_one(id, *reason, HoldState::Releasing).await.map(|moved| moved.reached(HoldState::Releasing))
            },
        )
        .await?;
        Ok(taken)
    }

    async fn finish_release(&self, holds: &[HoldKey]) -> Result<(), StoreError> {
        Ok(self.finish_all(holds, HoldState::Releasing, HoldState::Released).await?)
    }

    async fn finish_cancel(&self, holds: &[HoldKey]) -> Result<(), StoreError> {
        Ok(self.finish_all(holds, HoldState::Cancelling, HoldState::Cancelled).await?)
    }

    async fn cancel(&self, id: &NotificationId, client_id: Option<&str>) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        let mut found = Vec::new();
        for row in self.hold_rows(id).await? {
            if client_id.is_some_and(|c| c != row.client_id) {
                continue;
            }
            let envelope =
                if in_index(row.state) { self.index_envelope(id, &row).await?.unwrap_or_default() } else { Vec::new() };
            let state = match row.state {
                HoldState::Waiting => match self.take_one(id, row.reason, HoldState::Cancelling).await? {
                    Moved::Applied | Moved::Refused(Some(HoldState::Cancelling)) => HoldState::Waiting,
                    // Taken for release meanwhile: what it is now.
                    // (No row: a done hold forgotten since, never to be sent.)
                    Moved::Refused(now) => now.unwrap_or(HoldState::Cancelled),
                },
                other => other,
            };
            let hold = Hold {
                id: id.clone(),
                reason: row.reason,
                partition: row.partition,
                due_at_ms: row.due_at_ms,
                client_id: row.client_id,
                envelope,
            };
            found.push((hold, state));
        }
        Ok(found)
    }

    /// Joins of one user run in order (a later one sees the earlier), other users concurrently.
    async fn join_digests(&self, joins: &[DigestJoin], now_ms: u64) -> Result<Vec<DigestJoined>, StoreError> {
        let joined = each_in_key_order(joins, |j| j.user_id.as_str(), |join| self.join_one(join, now_ms)).await?;
        Ok(joined)
    }

    async fn digest_members(&self, digest: &NotificationId, limit: usize) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        Ok(self.read_members(digest, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn buckets_are_hours_of_due_time() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(HOUR - 1), 0);
        assert_eq!(bucket_of(HOUR), 1);
        assert_eq!(bucket_end_ms(0), HOUR);
        assert_eq!(bucket_end_ms(bucket_of(1_790_726_400_123)), 1_790_726_400_000 + HOUR);
        assert_eq!(sealed_at_ms(0), 2 * HOUR);
        assert_eq!(bucket_end_ms(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn a_bucket_is_removed_only_once_ended_for_the_caller_and_sealed_for_this_host() {
        // Ended for the caller, not sealed by the clock.
        assert!(!may_remove_bucket(0, HOUR, HOUR + 1));
        // Sealed by the clock, but the caller's now leaves rows in it that are not due yet.
        assert!(!may_remove_bucket(0, HOUR - 1, 10 * HOUR));
        assert!(may_remove_bucket(0, HOUR, 2 * HOUR));
        // The current bucket never.
        let now = 1_790_726_400_000;
        assert!(!may_remove_bucket(bucket_of(now), now, now));
    }

    #[test]
    fn only_writes_close_to_a_buckets_sealing_are_late() {
        assert!(!is_late_write(1, HOUR));
        assert!(!is_late_write(0, 2 * HOUR - LATE_MARGIN_MS - 1));
        assert!(is_late_write(0, 2 * HOUR - LATE_MARGIN_MS));
        assert!(is_late_write(0, 100 * HOUR));
        // A hold due in the future is never late.
        let now = 1_790_726_400_000;
        assert!(!is_late_write(bucket_of(now + 60_000), now));
        assert!(!is_late_write(bucket_of(now), now));
    }

    #[test]
    fn removals_are_back_dated_microseconds() {
        assert_eq!(removal_timestamp_us(10_000), 9_000_000);
        assert_eq!(removal_timestamp_us(0), 0);
        assert_eq!(removal_timestamp_us(u64::MAX), i64::MAX);
    }

    #[test]
    fn limits_are_positive_ints() {
        assert_eq!(cql_limit(10), 10);
        assert_eq!(cql_limit(0), 1);
        assert_eq!(cql_limit(usize::MAX), i32::MAX);
    }

    fn row(state: HoldState) -> HoldRow {
        HoldRow { reason: HoldReason::SendAt, state, partition: 3, due_at_ms: 5_000, bucket: 0, client_id: "c1".into() }
    }

    #[test]
    fn hold_rows_decode_and_unknown_values_are_corrupt() {
        let decoded = decode_hold_row(("quiet_hours".into(), 2, 3, 5_000, 0, "c1".into())).unwrap();
        assert_eq!(decoded, HoldRow { reason: HoldReason::QuietHours, ..row(HoldState::Releasing) });
        for bad in [
            ("later".to_string(), 1, 3, 5_000, 0, "c1".to_string()),
            ("send_at".into(), 9, 3, 5_000, 0, "c1".into()),
            ("send_at".into(), 1, -3, 5_000, 0, "c1".into()),
            ("send_at".into(), 1, 3, -1, 0, "c1".into()),
        ] {
            assert!(matches!(decode_hold_row(bad), Err(ScyllaError::Corrupt { .. })));
        }
    }

    #[test]
    fn an_index_row_is_live_only_for_a_waiting_or_releasing_hold_at_its_position() {
        assert!(indexes(&row(HoldState::Waiting), 3, 0, 5_000));
        assert!(indexes(&row(HoldState::Releasing), 3, 0, 5_000));
        assert!(!indexes(&row(HoldState::Released), 3, 0, 5_000));
        assert!(!indexes(&row(HoldState::Cancelled), 3, 0, 5_000));
        // A row of an earlier hold of the same id and reason, at another time or partition.
        assert!(!indexes(&row(HoldState::Waiting), 3, 0, 4_000));
        assert!(!indexes(&row(HoldState::Waiting), 2, 0, 5_000));
        assert!(!indexes(&row(HoldState::Waiting), 3, 1, 5_000));
    }

    #[test]
    fn hold_states_are_read_from_an_lwt_answer() {
        use ::scylla::value::CqlValue;
        let names = vec!["[applied]".to_string(), "state".into()];
        let refused =
            LwtRow::new(names.clone(), vec![Some(CqlValue::Boolean(false)), Some(CqlValue::TinyInt(2))]).unwrap();
        assert_eq!(state_in(&refused).unwrap(), Some(HoldState::Releasing));
        let none = LwtRow::new(names.clone(), vec![Some(CqlValue::Boolean(false)), None]).unwrap();
        assert_eq!(state_in(&none).unwrap(), None);
        let bad = LwtRow::new(names, vec![Some(CqlValue::Boolean(false)), Some(CqlValue::TinyInt(7))]).unwrap();
        assert!(state_in(&bad).is_err());
    }
}
