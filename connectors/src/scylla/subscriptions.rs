//! [`SubscriptionStore`] on `user_topics`, `topic_subscribers` and `broadcast_cursors`.
//!
//! # Tables
//! - `user_topics (user_id PK, topics set<text>)`: a user's topics, read by `topics_of` and by
//!   `set_topics` to know which index rows to remove. Only ever written with `UPDATE` (no row
//!   marker), so a user whose set becomes empty has no row.
//! - `topic_subscribers ((topic, bucket), user_id)`: the index a broadcast pages through. A topic
//!   is split into [`SUBSCRIBER_BUCKETS`] Scylla partitions by a stable hash of the user id
//!   ([`subscriber_bucket`]), so a topic of a million subscribers is 16 partitions of ~60 000
//!   small rows, not one huge partition on one replica set. The hash is salted: an unsalted one
//!   would be the hash `herald-requests` is partitioned by, so each bucket would hold the users of
//!   one request partition (for any partition count dividing 16) and every page of a broadcast
//!   would land on one partition.
//! - `broadcast_cursors (broadcast_id PK, cursor)`: plain upserts `USING TTL`
//!   [`BROADCAST_CURSOR_TTL`], far longer than any replay of `herald-requests` can come after the
//!   broadcast; client timestamps are monotonic, so a later cursor always wins.
//!
//! # Paging
//! Subscribers come in (bucket, user id) order; a cursor is `"{bucket:02}/{last user id}"`
//! ([`encode_cursor`]). A page reads the cursor's bucket from `user_id > ?` with a `LIMIT` of one
//! more than the page (to know whether anything follows), then, while that is not enough, the
//! following buckets [`READ_AHEAD`] at a time, concurrently, each with a `LIMIT` of what is still
//! wanted. So a call is at most 1 + ⌈15 / 4⌉ = 5 round trips: one for most pages of a large topic
//! (a bucket boundary costs one more, reading up to 4 × the page), and a small topic's single
//! page reads its 16 small partitions in 5 round trips. Pages are full until the last, and
//! `None` comes exactly when nothing follows, as from the embedded store.
//!
//! # `set_topics`
//! No lightweight transaction: one read and a few plain (idempotent) writes, in an order that
//! keeps the invariant "every index row of the user names a topic in `user_topics`", so a crash at
//! any point leaves no index row that a later `set_topics` would not remove:
//! 1. read the old set;
//! 2. add the new topics to the stored set (`topics = topics + ?`; skipped if none is new);
//! 3. write the index rows of every new topic (again for those already there: it repairs a call
//!    that crashed before them) and remove those of the old topics not kept;
//! 4. store the new set (skipped if it is the old one).
//!
//! After a crash between 2 and 4 the stored set is the union of the old and the new until the
//! user's topics are set again (the API's retry does it); `topics_of` and the old set returned
//! then include the extra topics. Concurrent `set_topics` of one user are not expected (one user's
//! preferences, set from one place): two of them interleaving could leave the index rows of the
//! loser's topics behind (broadcasts of those topics would reach the user) until the next
//! `set_topics`. Serialising them would take an LWT on every call for a race that does not occur.

use super::ScyllaError;
use super::schedule::cql_limit;
use super::state::{ScyllaState, each};
use super::statements::Stmt;
use super::values::{int, ttl_secs};
use async_trait::async_trait;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{StoreError, SubscriptionStore};
use herald_schemas::topic::partition_for_key;
use std::collections::BTreeSet;
use std::time::Duration;

const TABLE: &str = "topic_subscribers";

/// The Scylla partitions of one topic in `topic_subscribers`. Fixed: changing it would hide every
/// stored index row from the reads and deletes that compute a user's bucket.
pub const SUBSCRIBER_BUCKETS: u32 = 16;
/// Buckets a page reads concurrently once the cursor's bucket is exhausted.
pub const READ_AHEAD: usize = 4;
/// How long a broadcast's cursor is kept after its last write.
pub const BROADCAST_CURSOR_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Hashed with the user id for its bucket (see the module doc for why it is salted).
const BUCKET_SALT: &str = "topic_subscribers/";

/// The bucket of a user's rows in `topic_subscribers` (the same for every topic).
pub fn subscriber_bucket(user_id: &str) -> u32 {
    partition_for_key(format!("{BUCKET_SALT}{user_id}").as_bytes(), SUBSCRIBER_BUCKETS)
}

/// Where a page starts: in `bucket`, after `after` (from the bucket's first row when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub bucket: u32,
    pub after: Option<String>,
}

/// The cursor of a page ending at `user_id` in `bucket`.
pub fn encode_cursor(bucket: u32, user_id: &str) -> String {
    format!("{bucket:02}/{user_id}")
}

/// The position after a cursor of [`encode_cursor`] (`None`: the first page).
pub fn decode_cursor(cursor: Option<&str>) -> Result<Position, ScyllaError> {
    let Some(cursor) = cursor else { return Ok(Position { bucket: 0, after: None }) };
    let bad = || ScyllaError::corrupt(TABLE, format!("not a subscribers cursor of this store: {cursor:?}"));
    let (bucket, user_id) = cursor.split_once('/').ok_or_else(bad)?;
    if bucket.len() != 2 || !bucket.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let bucket: u32 = bucket.parse().map_err(|_| bad())?;
    if bucket >= SUBSCRIBER_BUCKETS {
        return Err(bad());
    }
    Ok(Position { bucket, after: Some(user_id.to_string()) })
}

/// A page of at most `limit` from the rows read in order (up to `limit + 1`: one more says that
/// something follows), and its cursor (`None`: nothing follows).
pub fn page_of(mut found: Vec<(u32, String)>, limit: usize) -> (Vec<String>, Option<String>) {
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|(bucket, user)| encode_cursor(*bucket, user))
    } else {
        None
    };
    (found.into_iter().map(|(_, user)| user).collect(), next)
}

/// The buckets after `bucket`, in groups of [`READ_AHEAD`].
pub fn read_ahead_groups(bucket: u32) -> Vec<Vec<u32>> {
    let rest: Vec<u32> = (bucket.saturating_add(1)..SUBSCRIBER_BUCKETS).collect();
    rest.chunks(READ_AHEAD).map(<[u32]>::to_vec).collect()
}

impl ScyllaState {
    async fn stored_topics(&self, user_id: &str) -> Result<BTreeSet<String>, ScyllaError> {
        let row: Option<(BTreeSet<String>,)> = self.select_one(Stmt::TopicsSelect, (user_id,)).await?;
        Ok(row.map(|(topics,)| topics).unwrap_or_default())
    }

    /// Up to `limit` subscribers of one bucket, after `after`, as (bucket, user id).
    async fn bucket_page(
        &self,
        topic: &str,
        bucket: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(u32, String)>, ScyllaError> {
        let (b, n) = (int("bucket", bucket)?, cql_limit(limit));
        let rows: Vec<(String,)> = match after {
            Some(after) => self.select_all(Stmt::SubscribersAfter, (topic, b, after, n)).await?,
            None => self.select_all(Stmt::SubscribersFirst, (topic, b, n)).await?,
        };
        Ok(rows.into_iter().map(|(user,)| (bucket, user)).collect())
    }
}

#[async_trait]
impl SubscriptionStore for ScyllaState {
    /// See the module doc for the order of the writes.
    async fn set_topics(&self, user_id: &str, topics: &[String]) -> Result<Vec<String>, StoreError> {
        let new: BTreeSet<String> = topics.iter().cloned().collect();
        let old = self.stored_topics(user_id).await?;
        let added: BTreeSet<&String> = new.difference(&old).collect();
        if !added.is_empty() {
            self.write(Stmt::TopicsAdd, (&added, user_id)).await?;
        }
        let bucket = int("bucket", subscriber_bucket(user_id))?;
        let index: Vec<(Stmt, &str)> = new
            .iter()
            .map(|t| (Stmt::SubscriberInsert, t.as_str()))
            .chain(old.difference(&new).map(|t| (Stmt::SubscriberDelete, t.as_str())))
            .collect();
        each(&index, |(stmt, topic)| self.write(*stmt, (*topic, bucket, user_id))).await?;
        if new != old {
            // An empty set is a null: the row goes.
            self.write(Stmt::TopicsSet, (&new, user_id)).await?;
        }
        Ok(old.into_iter().collect())
    }

    async fn topics_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.stored_topics(user_id).await?.into_iter().collect())
    }

    /// Like the embedded store, a `limit` of 0 answers no subscribers and the end.
    async fn subscribers(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let start = decode_cursor(cursor)?;
        let wanted = limit.saturating_add(1);
        let mut found = self.bucket_page(topic, start.bucket, start.after.as_deref(), wanted).await?;
        for group in read_ahead_groups(start.bucket) {
            let still = wanted.saturating_sub(found.len());
            if still == 0 {
                break;
            }
            let pages = each(&group, |bucket| self.bucket_page(topic, *bucket, None, still)).await?;
            found.extend(pages.into_iter().flatten());
        }
        found.truncate(wanted);
        Ok(page_of(found, limit))
    }

    async fn broadcast_cursor(&self, id: &NotificationId) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = self.select_one(Stmt::CursorSelect, (id.0.as_str(),)).await?;
        Ok(row.map(|(cursor,)| cursor))
    }

    async fn set_broadcast_cursor(&self, id: &NotificationId, cursor: &str) -> Result<(), StoreError> {
        self.write(Stmt::CursorUpsert, (id.0.as_str(), cursor, ttl_secs(BROADCAST_CURSOR_TTL))).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_spread_and_not_the_request_partition() {
        // Pinned: stored rows are found by recomputing the bucket, so it must never change.
        let pinned: Vec<u32> = ["u1", "u2", "alice", ""].iter().map(|u| subscriber_bucket(u)).collect();
        assert_eq!(pinned, [11, 11, 3, 14]);
        let mut seen = [0_u32; SUBSCRIBER_BUCKETS as usize];
        let mut same_as_partition = 0;
        for i in 0..16_000 {
            let user = format!("user-{i}");
            let bucket = subscriber_bucket(&user);
            seen[bucket as usize] += 1;
            same_as_partition += u32::from(bucket == partition_for_key(user.as_bytes(), SUBSCRIBER_BUCKETS));
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
        // Independent of the request partition: about 1 in 16 agree, not all.
        assert!((700..1300).contains(&same_as_partition), "{same_as_partition}");
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for (bucket, user) in [(0, "u1"), (7, "a/b"), (15, ""), (3, "ünï")] {
            let cursor = encode_cursor(bucket, user);
            assert_eq!(decode_cursor(Some(&cursor)).unwrap(), Position { bucket, after: Some(user.to_string()) });
        }
        assert_eq!(encode_cursor(3, "u9"), "03/u9");
        assert_eq!(decode_cursor(None).unwrap(), Position { bucket: 0, after: None });
        // An embedded store's cursor (a user id), the done marker, a bucket out of range.
        for bad in ["u10", herald_schemas::store::BROADCAST_DONE, "16/u1", "3/u1", "+1/u1", "ab/u1", ""] {
            assert!(matches!(decode_cursor(Some(bad)), Err(ScyllaError::Corrupt { table: TABLE, .. })), "{bad:?}");
        }
    }

    fn rows(list: &[(u32, &str)]) -> Vec<(u32, String)> {
        list.iter().map(|(b, u)| (*b, u.to_string())).collect()
    }

    #[test]
    fn a_page_ends_with_a_cursor_only_if_a_row_follows() {
        let (page, next) = page_of(rows(&[(0, "a"), (0, "b"), (2, "c")]), 2);
        assert_eq!((page, next.as_deref()), (vec!["a".to_string(), "b".into()], Some("00/b")));
        let (page, next) = page_of(rows(&[(0, "a"), (2, "c"), (5, "d")]), 2);
        assert_eq!((page.len(), next.as_deref()), (2, Some("02/c")));
        // Exactly a page, or less: the end.
        assert_eq!(page_of(rows(&[(0, "a"), (2, "c")]), 2).1, None);
        assert_eq!(page_of(rows(&[(9, "z")]), 5), (vec!["z".to_string()], None));
        assert_eq!(page_of(Vec::new(), 5), (Vec::new(), None));
    }

    #[test]
    fn the_buckets_after_the_cursors_are_read_four_at_a_time() {
        let groups = read_ahead_groups(0);
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0], [1, 2, 3, 4]);
        assert_eq!(groups[3], [13, 14, 15]);
        assert_eq!(read_ahead_groups(13), vec![vec![14, 15]]);
        assert!(read_ahead_groups(15).is_empty());
        assert!(read_ahead_groups(u32::MAX).is_empty());
    }
}
