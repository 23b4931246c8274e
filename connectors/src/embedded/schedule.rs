//! The schedule index and the digests on fjall ([`ScheduleStore`]).
//!
//! # Keys
//! - holds: `len | id | reason byte` → [`HoldRecord`] (JSON): the state of every hold, kept for
//!   [`REMEMBER_DONE`] after it was released or cancelled so a replayed hold is recognised.
//! - schedule: `partition (u32 BE) | due (u64 BE) | len | id | reason byte` → the envelope: what
//!   waits, so the scheduler's read of what is due is one range scan of its partition.
//! - digests: `len | digest id` → [`DigestRecord`]; digest_open: `len | user | key` → digest id
//!   (the digest of that user and key collecting now); digest_members: `len | digest id | seq
//!   (u32 BE)` → member envelope (the first [`MAX_DIGEST_MEMBERS`]); digest_member_of: member id →
//!   digest id (so a replayed join is recognised).
//! - schedule_expiry: `forget at (u64 BE) | tag | key` → (): done holds and memberships to forget,
//!   dropped by [`super::EmbeddedDb::apply_retention`].
//!
//! Every call takes the schedule lock, so a cancel, a release and a join never interleave.

use super::EmbeddedError;
use super::db::{EmbeddedDb, Inner, hold as lock};
use super::stores::prefixed;
use async_trait::async_trait;
use fjall::OwnedWriteBatch;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{
    DigestJoin, DigestJoined, Hold, HoldKey, HoldReason, HoldState, MAX_DIGEST_MEMBERS, REMEMBER_DONE, ScheduleStore,
    StoreError,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Expired entries dropped per write batch.
const PURGE_CHUNK: usize = 10_000;

const TAG_HOLD: u8 = 1;
const TAG_MEMBER: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HoldRecord {
    state: HoldState,
    partition: u32,
    due_at_ms: u64,
    client_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DigestRecord {
    user_id: String,
    key: String,
    /// Members joined (some beyond [`MAX_DIGEST_MEMBERS`] are counted only).
    count: u64,
}

fn reason_byte(reason: HoldReason) -> u8 {
    match reason {
        HoldReason::SendAt => 1,
        HoldReason::QuietHours => 2,
        HoldReason::Digest => 3,
    }
}

fn reason_of(byte: u8) -> Result<HoldReason, EmbeddedError> {
    match byte {
        1 => Ok(HoldReason::SendAt),
        2 => Ok(HoldReason::QuietHours),
        3 => Ok(HoldReason::Digest),
        other => Err(EmbeddedError::corrupt("schedule", format!("unknown hold reason byte {other}"))),
    }
}

fn hold_key(id: &NotificationId, reason: HoldReason) -> Vec<u8> {
    let mut key = prefixed(&id.0);
    key.push(reason_byte(reason));
    key
}

fn index_key(partition: u32, due_at_ms: u64, id: &NotificationId, reason: HoldReason) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + 4 + id.0.len() + 1);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&due_at_ms.to_be_bytes());
    key.extend_from_slice(&hold_key(id, reason));
    key
}

/// `(due, id, reason)` of an index key.
fn parse_index_key(key: &[u8]) -> Result<(u64, NotificationId, HoldReason), EmbeddedError> {
    let bad = || EmbeddedError::corrupt("schedule", "malformed index key");
    let due = u64::from_be_bytes(key.get(4..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let len = u32::from_be_bytes(key.get(12..16).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let id = key.get(16..16 + len).ok_or_else(bad)?;
    let id = String::from_utf8(id.to_vec()).map_err(|_| bad())?;
    let reason = reason_of(*key.get(16 + len).ok_or_else(bad)?)?;
    Ok((due, NotificationId(id), reason))
}

fn open_key(user_id: &str, key: &str) -> Vec<u8> {
    let mut out = prefixed(user_id);
    out.extend_from_slice(key.as_bytes());
    out
}

fn member_key(digest: &NotificationId, seq: u64) -> Vec<u8> {
    let mut key = prefixed(&digest.0);
    key.extend_from_slice(&(seq as u32).to_be_bytes());
    key
}

fn expiry_key(forget_at_ms: u64, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.extend_from_slice(&forget_at_ms.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(key);
    out
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, EmbeddedError> {
    serde_json::to_vec(value).map_err(|e| EmbeddedError::corrupt("schedule", format!("cannot encode: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, EmbeddedError> {
    serde_json::from_slice(bytes).map_err(|e| EmbeddedError::corrupt(what, e.to_string()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn hold_record(&self, id: &NotificationId, reason: HoldReason) -> Result<Option<HoldRecord>, EmbeddedError> {
        match self.ks.holds.get(hold_key(id, reason))? {
            Some(bytes) => Ok(Some(parse("holds", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Ends a hold (released or cancelled): out of the index, its digest's members dropped, the
    /// record kept for [`REMEMBER_DONE`].
    fn end_hold(
        &self,
        batch: &mut OwnedWriteBatch,
        id: &NotificationId,
        reason: HoldReason,
        mut record: HoldRecord,
        state: HoldState,
        now_ms: u64,
    ) -> Result<(), EmbeddedError> {
        batch.remove(&self.ks.schedule, index_key(record.partition, record.due_at_ms, id, reason));
        if reason == HoldReason::Digest {
            self.close_digest(batch, id)?;
            for guard in self.ks.digest_members.prefix(prefixed(&id.0)) {
                batch.remove(&self.ks.digest_members, guard.key()?);
            }
            batch.remove(&self.ks.digests, prefixed(&id.0));
        }
        record.state = state;
        let key = hold_key(id, reason);
        batch.insert(&self.ks.holds, &key, json(&record)?);
        batch.insert(&self.ks.schedule_expiry, expiry_key(now_ms + millis(REMEMBER_DONE), TAG_HOLD, &key), []);
        Ok(())
    }

    /// Stops a digest collecting: a later join of its user and key opens a new one.
    fn close_digest(&self, batch: &mut OwnedWriteBatch, digest: &NotificationId) -> Result<(), EmbeddedError> {
        let Some(bytes) = self.ks.digests.get(prefixed(&digest.0))? else { return Ok(()) };
        let record: DigestRecord = parse("digests", &bytes)?;
        let open = open_key(&record.user_id, &record.key);
        if self.ks.digest_open.get(&open)?.is_some_and(|d| d.as_ref() == digest.0.as_bytes()) {
            batch.remove(&self.ks.digest_open, open);
        }
        Ok(())
    }

    fn join_one(&self, join: &DigestJoin, now_ms: u64) -> Result<DigestJoined, EmbeddedError> {
        let text = |what: &'static str, bytes: &[u8]| {
            String::from_utf8(bytes.to_vec())
                .map(NotificationId)
                .map_err(|e| EmbeddedError::corrupt(what, e.to_string()))
        };
        if let Some(digest) = self.ks.digest_member_of.get(join.member.0.as_bytes())? {
            return Ok(DigestJoined::AlreadyMember { digest: text("digest_member_of", &digest)? });
        }
        let mut batch = self.db.batch();
        let open = open_key(&join.user_id, &join.key);
        let (joined, digest, seq) = match self.ks.digest_open.get(&open)? {
            Some(digest) => {
                let digest = text("digest_open", &digest)?;
                let mut record: DigestRecord = match self.ks.digests.get(prefixed(&digest.0))? {
                    Some(bytes) => parse("digests", &bytes)?,
                    None => return Err(EmbeddedError::corrupt("digests", "an open digest has no record")),
                };
                let seq = record.count;
                record.count += 1;
                batch.insert(&self.ks.digests, prefixed(&digest.0), json(&record)?);
                (DigestJoined::Joined { digest: digest.clone() }, digest, seq)
            }
            None => {
                let digest = NotificationId::for_digest(&join.member);
                let due_at_ms = now_ms.saturating_add(join.window_ms);
                let record = DigestRecord { user_id: join.user_id.clone(), key: join.key.clone(), count: 1 };
                batch.insert(&self.ks.digests, prefixed(&digest.0), json(&record)?);
                batch.insert(&self.ks.digest_open, &open, digest.0.as_bytes());
                let hold = HoldRecord {
                    state: HoldState::Waiting,
                    partition: join.partition,
                    due_at_ms,
                    client_id: join.client_id.clone(),
                };
                batch.insert(&self.ks.holds, hold_key(&digest, HoldReason::Digest), json(&hold)?);
                batch.insert(
                    &self.ks.schedule,
                    index_key(join.partition, due_at_ms, &digest, HoldReason::Digest),
                    &join.envelope,
                );
                (DigestJoined::Opened { digest: digest.clone(), due_at_ms }, digest, 0)
            }
        };
        if seq < MAX_DIGEST_MEMBERS {
            batch.insert(&self.ks.digest_members, member_key(&digest, seq), &join.envelope);
        }
        batch.insert(&self.ks.digest_member_of, join.member.0.as_bytes(), digest.0.as_bytes());
        let forget_at = now_ms.saturating_add(join.window_ms).saturating_add(millis(REMEMBER_DONE));
        batch.insert(&self.ks.schedule_expiry, expiry_key(forget_at, TAG_MEMBER, join.member.0.as_bytes()), []);
        self.commit_ordered(batch)?;
        Ok(joined)
    }

    /// Forgets done holds and digest memberships older than [`REMEMBER_DONE`]; returns how many.
    pub(crate) fn purge_done_holds(&self, now_ms: u64) -> Result<u64, EmbeddedError> {
        let upper = now_ms.saturating_add(1).to_be_bytes();
        let mut purged = 0;
        loop {
            let _serial = lock(&self.locks.schedule);
            let mut batch = self.db.batch();
            let mut seen = 0;
            for guard in self.ks.schedule_expiry.range(..upper).take(PURGE_CHUNK) {
                seen += 1;
                let index = guard.key()?;
                let key = index.get(9..).unwrap_or_default();
                match index.get(8) {
                    Some(&TAG_HOLD) => {
                        // Only a hold that is still done: a purge never drops a waiting one.
                        let done = match self.ks.holds.get(key)? {
                            Some(bytes) => {
                                let record: HoldRecord = parse("holds", &bytes)?;
                                matches!(record.state, HoldState::Released | HoldState::Cancelled)
                            }
                            None => false,
                        };
                        if done {
                            batch.remove(&self.ks.holds, key);
                            purged += 1;
                        }
                    }
                    Some(&TAG_MEMBER) => {
                        batch.remove(&self.ks.digest_member_of, key);
                        purged += 1;
                    }
                    _ => {}
                }
                batch.remove(&self.ks.schedule_expiry, index);
            }
            super::db::commit(batch)?;
            if seen < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }
}

impl EmbeddedDb {
    /// Ends each hold found in state `from` as `to` (out of the index); others are left as they
    /// are. Ordered durability.
    async fn end_holds(&self, holds: &[HoldKey], from: HoldState, to: HoldState) -> Result<(), StoreError> {
        let holds = holds.to_vec();
        Ok(self
            .call(move |inner| {
                let _serial = lock(&inner.locks.schedule);
                let now = super::db::now_ms();
                let mut batch = inner.db.batch();
                for (id, reason) in &holds {
                    if let Some(record) = inner.hold_record(id, *reason)?
                        && record.state == from
                    {
                        inner.end_hold(&mut batch, id, *reason, record, to, now)?;
                    }
                }
                inner.commit_ordered(batch)
            })
            .await?)
    }
}

#[async_trait]
impl ScheduleStore for EmbeddedDb {
    async fn hold(&self, holds: &[Hold]) -> Result<Vec<Option<HoldState>>, StoreError> {
        let holds = holds.to_vec();
        Ok(self
            .call(move |inner| {
                let _serial = lock(&inner.locks.schedule);
                let mut out = Vec::with_capacity(holds.len());
                for h in &holds {
                    if let Some(record) = inner.hold_record(&h.id, h.reason)? {
                        out.push(Some(record.state));
                        continue;
                    }
                    let mut batch = inner.db.batch();
                    let record = HoldRecord {
                        state: HoldState::Waiting,
                        partition: h.partition,
                        due_at_ms: h.due_at_ms,
                        client_id: h.client_id.clone(),
                    };
                    batch.insert(&inner.ks.holds, hold_key(&h.id, h.reason), json(&record)?);
                    batch.insert(&inner.ks.schedule, index_key(h.partition, h.due_at_ms, &h.id, h.reason), &h.envelope);
                    inner.commit_ordered(batch)?;
                    out.push(None);
                }
                Ok(out)
            })
            .await?)
    }

    async fn due(&self, partition: u32, now_ms: u64, limit: usize) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        Ok(self
            .call(move |inner| {
                let mut start = partition.to_be_bytes().to_vec();
                start.extend_from_slice(&0u64.to_be_bytes());
                let mut end = partition.to_be_bytes().to_vec();
                end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
                let mut out = Vec::new();
                for guard in inner.ks.schedule.range(start..end).take(limit) {
                    let (key, envelope) = guard.into_inner()?;
                    let (due_at_ms, id, reason) = parse_index_key(&key)?;
                    let Some(record) = inner.hold_record(&id, reason)? else { continue };
                    let hold = Hold {
                        id,
                        reason,
                        partition,
                        due_at_ms,
                        client_id: record.client_id,
                        envelope: envelope.to_vec(),
                    };
                    out.push((hold, record.state));
                }
                Ok(out)
            })
            .await?)
    }

    async fn begin_release(&self, holds: &[HoldKey]) -> Result<Vec<bool>, StoreError> {
        let holds = holds.to_vec();
        Ok(self
            .write_durable(move |inner| {
                let _serial = lock(&inner.locks.schedule);
                let mut batch = inner.db.batch();
                let mut out = Vec::with_capacity(holds.len());
                for (id, reason) in &holds {
                    let taken = match inner.hold_record(id, *reason)? {
                        Some(mut record) if record.state == HoldState::Waiting => {
                            record.state = HoldState::Releasing;
                            batch.insert(&inner.ks.holds, hold_key(id, *reason), json(&record)?);
                            if *reason == HoldReason::Digest {
                                inner.close_digest(&mut batch, id)?;
                            }
                            true
                        }
                        Some(record) => record.state == HoldState::Releasing,
                        None => false,
                    };
                    out.push(taken);
                }
                Ok((out, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn finish_release(&self, holds: &[HoldKey]) -> Result<(), StoreError> {
        self.end_holds(holds, HoldState::Releasing, HoldState::Released).await
    }

    async fn cancel(&self, id: &NotificationId, client_id: Option<&str>) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        let (id, client_id) = (id.clone(), client_id.map(str::to_string));
        Ok(self
            .write_durable(move |inner| {
                let _serial = lock(&inner.locks.schedule);
                let mut batch = inner.db.batch();
                let mut found = Vec::new();
                for reason in HoldReason::ALL {
                    let Some(record) = inner.hold_record(&id, reason)? else { continue };
                    if client_id.as_ref().is_some_and(|c| *c != record.client_id) {
                        continue;
                    }
                    let index = index_key(record.partition, record.due_at_ms, &id, reason);
                    let envelope = inner.ks.schedule.get(&index)?.map(|v| v.to_vec()).unwrap_or_default();
                    let hold = Hold {
                        id: id.clone(),
                        reason,
                        partition: record.partition,
                        due_at_ms: record.due_at_ms,
                        client_id: record.client_id.clone(),
                        envelope,
                    };
                    let state = record.state;
                    if state == HoldState::Waiting {
                        let record = HoldRecord { state: HoldState::Cancelling, ..record };
                        batch.insert(&inner.ks.holds, hold_key(&id, reason), json(&record)?);
                        if reason == HoldReason::Digest {
                            inner.close_digest(&mut batch, &id)?;
                        }
                    }
                    found.push((hold, state));
                }
                Ok((found, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn finish_cancel(&self, holds: &[HoldKey]) -> Result<(), StoreError> {
        self.end_holds(holds, HoldState::Cancelling, HoldState::Cancelled).await
    }

    async fn join_digests(&self, joins: &[DigestJoin], now_ms: u64) -> Result<Vec<DigestJoined>, StoreError> {
        let joins = joins.to_vec();
        Ok(self
            .call(move |inner| {
                let _serial = lock(&inner.locks.schedule);
                joins.iter().map(|join| inner.join_one(join, now_ms)).collect()
            })
            .await?)
    }

    async fn digest_members(&self, digest: &NotificationId, limit: usize) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        let digest = digest.clone();
        Ok(self
            .call(move |inner| {
                let count = match inner.ks.digests.get(prefixed(&digest.0))? {
                    Some(bytes) => parse::<DigestRecord>("digests", &bytes)?.count,
                    None => 0,
                };
                let mut members = Vec::new();
                for guard in inner.ks.digest_members.prefix(prefixed(&digest.0)).take(limit) {
                    members.push(guard.value()?.to_vec());
                }
                Ok((members, count))
            })
            .await?)
    }
}

/// The tests every [`ScheduleStore`] passes (the ScyllaDB one too).
#[cfg(test)]
#[path = "../../tests/contracts/schedule.rs"]
mod contract;

#[cfg(test)]
mod tests {
    use super::contract;
    use super::*;
    use contract::{hold, join, nid};

    use crate::embedded::open_temp as open;

    #[tokio::test]
    async fn due_holds_come_soonest_first_per_partition_and_a_replayed_hold_is_recognised() {
        let (_dir, db) = open();
        contract::due_holds_come_soonest_first_per_partition_and_a_replayed_hold_is_recognised(&db).await;
    }

    #[tokio::test]
    async fn release_is_two_steps_and_a_cancel_cannot_take_what_is_being_released() {
        let (_dir, db) = open();
        contract::release_is_two_steps_and_a_cancel_cannot_take_what_is_being_released(&db).await;
    }

    #[tokio::test]
    async fn digests_collect_per_user_and_key_until_released_then_a_new_one_opens() {
        let (_dir, db) = open();
        contract::digests_collect_per_user_and_key_until_released_then_a_new_one_opens(&db).await;
    }

    #[tokio::test]
    async fn a_cancelled_digest_stops_collecting() {
        let (_dir, db) = open();
        contract::a_cancelled_digest_stops_collecting(&db).await;
    }

    #[tokio::test]
    async fn done_holds_and_memberships_are_forgotten_after_a_week_but_waiting_ones_never() {
        let (_dir, db) = open();
        db.hold(&[hold("done", 0, 100), hold("waits", 0, 100)]).await.unwrap();
        db.join_digests(&[join("u1", "k", "m1")], 100).await.unwrap();
        db.cancel(&nid("done"), None).await.unwrap();
        db.finish_cancel(&[(nid("done"), HoldReason::SendAt)]).await.unwrap();
        let later = super::super::db::now_ms() + millis(REMEMBER_DONE) + 700_000;
        assert_eq!(db.inner.purge_done_holds(later).unwrap(), 2, "the cancelled hold and the membership");
        assert_eq!(db.hold(&[hold("done", 0, 100)]).await.unwrap(), [None], "forgotten");
        assert_eq!(db.hold(&[hold("waits", 0, 100)]).await.unwrap(), [Some(HoldState::Waiting)]);
    }
}
