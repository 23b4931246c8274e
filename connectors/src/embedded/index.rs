//! The key index of the topic log: which stored batches of a topic hold records of a key group.
//!
//! A record key may start with a *group* ended by [`KEY_GROUP_SEPARATOR`] (an event's key is
//! `notification id 0x1f event id`); a key without the separator is a group of its own. For the
//! topics named in [`super::EmbeddedOptions::indexed_topics`], every append writes, in the same
//! write batch as the records, one entry per (bucket of a group, stored batch):
//!
//! ```text
//! index: topic id (u32) | bucket length (u8) | bucket | partition (u32) | batch first offset (u64) → ()
//! ```
//!
//! where `group` is cut to its first [`BUCKET_BYTES`] bytes (its *bucket*): finding a group's
//! records is one prefix scan, one point read per batch, and a filter on the whole group. This is
//! how the embedded backend answers `GET /v1/notifications/{id}` straight from `herald-events`:
//! the events are stored once, in the log, not copied into a timeline by a consumer.
//!
//! Why buckets: a notification id is a UUIDv7, whose first 13 characters are its creation time
//! in milliseconds, so the notifications of one millisecond share one entry per batch. A batch of
//! a few thousand events gets a few hundred entries instead of one per notification; a lookup
//! reads the handful of batches holding that millisecond's notifications (each at most 64 KiB).
//! Keys of any other shape still work: their buckets are just finer.
//!
//! Retention keeps an indexed topic's batches for [`super::EmbeddedOptions::indexed_retention`]
//! after their append (and never deletes what a consumer group has not read), and deletes a
//! batch's index entries in the same write batch as the batch.

use super::EmbeddedError;
use super::db::Inner;
use super::log::{StoredBatch, batch_key, be_u32, be_u64};
use herald_schemas::topic::{KEY_GROUP_SEPARATOR, StoredRecord};

/// The group of a record key: up to the first separator, or the whole key.
pub(crate) fn key_group(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == KEY_GROUP_SEPARATOR) {
        Some(at) => &key[..at],
        None => key,
    }
}

/// Bytes of a group its index bucket keeps: the millisecond part of a UUIDv7 in text,
/// `01a217b2-fa1c`.
pub(crate) const BUCKET_BYTES: usize = 13;

/// The bucket a group is indexed under.
pub(crate) fn bucket(group: &[u8]) -> &[u8] {
    &group[..group.len().min(BUCKET_BYTES)]
}

/// `topic id | bucket length | bucket`: every entry of the bucket, in (partition, offset) order.
fn bucket_prefix(topic_id: u32, bucket: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 1 + bucket.len() + 12);
    key.extend_from_slice(&topic_id.to_be_bytes());
    // A bucket is at most BUCKET_BYTES long.
    key.push(bucket.len().min(BUCKET_BYTES) as u8);
    key.extend_from_slice(bucket);
    key
}

fn entry_key(topic_id: u32, bucket: &[u8], partition: u32, first: u64) -> Vec<u8> {
    let mut key = bucket_prefix(topic_id, bucket);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// The distinct buckets of `keys`, sorted.
pub(crate) fn distinct_buckets<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    let mut buckets: Vec<&[u8]> = keys.map(|key| bucket(key_group(key))).collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// Index entries of one stored batch, for `batch.insert` or `batch.remove`.
pub(crate) fn entries<'a>(
    topic_id: u32,
    partition: u32,
    first: u64,
    buckets: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = Vec<u8>> {
    buckets.into_iter().map(move |bucket| entry_key(topic_id, bucket, partition, first))
}

impl Inner {
    /// The records of `group` on the indexed topic `topic_id`, in (partition, offset) order; only
    /// records below each partition's visible end (`visible(partition)`), so never one a crash
    /// could take back. Batches retention deleted are skipped.
    pub(crate) fn lookup(
        &self,
        topic_id: u32,
        group: &[u8],
        visible: impl Fn(u32) -> u64,
    ) -> Result<Vec<StoredRecord>, EmbeddedError> {
        let prefix = bucket_prefix(topic_id, bucket(group));
        let mut out = Vec::new();
        for guard in self.ks.index.prefix(&prefix) {
            let key = guard.key()?;
            let tail = key.get(prefix.len()..).filter(|t| t.len() == 12);
            let Some(tail) = tail else {
                return Err(EmbeddedError::corrupt("index", "entry key of the wrong length"));
            };
            let (partition, first) = tail.split_at(4);
            let (partition, first) = (be_u32(partition, "index")?, be_u64(first, "index")?);
            let end = visible(partition);
            if first >= end {
                continue;
            }
            let batch_key = batch_key(topic_id, partition, first);
            // Retention deleted the batch (its entry goes in the same write batch; this is a
            // read between the two).
            let Some(value) = self.ks.records.get(batch_key)? else { continue };
            let stored = StoredBatch::decode(&batch_key, &value)?;
            for record in stored.records() {
                let (offset, key, value) = record?;
                if offset < end && key_group(key) == group {
                    out.push(StoredRecord {
                        offset,
                        key: key.to_vec(),
                        value: value.to_vec(),
                        timestamp_ms: stored.timestamp_ms,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_end_at_the_separator_and_buckets_keep_the_millisecond() {
        assert_eq!(key_group(b"n1\x1fe1"), b"n1");
        assert_eq!(key_group(b"n1"), b"n1");
        assert_eq!(key_group(b"\x1fe"), b"");
        assert_eq!(bucket(b"01a217b2-fa1c-713d-8825-cbc420a7243b"), b"01a217b2-fa1c");
        assert_eq!(bucket(b"short"), b"short");
        let keys: [&[u8]; 5] = [b"b\x1f1", b"a\x1f1", b"b\x1f2", b"a", b"c\x1f"];
        assert_eq!(distinct_buckets(keys.into_iter()), [&b"a"[..], b"b", b"c"]);
        let same_ms: [&[u8]; 2] = [b"01a217b2-fa1c-7aaa\x1fe", b"01a217b2-fa1c-7bbb\x1fe"];
        assert_eq!(distinct_buckets(same_ms.into_iter()), [&b"01a217b2-fa1c"[..]]);
    }

    #[test]
    fn entry_keys_of_one_bucket_share_its_prefix_and_no_other() {
        let a = entry_key(1, b"ab", 3, 7);
        assert!(a.starts_with(&bucket_prefix(1, b"ab")));
        // A bucket that extends another does not fall under its prefix: the length comes first.
        let longer = entry_key(1, b"abc", 0, 0);
        assert!(!longer.starts_with(&bucket_prefix(1, b"ab")));
    }
}
