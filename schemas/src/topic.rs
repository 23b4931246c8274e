//! The topic log: partitioned, append-only, durable, with consumer-group offsets.
//!
//! Implemented by the embedded log (one process, local disk) and by Fluvio.
//!
//! # Contract
//! - [`TopicLog::append`] returns only once every record in every part is
//!   durable; the offsets it returns are final. A part's records get
//!   consecutive offsets in the order given.
//! - [`TopicLog::read`] returns records of one partition from an offset, in
//!   offset order, waiting up to a deadline when none are there yet.
//! - An offset committed for a group is the *next* offset to read. A consumer
//!   commits only once everything it produced from the records before it is
//!   durable, and only in order; a crash replays from the committed offset,
//!   and consumers are idempotent so the replay is absorbed.

use async_trait::async_trait;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

pub const INGEST: &str = "herald-ingest";
pub const REQUESTS: &str = "herald-requests";
/// The priority lane: `transactional` requests (one-time passwords, security notices) have their
/// own topic and chain, so a marketing backlog on [`REQUESTS`] never delays them.
pub const REQUESTS_PRIORITY: &str = "herald-requests-priority";
pub const EVENTS: &str = "herald-events";
/// Broadcasts (a request naming a `topic`), keyed by notification id, until fanned out to every
/// subscriber on [`REQUESTS`].
pub const BROADCASTS: &str = "herald-broadcasts";
/// Deliveries waiting for their next attempt ([`crate::job::RetryJob`]).
pub const RETRY: &str = "herald-retry";
/// Deliveries given up ([`crate::job::DeadLetter`]).
pub const DEAD: &str = "herald-dead";

/// The request topic of a category's lane.
pub fn requests_topic(category: &str) -> &'static str {
    if category == crate::TRANSACTIONAL { REQUESTS_PRIORITY } else { REQUESTS }
}

/// Ends the *group* a record key may start with: an event's key is `notification id 0x1f event
/// id`. A log may index records by group (the embedded one does, for `herald-events`).
pub const KEY_GROUP_SEPARATOR: u8 = 0x1f;

/// A record to append. The key picks the partition (see [`partition_for_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A record read back, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When it was appended (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

/// Records for one partition of one topic, part of an [`TopicLog::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub topic: String,
    pub partition: u32,
    pub records: Vec<Record>,
}

/// A consumer group's new position in one partition (see [`TopicLog::commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub next_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Ours or the caller's: the topic was never created.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The caller's: a partition beyond the topic's count.
    #[error("topic {topic:?} has {partitions} partitions, no partition {partition}")]
    NoSuchPartition { topic: String, partition: u32, partitions: u32 },
    /// The caller's: Fluvio's naming rule (`a-z`, `0-9`, `-`, at most 63 characters).
    #[error("invalid topic name {0:?}: use a-z, 0-9 and '-' only")]
    InvalidName(String),
    /// The caller's: the topic exists with another partition count.
    #[error("topic {topic:?} exists with {existing} partitions, not {requested}")]
    PartitionMismatch { topic: String, existing: u32, requested: u32 },
    /// An outside system's (disk, cluster): may succeed if retried.
    #[error("topic log backend failed: {0}")]
    Backend(String),
    /// The log was closed (shutdown).
    #[error("topic log is closed")]
    Closed,
}

impl LogError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Backend(_))
    }
}

#[async_trait]
pub trait TopicLog: Send + Sync + 'static {
    /// Creates the topic if it does not exist; returns its partition count.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError>;

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends every part durably (one group commit); returns each part's first offset.
    async fn append(&self, parts: Vec<Append>) -> Result<Vec<u64>, LogError>;

    /// Up to `max` records from `from` on, waiting up to `wait` if there are none yet.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError>;

    /// Appends `parts` and records `commits`, durably, as one step: the
    /// commits never become durable without the records. A backend that can
    /// make both one atomic write does (the embedded log: one write, one
    /// fsync); the default appends, then commits.
    async fn append_and_commit(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<Vec<u64>, LogError> {
        let firsts = if parts.is_empty() { Vec::new() } else { self.append(parts).await? };
        for c in &commits {
            self.commit(&c.group, &c.topic, c.partition, c.next_offset).await?;
        }
        Ok(firsts)
    }

    /// [`append_and_commit`](Self::append_and_commit) without waiting for
    /// durability ("ordered durability"): the write is ordered after every
    /// earlier one and becomes durable with the next group commit; readers see
    /// the records only then, and a crash loses at most a suffix of such writes,
    /// commits included, which the consumer then replays. For consumers whose
    /// source is durable and whose outputs are idempotent: everything but the
    /// API's accept path, which must answer only after durability. The default
    /// waits.
    async fn append_and_commit_ordered(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<(), LogError> {
        self.append_and_commit(parts, commits).await.map(|_| ())
    }

    /// Records positions without waiting for them to be durable: they become
    /// durable no later than the next durable append or commit (ordered
    /// durability, see `store`). For a consumer whose outputs are themselves
    /// ordered store writes (the timeline), losing the commit only replays
    /// idempotent writes. The default commits durably.
    async fn commit_ordered(&self, commits: Vec<Commit>) -> Result<(), LogError> {
        for c in &commits {
            self.commit(&c.group, &c.topic, c.partition, c.next_offset).await?;
        }
        Ok(())
    }

    /// Records `next_offset` as the group's position in the partition.
    async fn commit(&self, group: &str, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError>;

    /// The group's position (0 when it never committed).
    async fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// The end of the durable records: the offset the next appended record
    /// will get once appends in flight are durable.
    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;
}

/// The partition a key belongs to: a stable hash (xxh3), the same in every
/// process and release, so a user's records always land in one partition.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    (xxh3_64(key) % u64::from(partitions.max(1))) as u32
}

/// Fluvio's topic naming rule, used by both backends so names carry over.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(LogError::InvalidName(name.to_string())) }
}

/// Groups keyed records into per-partition appends for `topic`, keeping order.
pub fn keyed_appends(topic: &str, partitions: u32, records: Vec<Record>) -> Vec<Append> {
    partitioned_appends(topic, records.into_iter().map(|r| (partition_for_key(&r.key, partitions), r)))
}

/// Groups records whose partition the caller chose into per-partition appends, keeping order.
pub fn partitioned_appends(topic: &str, records: impl IntoIterator<Item = (u32, Record)>) -> Vec<Append> {
    let mut parts: Vec<Append> = Vec::new();
    for (partition, record) in records {
        match parts.iter_mut().find(|a| a.partition == partition) {
            Some(a) => a.records.push(record),
            None => parts.push(Append { topic: topic.to_string(), partition, records: vec![record] }),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning_is_stable_and_spread() {
        assert_eq!(partition_for_key(b"user-1", 8), partition_for_key(b"user-1", 8));
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[partition_for_key(format!("user-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
    }

    #[test]
    fn topic_names_follow_fluvio() {
        assert!(validate_topic_name("herald-deliveries-apns").is_ok());
        for bad in ["", "Herald", "herald_x", "-a", "a-", "a.b"] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyed_appends_keep_order_per_partition() {
        let recs: Vec<Record> =
            (0..100).map(|i| Record { key: format!("k{}", i % 7).into_bytes(), value: vec![i as u8] }).collect();
        let parts = keyed_appends("t", 4, recs);
        let total: usize = parts.iter().map(|p| p.records.len()).sum();
        assert_eq!(total, 100);
        for p in &parts {
            assert!(p.records.windows(2).all(|w| w[0].value < w[1].value));
            assert!(p.records.iter().all(|r| partition_for_key(&r.key, 4) == p.partition));
        }
    }
}
