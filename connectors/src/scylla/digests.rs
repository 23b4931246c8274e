//! The digests of [`ScheduleStore`](herald_schemas::store::ScheduleStore): joining, reading the
//! members, closing and ending.
//!
//! # Tables
//! - `digest_member_of (member_id PK, digest_id)`: which digest a notification joined, written
//!   last by a join with `INSERT … IF NOT EXISTS USING TTL` (window + [`REMEMBER_DONE`]): a replayed
//!   join finds it and changes nothing (`AlreadyMember`).
//! - `digest_open ((user_id, digest_key) PK, digest_id)`: the digest of a user and key collecting
//!   now. Opened with `INSERT … IF NOT EXISTS` (two openers: one wins, the other joins its digest),
//!   removed with `DELETE … IF digest_id = ?` (only if it still names the digest that closes).
//! - `digests (digest_id PK, user_id, digest_key, due_at_ms, member_count, last_member,
//!   collecting)`: every write an LWT, so their server timestamps never meet a client's. A join
//!   takes its sequence number with `UPDATE … SET member_count = n + 1, last_member = ? IF
//!   member_count = n AND collecting = true`, so no two joins get the same number and none joins a
//!   digest that closed (`begin_release` sets `collecting = false` before the scheduler reads the
//!   members). A counter column cannot serve: its increment does not say which number it gave.
//!   `last_member` lets a join interrupted after its count (before its membership) find that it was
//!   counted, rather than count itself twice. Removed with `DELETE … IF EXISTS` when the digest
//!   ends.
//! - `digest_members (digest_id, seq) → envelope`: the first [`MAX_DIGEST_MEMBERS`] envelopes in
//!   join order, plain writes with a TTL of the digest's due time + [`REMEMBER_DONE`] (a safety net:
//!   the rows are deleted when the digest ends).
//!
//! # Joining, in order
//! 1. A membership found: `AlreadyMember`.
//! 2. No digest open for the user and key: open one, id [`NotificationId::for_digest`] of the
//!    member, due `now + window`: its record (count 1, the member last), its first member row, its
//!    hold and index row (as [`ScyllaState::hold_one`] writes them), then the open pointer; if
//!    another digest took the pointer first, this one is cancelled and the member joins that one.
//!    Every step is a no-op or a repair when a replay runs it again (the id comes from the member).
//! 3. A digest open: count the member in (a compare-and-set, again after a conflict), write its
//!    member row.
//! 4. The membership (`IF NOT EXISTS`): the join's commit point.
//!
//! A crash between 3 and 4 is replayed before any later notification of the user (a partition's
//! records are processed in order), so `last_member` still names the member. Only two processes
//! joining the same notification at once could count it twice (listed twice in its digest); no
//! interleaving loses a member.
//!
//! The members are read after the digest closed, so its count is final; a member counted just
//! before the close may not have written its row yet, so [`ScyllaState::read_members`] reads again,
//! a few times over a short while, until the rows the count promises are there.

use super::ScyllaError;
use super::schedule::{Held, cql_limit};
use super::state::{CAS_ATTEMPTS, ScyllaState, cas_backoff};
use super::statements::Stmt;
use super::values::{bigint, ttl_until, unsigned};
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{DigestJoin, DigestJoined, Hold, HoldReason, HoldState, MAX_DIGEST_MEMBERS, REMEMBER_DONE};
use std::time::Duration;

const TABLE: &str = "digests";

/// How often [`ScyllaState::read_members`] reads a digest's members at most, waiting
/// [`MEMBER_WAIT`] between reads, while rows its count promises are missing.
pub const MEMBER_READS: u32 = 5;
pub const MEMBER_WAIT: Duration = Duration::from_millis(20);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A row of `digests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRecord {
    pub user_id: String,
    pub key: String,
    pub due_at_ms: u64,
    /// Members joined (those from [`MAX_DIGEST_MEMBERS`] on are counted only).
    pub count: u64,
    /// The member counted last.
    pub last_member: String,
    /// Still taking members (false once its release began).
    pub collecting: bool,
}

/// The columns of [`Stmt::DigestSelect`].
pub type DigestColumns = (String, String, i64, i64, String, bool);

pub fn decode_digest(
    (user_id, key, due_at_ms, count, last_member, collecting): DigestColumns,
) -> Result<DigestRecord, ScyllaError> {
    Ok(DigestRecord {
        user_id,
        key,
        due_at_ms: unsigned(TABLE, due_at_ms)?,
        count: unsigned(TABLE, count)?,
        last_member,
        collecting,
    })
}

/// What a join does with the digest it found open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Count the member in: its sequence number is the record's count, if the compare-and-set
    /// from it applies.
    Next(u64),
    /// An earlier attempt of this join counted it, with this sequence number.
    Counted(u64),
    /// The digest no longer collects: remove the pointer to it and look again.
    Closed,
}

pub fn count_step(record: &DigestRecord, member: &NotificationId) -> Count {
    if !record.collecting {
        Count::Closed
    } else if record.last_member == member.0 && record.count > 0 {
        Count::Counted(record.count - 1)
    } else {
        Count::Next(record.count)
    }
}

/// How many member rows a read of at most `limit` should find for a digest of `count` members.
pub fn members_expected(count: u64, limit: usize) -> usize {
    usize::try_from(count.min(MAX_DIGEST_MEMBERS)).unwrap_or(usize::MAX).min(limit)
}

/// The TTL of a digest's rows that must outlive its release: until a week after it is due.
fn digest_ttl(due_at_ms: u64, now_ms: u64) -> i32 {
    ttl_until(due_at_ms.saturating_add(millis(REMEMBER_DONE)), now_ms)
}

impl ScyllaState {
    async fn digest_record(&self, digest: &NotificationId) -> Result<Option<DigestRecord>, ScyllaError> {
        match self.select_one::<DigestColumns>(Stmt::DigestSelect, (digest.0.as_str(),)).await? {
            Some(columns) => decode_digest(columns).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the open pointer of `(user, key)` if it still names `digest`.
    async fn unpoint(&self, user_id: &str, key: &str, digest: &NotificationId) -> Result<(), ScyllaError> {
        self.lwt(Stmt::OpenDelete, (user_id, key, digest.0.as_str())).await?;
        Ok(())
    }

    /// Stops a digest collecting: no join counts itself in any more, and the next notification of
    /// its user and key opens a new digest.
    pub(super) async fn close_digest(&self, digest: &NotificationId) -> Result<(), ScyllaError> {
        let Some(record) = self.digest_record(digest).await? else { return Ok(()) };
        if record.collecting {
            self.lwt(Stmt::DigestClose, (false, digest.0.as_str(), true)).await?;
        }
        self.unpoint(&record.user_id, &record.key, digest).await
    }

    /// Ends a digest (released or cancelled): its pointer, record and members go.
    pub(super) async fn end_digest(&self, digest: &NotificationId) -> Result<(), ScyllaError> {
        if let Some(record) = self.digest_record(digest).await? {
            self.unpoint(&record.user_id, &record.key, digest).await?;
            // After this no join can count itself in (its compare-and-set finds no record).
            self.lwt(Stmt::DigestDrop, (digest.0.as_str(),)).await?;
        }
        self.write(Stmt::MemberDrop, (digest.0.as_str(),)).await
    }

    async fn write_member(
        &self,
        digest: &NotificationId,
        seq: u64,
        envelope: &[u8],
        due_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), ScyllaError> {
        if seq >= MAX_DIGEST_MEMBERS {
            return Ok(());
        }
        let seq = i32::try_from(seq).map_err(|_| ScyllaError::OutOfRange { what: "digest member", value: seq })?;
        let values = (digest.0.as_str(), seq, envelope, digest_ttl(due_at_ms, now_ms));
        self.write(Stmt::MemberInsert, values).await
    }

    /// The join's commit point: `None` if it is the member's first, else the digest it joined before.
    async fn claim_membership(
        &self,
        join: &DigestJoin,
        digest: &NotificationId,
        now_ms: u64,
    ) -> Result<Option<NotificationId>, ScyllaError> {
        let forget_at = now_ms.saturating_add(join.window_ms).saturating_add(millis(REMEMBER_DONE));
        let values = (join.member.0.as_str(), digest.0.as_str(), ttl_until(forget_at, now_ms));
        let answer = self.lwt(Stmt::MemberOfInsert, values).await?;
        if answer.applied {
            return Ok(None);
        }
        let before = answer.text("digest_id").map_err(|detail| ScyllaError::corrupt("digest_member_of", detail))?;
        Ok(Some(before.map_or_else(|| digest.clone(), |d| NotificationId(d.to_string()))))
    }

    /// Opens the member's digest (see the module doc); `None`: another digest was opened first,
    /// look again.
    async fn open_digest(&self, join: &DigestJoin, now_ms: u64) -> Result<Option<DigestJoined>, ScyllaError> {
        let digest = NotificationId::for_digest(&join.member);
        let id = digest.0.as_str();
        let due = now_ms.saturating_add(join.window_ms);
        let record = (
            id,
            join.user_id.as_str(),
            join.key.as_str(),
            bigint("due_at_ms", due)?,
            1_i64,
            join.member.0.as_str(),
            true,
        );
        // Not applied: a replay's (the id comes from the member), which the steps below complete.
        self.lwt(Stmt::DigestOpen, record).await?;
        self.write_member(&digest, 0, &join.envelope, due, now_ms).await?;
        let hold = Hold {
            id: digest.clone(),
            reason: HoldReason::Digest,
            partition: join.partition,
            due_at_ms: due,
            client_id: join.client_id.clone(),
            envelope: join.envelope.clone(),
        };
        let due_at_ms = match self.hold_one(&hold).await? {
            Held::New => due,
            Held::Existing(row) if matches!(row.state, HoldState::Waiting | HoldState::Releasing) => row.due_at_ms,
            Held::Existing(_) => {
                // Released, cancelled or being cancelled before this replay: the member was in it. What the lines
                // above wrote again goes.
                self.end_digest(&digest).await?;
                self.claim_membership(join, &digest, now_ms).await?;
                return Ok(Some(DigestJoined::AlreadyMember { digest }));
            }
        };
        let answer = self.lwt(Stmt::OpenInsert, (join.user_id.as_str(), join.key.as_str(), id)).await?;
        if !answer.applied {
            let holder = answer.text("digest_id").map_err(|detail| ScyllaError::corrupt("digest_open", detail))?;
            if holder != Some(id) {
                // Another digest of the user and key opened first: this one goes (if it still
                // waits) and the member joins that one.
                self.cancel_hold(&digest, HoldReason::Digest).await?;
                return Ok(None);
            }
        }
        if let Some(before) = self.claim_membership(join, &digest, now_ms).await? {
            return Ok(Some(DigestJoined::AlreadyMember { digest: before }));
        }
        Ok(Some(DigestJoined::Opened { digest, due_at_ms }))
    }

    /// Joins the digest the pointer names; `None`: it closed or another join counted first, look
    /// again.
    async fn join_open_digest(
        &self,
        join: &DigestJoin,
        digest: NotificationId,
        now_ms: u64,
    ) -> Result<Option<DigestJoined>, ScyllaError> {
        let Some(record) = self.digest_record(&digest).await? else {
            // A pointer left by a crash after its digest ended.
            self.unpoint(&join.user_id, &join.key, &digest).await?;
            return Ok(None);
        };
        let seq = match count_step(&record, &join.member) {
            Count::Closed => {
                self.unpoint(&join.user_id, &join.key, &digest).await?;
                return Ok(None);
            }
            Count::Counted(seq) => seq,
            Count::Next(count) => {
                let next = bigint("member_count", count.saturating_add(1))?;
                let values = (next, join.member.0.as_str(), digest.0.as_str(), bigint("member_count", count)?, true);
                if !self.lwt(Stmt::DigestCount, values).await?.applied {
                    return Ok(None);
                }
                count
            }
        };
        self.write_member(&digest, seq, &join.envelope, record.due_at_ms, now_ms).await?;
        if let Some(before) = self.claim_membership(join, &digest, now_ms).await? {
            return Ok(Some(DigestJoined::AlreadyMember { digest: before }));
        }
        Ok(Some(DigestJoined::Joined { digest }))
    }

    pub(super) async fn join_one(&self, join: &DigestJoin, now_ms: u64) -> Result<DigestJoined, ScyllaError> {
        let member = join.member.0.as_str();
        if let Some((digest,)) = self.select_one::<(String,)>(Stmt::MemberOfSelect, (member,)).await? {
            return Ok(DigestJoined::AlreadyMember { digest: NotificationId(digest) });
        }
        for round in 0..CAS_ATTEMPTS {
            cas_backoff(round).await;
            let open =
                self.select_one::<(String,)>(Stmt::OpenSelect, (join.user_id.as_str(), join.key.as_str())).await?;
            let joined = match open {
                None => self.open_digest(join, now_ms).await?,
                Some((digest,)) => self.join_open_digest(join, NotificationId(digest), now_ms).await?,
            };
            if let Some(joined) = joined {
                return Ok(joined);
            }
        }
        let key = format!("{}/{}", join.user_id, join.key);
        Err(ScyllaError::Contention { table: TABLE, key, attempts: CAS_ATTEMPTS })
    }

    /// The members' envelopes in join order (at most `limit`) and the count.
    pub(super) async fn read_members(
        &self,
        digest: &NotificationId,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, u64), ScyllaError> {
        let count = self.digest_record(digest).await?.map_or(0, |record| record.count);
        let expected = members_expected(count, limit);
        if expected == 0 {
            return Ok((Vec::new(), count));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rows: Vec<(Vec<u8>,)> =
                self.select_all(Stmt::MemberSelect, (digest.0.as_str(), cql_limit(limit))).await?;
            if rows.len() >= expected || attempt >= MEMBER_READS {
                return Ok((rows.into_iter().map(|(envelope,)| envelope).collect(), count));
            }
            // A member counted in just before the digest closed, its row not written yet.
            tokio::time::sleep(MEMBER_WAIT).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(count: u64, last: &str, collecting: bool) -> DigestRecord {
        DigestRecord {
            user_id: "u1".into(),
            key: "k".into(),
            due_at_ms: 601_000,
            count,
            last_member: last.into(),
            collecting,
        }
    }

    fn nid(s: &str) -> NotificationId {
        NotificationId(s.into())
    }

    #[test]
    fn a_join_counts_itself_in_once_and_never_into_a_closed_digest() {
        assert_eq!(count_step(&record(1, "m1", true), &nid("m2")), Count::Next(1));
        assert_eq!(count_step(&record(2, "m2", true), &nid("m2")), Count::Counted(1), "a replay after its count");
        assert_eq!(count_step(&record(1, "m1", true), &nid("m1")), Count::Counted(0), "the opener, replayed");
        assert_eq!(count_step(&record(2, "m2", false), &nid("m3")), Count::Closed);
        assert_eq!(count_step(&record(2, "m2", false), &nid("m2")), Count::Closed);
    }

    #[test]
    fn the_members_expected_are_bounded_by_the_stored_ones_and_the_limit() {
        assert_eq!(members_expected(0, 10), 0);
        assert_eq!(members_expected(2, 10), 2);
        assert_eq!(members_expected(20, 10), 10);
        assert_eq!(members_expected(5_000, usize::MAX), 1_000);
    }

    #[test]
    fn digest_records_decode_and_negative_numbers_are_corrupt() {
        let columns = ("u1".to_string(), "k".to_string(), 601_000, 2, "m2".to_string(), true);
        assert_eq!(decode_digest(columns).unwrap(), record(2, "m2", true));
        let negative = ("u1".to_string(), "k".to_string(), 601_000, -1, "m2".to_string(), true);
        assert!(matches!(decode_digest(negative), Err(ScyllaError::Corrupt { table: "digests", .. })));
    }

    #[test]
    fn digest_rows_outlive_the_due_time_by_a_week() {
        let week = 7 * 24 * 3600;
        assert_eq!(digest_ttl(601_000, 1_000), 600 + week + 60);
        // Long overdue: a week from now at most the grace.
        assert_eq!(digest_ttl(1_000, 1_000 + 8 * 24 * 3_600_000), 60);
    }
}
