//! The topic log on fjall.
//!
//! # Storage
//! - `records`: one entry per *stored batch* (as Kafka does): the records of one append part for
//!   one partition, split only when larger than [`MAX_BATCH_BYTES`] (64 KiB). Key `topic id |
//!   partition | first offset`, all big-endian, so a partition is one contiguous key range in
//!   offset order and a read is a range scan (plus, when it starts inside a batch, one look at the
//!   batch before).
//!   Value (format 1, all integers big-endian):
//!
//!   ```text
//!   version = 1 (u8) | record count (u32, ≥ 1) | append timestamp ms (u64)
//!   then per record: key length (u32) | key | value length (u32) | value
//!   ```
//!
//!   A value whose first byte is 0 is the earlier one-record format (`timestamp ms (u64) | key
//!   length (u32) | key | value`; a big-endian timestamp starts with a zero byte until the year
//!   2.2 million), read as a batch of one, so data directories written before batches still open.
//! - `topics`: name → id and partition count, written durably when the topic is created.
//! - `offsets`: `topic id | partition | group` → the group's next offset.
//! - `log_starts`: `topic id | partition` → first offset retention kept (always a batch's first
//!   offset).
//!
//! # Promises (on top of [`herald_schemas::topic`]'s contract)
//! - Offsets are assigned under a per-partition lock that is held until the batch is written, so
//!   a partition's records are written in offset order and a part's records are consecutive.
//!   Several parts (and partitions, and topics) of one `append` go in one atomic write batch.
//! - A partition's *visible end* moves only once the records below it are durable (after the group
//!   commit), and readers never read past it: a reader never sees a record that a crash could take
//!   back, and never sees a hole. Reads start exactly at the offset asked for, even inside a
//!   stored batch.
//! - End offsets are kept in memory and recovered on open from the last batch of each partition
//!   (its first offset + its record count), or the retention start if retention emptied it.
//! - Retention deletes whole stored batches: a batch holding any record a group has not consumed
//!   is kept whole.
//! - Bytes that do not decode are reported as [`EmbeddedError::Corrupt`], never a panic.
//! - [`TopicLog::read`] waits on the partition's end (a `watch` channel), never polls.
//! - [`TopicLog::commit`] is durable before it returns (it shares the group commit); a group's
//!   offsets are what retention respects.

use super::EmbeddedError;
use super::db::{EmbeddedDb, EmbeddedOptions, Inner, Keyspaces, hold, now_ms};
use super::index;
use async_trait::async_trait;
use herald_schemas::topic::{Append, Commit, LogError, Record, StoredRecord, TopicLog, validate_topic_name};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Stored batches deleted per write batch during retention.
const RETENTION_CHUNK: usize = 10_000;

/// First byte of a stored batch whose records follow the header as they are (written before
/// compression; still read).
const BATCH_FORMAT: u8 = 1;
/// First byte of a stored batch in the current format: the records after the header are LZ4
/// compressed (size-prepended block). Topic records repeat field names and ids, and every stored
/// byte passes through fjall's journal under its single writer lock, so fewer bytes there is
/// more throughput for the whole process.
const BATCH_FORMAT_LZ4: u8 = 2;
/// First byte of a value in the one-record format used before batches.
const LEGACY_FORMAT: u8 = 0;
/// `version (u8) | record count (u32) | timestamp (u64)`.
const BATCH_HEADER: usize = 1 + 4 + 8;
/// Key length and value length in front of each record of a batch.
const RECORD_HEADER: usize = 4 + 4;
/// An append part larger than this is stored as several batches (a record larger than this gets
/// a batch of its own). Bounds what a read from the middle of a batch decodes for nothing, and
/// what retention keeps beyond the committed offset. 64 KiB already spreads the per-entry cost of
/// fjall over a few hundred records of typical size; larger batches measured no faster in
/// `herald bench` and raised its peak memory.
const MAX_BATCH_BYTES: usize = 64 << 10;
/// The largest stored value (lengths are u32 on disk, and in fjall).
const MAX_VALUE_BYTES: usize = u32::MAX as usize;

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    id: u32,
    partitions: u32,
    created_at_ms: u64,
}

/// A topic as the log keeps it in memory.
pub(crate) struct TopicState {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) partitions: Vec<Arc<PartitionState>>,
    /// Appends write key-index entries (see `index.rs`).
    pub(crate) indexed: bool,
}

impl TopicState {
    fn partition(&self, partition: u32) -> Result<&Arc<PartitionState>, LogError> {
        self.partitions.get(partition as usize).ok_or_else(|| LogError::NoSuchPartition {
            topic: self.name.clone(),
            partition,
            partitions: self.partition_count(),
        })
    }

    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }
}

/// One partition's offsets.
pub(crate) struct PartitionState {
    /// The offset the next appended record gets. Held while a batch for the partition is written.
    next: Mutex<u64>,
    /// End of durable records: what readers may see.
    visible: watch::Sender<u64>,
    /// First offset retention kept; reads from below it start here.
    start: AtomicU64,
}

impl PartitionState {
    fn new(start: u64, end: u64) -> PartitionState {
        PartitionState { next: Mutex::new(end), visible: watch::Sender::new(end), start: AtomicU64::new(start) }
    }

    fn visible_end(&self) -> u64 {
        *self.visible.borrow()
    }

    fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Called once records below `end` are durable; wakes waiting readers. Ends only grow, so a
    /// late publication of an earlier batch is a no-op.
    fn publish(&self, end: u64) {
        self.visible.send_if_modified(|visible| {
            if end > *visible {
                *visible = end;
                true
            } else {
                false
            }
        });
    }
}

fn partition_prefix(topic_id: u32, partition: u32) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..].copy_from_slice(&partition.to_be_bytes());
    key
}

/// Key of the stored batch whose first record is at `offset`.
pub(crate) fn batch_key(topic_id: u32, partition: u32, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&partition_prefix(topic_id, partition));
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn offset_key(topic_id: u32, partition: u32, group: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + group.len());
    key.extend_from_slice(&partition_prefix(topic_id, partition));
    key.extend_from_slice(group.as_bytes());
    key
}

pub(crate) fn be_u64(bytes: &[u8], what: &'static str) -> Result<u64, EmbeddedError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EmbeddedError::corrupt(what, format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

pub(crate) fn be_u32(bytes: &[u8], what: &'static str) -> Result<u32, EmbeddedError> {
    let array: [u8; 4] = bytes
        .try_into()
        .map_err(|_| EmbeddedError::corrupt(what, format!("expected 4 bytes, found {}", bytes.len())))?;
    Ok(u32::from_be_bytes(array))
}

/// The first offset in a `records` key.
fn first_offset_of(batch_key: &[u8]) -> Result<u64, EmbeddedError> {
    match batch_key.get(8..) {
        Some(tail) => be_u64(tail, "records"),
        None => Err(EmbeddedError::corrupt("records", "key shorter than 16 bytes")),
    }
}

/// Bytes a record takes in a stored batch.
fn stored_len(record: &Record) -> usize {
    RECORD_HEADER.saturating_add(record.key.len()).saturating_add(record.value.len())
}

/// How many of `records` (at least one) go in the next stored batch.
fn next_batch_len(records: &[Record]) -> usize {
    let mut bytes = BATCH_HEADER;
    for (taken, record) in records.iter().enumerate() {
        bytes = bytes.saturating_add(stored_len(record));
        if bytes > MAX_BATCH_BYTES && taken > 0 {
            return taken;
        }
    }
    records.len()
}

/// Encodes `records` (at most [`MAX_BATCH_BYTES`] of them, or one larger record that
/// [`check_record_sizes`] let through) as one stored batch.
fn encode_batch(timestamp_ms: u64, records: &[Record]) -> Vec<u8> {
    let compressed = lz4_flex::compress_prepend_size(&encode_records(records));
    let mut out = Vec::with_capacity(BATCH_HEADER + compressed.len());
    batch_header(&mut out, BATCH_FORMAT_LZ4, records.len(), timestamp_ms);
    out.extend_from_slice(&compressed);
    out
}

fn batch_header(out: &mut Vec<u8>, format: u8, count: usize, timestamp_ms: u64) {
    out.push(format);
    // Exact: a batch holds far fewer than 2^32 records (each takes ≥ 8 bytes of at most
    // `MAX_BATCH_BYTES`, or is alone).
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
}

/// The records of a batch, each as `key len | key | value len | value`.
fn encode_records(records: &[Record]) -> Vec<u8> {
    let size = records.iter().fold(0usize, |size, record| size.saturating_add(stored_len(record)));
    let mut body = Vec::with_capacity(size);
    // Exact casts: `check_record_sizes` bounds every length.
    for record in records {
        body.extend_from_slice(&(record.key.len() as u32).to_be_bytes());
        body.extend_from_slice(&record.key);
        body.extend_from_slice(&(record.value.len() as u32).to_be_bytes());
        body.extend_from_slice(&record.value);
    }
    body
}

/// Refuses a record whose stored batch would not fit fjall's (and our) 32-bit value length.
fn check_record_sizes(parts: &[Append]) -> Result<(), LogError> {
    for part in parts {
        for record in &part.records {
            let size = BATCH_HEADER.saturating_add(stored_len(record));
            if size > MAX_VALUE_BYTES {
                return Err(LogError::Backend(format!(
                    "a record of {size} bytes for {}/{} is larger than the embedded log's limit of {MAX_VALUE_BYTES}",
                    part.topic, part.partition
                )));
            }
        }
    }
    Ok(())
}

/// Reads big-endian fields off the front of a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, tail) = self.bytes.split_first_chunk::<4>()?;
        self.bytes = tail;
        Some(u32::from_be_bytes(*head))
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, tail) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = tail;
        Some(u64::from_be_bytes(*head))
    }
}

/// One stored batch, decoded lazily from its key and value: the header at once, the records as
/// they are iterated.
pub(crate) struct StoredBatch<'a> {
    first: u64,
    count: u32,
    pub(crate) timestamp_ms: u64,
    legacy: bool,
    /// The records, after the header (decompressed when stored compressed).
    body: Cow<'a, [u8]>,
}

impl<'a> StoredBatch<'a> {
    pub(crate) fn decode(key: &[u8], value: &'a [u8]) -> Result<StoredBatch<'a>, EmbeddedError> {
        let first = first_offset_of(key)?;
        let corrupt = |detail: &str| EmbeddedError::corrupt("records", format!("batch at offset {first}: {detail}"));
        let mut cursor = Cursor { bytes: value };
        let (count, timestamp_ms, legacy, compressed) = match value.first().copied() {
            Some(format @ (BATCH_FORMAT | BATCH_FORMAT_LZ4)) => {
                cursor.take(1);
                let count = cursor.u32().ok_or_else(|| corrupt("value shorter than its header"))?;
                let timestamp_ms = cursor.u64().ok_or_else(|| corrupt("value shorter than its header"))?;
                if count == 0 {
                    return Err(corrupt("holds no records"));
                }
                (count, timestamp_ms, false, format == BATCH_FORMAT_LZ4)
            }
            Some(LEGACY_FORMAT) => {
                let timestamp_ms = cursor.u64().ok_or_else(|| corrupt("value shorter than its header"))?;
                (1, timestamp_ms, true, false)
            }
            Some(version) => return Err(corrupt(&format!("unknown format {version}"))),
            None => return Err(corrupt("empty value")),
        };
        if first.checked_add(u64::from(count)).is_none() {
            return Err(corrupt(&format!("{count} records overflow the offsets")));
        }
        let body = if compressed {
            // A corrupt size prefix must not make us allocate without bound: LZ4 expands at most
            // about 255 times.
            let declared = cursor.bytes.first_chunk::<4>().map(|b| u32::from_le_bytes(*b) as usize);
            let bound = cursor.bytes.len().saturating_mul(255).saturating_add(64);
            if declared.is_none_or(|n| n > bound) {
                return Err(corrupt("compressed records declare an impossible size"));
            }
            let body = lz4_flex::decompress_size_prepended(cursor.bytes)
                .map_err(|e| corrupt(&format!("compressed records do not decompress: {e}")))?;
            Cow::Owned(body)
        } else {
            Cow::Borrowed(cursor.bytes)
        };
        Ok(StoredBatch { first, count, timestamp_ms, legacy, body })
    }

    /// The offset after the batch's last record.
    fn end(&self) -> u64 {
        // `decode` checked this does not overflow.
        self.first + u64::from(self.count)
    }

    /// The batch's records from its first on.
    pub(crate) fn records(&self) -> BatchRecords<'_> {
        BatchRecords {
            first: self.first,
            next: self.first,
            left: self.count,
            legacy: self.legacy,
            cursor: Cursor { bytes: &self.body },
        }
    }

    /// Appends the batch's records in `[from, upto)` to `out` until it holds `max`.
    fn read_into(&self, from: u64, upto: u64, max: usize, out: &mut Vec<StoredRecord>) -> Result<(), EmbeddedError> {
        for record in self.records() {
            let (offset, key, value) = record?;
            if offset >= upto || out.len() >= max {
                break;
            }
            if offset >= from {
                out.push(StoredRecord {
                    offset,
                    key: key.to_vec(),
                    value: value.to_vec(),
                    timestamp_ms: self.timestamp_ms,
                });
            }
        }
        Ok(())
    }
}

/// The records of a [`StoredBatch`] as `(offset, key, value)`; stops after the first error.
pub(crate) struct BatchRecords<'a> {
    first: u64,
    next: u64,
    left: u32,
    legacy: bool,
    cursor: Cursor<'a>,
}

impl<'a> BatchRecords<'a> {
    fn decode_next(&mut self) -> Result<(&'a [u8], &'a [u8]), EmbeddedError> {
        let (first, offset) = (self.first, self.next);
        let short =
            || EmbeddedError::corrupt("records", format!("batch at offset {first}: record {offset} is truncated"));
        let key_len = self.cursor.u32().ok_or_else(short)? as usize;
        let key = self.cursor.take(key_len).ok_or_else(short)?;
        let value = if self.legacy {
            std::mem::take(&mut self.cursor.bytes)
        } else {
            let value_len = self.cursor.u32().ok_or_else(short)? as usize;
            self.cursor.take(value_len).ok_or_else(short)?
        };
        if self.left == 1 && !self.cursor.bytes.is_empty() {
            return Err(EmbeddedError::corrupt(
                "records",
                format!("batch at offset {first}: {} bytes after its last record", self.cursor.bytes.len()),
            ));
        }
        Ok((key, value))
    }
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = Result<(u64, &'a [u8], &'a [u8]), EmbeddedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        match self.decode_next() {
            Ok((key, value)) => {
                let offset = self.next;
                self.left -= 1;
                self.next += 1;
                Some(Ok((offset, key, value)))
            }
            Err(error) => {
                self.left = 0;
                Some(Err(error))
            }
        }
    }
}

/// Rebuilds the in-memory topics from disk: metadata, then each partition's start and end.
pub(crate) fn recover_topics(
    ks: &Keyspaces,
    options: &EmbeddedOptions,
) -> Result<HashMap<String, Arc<TopicState>>, EmbeddedError> {
    let mut topics = HashMap::new();
    for guard in ks.topics.iter() {
        let (name, meta) = guard.into_inner()?;
        let name = String::from_utf8(name.to_vec()).map_err(|e| EmbeddedError::corrupt("topics", e.to_string()))?;
        let meta: TopicMeta =
            serde_json::from_slice(&meta).map_err(|e| EmbeddedError::corrupt("topics", format!("{name}: {e}")))?;
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for partition in 0..meta.partitions {
            let prefix = partition_prefix(meta.id, partition);
            let start = match ks.log_starts.get(prefix)? {
                Some(bytes) => be_u64(&bytes, "log_starts")?,
                None => 0,
            };
            let end = match ks.records.prefix(prefix).next_back() {
                Some(guard) => {
                    let (key, value) = guard.into_inner()?;
                    StoredBatch::decode(&key, &value)?.end().max(start)
                }
                None => start,
            };
            tracing::debug!(topic = %name, partition, start, end, "recovered partition");
            partitions.push(Arc::new(PartitionState::new(start, end)));
        }
        let indexed = options.indexes(&name);
        topics.insert(name.clone(), Arc::new(TopicState { id: meta.id, name, partitions, indexed }));
    }
    Ok(topics)
}

/// A stored batch ready to write: record count, value, and the key buckets to index (none when
/// the topic is not indexed).
type EncodedBatch<'a> = (u64, Vec<u8>, Vec<&'a [u8]>);

/// One part of an append, resolved to its partition.
struct ResolvedPart {
    topic_id: u32,
    indexed: bool,
    partition: u32,
    state: Arc<PartitionState>,
    records: Vec<Record>,
}

impl Inner {
    fn topic(&self, name: &str) -> Option<Arc<TopicState>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    fn resolve(&self, name: &str) -> Result<Arc<TopicState>, LogError> {
        match self.topic(name) {
            Some(topic) => Ok(topic),
            None => {
                validate_topic_name(name)?;
                Err(LogError::UnknownTopic(name.to_string()))
            }
        }
    }

    /// Appends `parts` and writes the consumer offsets `commits` (key, next offset) in one batch:
    /// each part becomes one stored batch (several if larger than [`MAX_BATCH_BYTES`]), written
    /// under the partitions' locks (taken in key order, so concurrent appends cannot deadlock).
    /// Queues the write for the group commit, which publishes the new ends once durable. Returns
    /// each part's first offset.
    fn write_appends(
        &self,
        parts: Vec<ResolvedPart>,
        commits: Vec<(Vec<u8>, u64)>,
    ) -> Result<(Vec<u64>, super::commit::Ticket), EmbeddedError> {
        // A stored batch does not depend on its offsets: encode before taking the locks.
        let timestamp_ms = now_ms();
        let encoded: Vec<Vec<EncodedBatch>> = parts
            .iter()
            .map(|part| {
                let mut stored = Vec::new();
                let mut rest = part.records.as_slice();
                while !rest.is_empty() {
                    let (records, tail) = rest.split_at(next_batch_len(rest));
                    let buckets = match part.indexed {
                        true => index::distinct_buckets(records.iter().map(|r| r.key.as_slice())),
                        false => Vec::new(),
                    };
                    stored.push((records.len() as u64, encode_batch(timestamp_ms, records), buckets));
                    rest = tail;
                }
                stored
            })
            .collect();

        let mut order: Vec<(u32, u32, &Arc<PartitionState>)> =
            parts.iter().map(|p| (p.topic_id, p.partition, &p.state)).collect();
        order.sort_by_key(|(topic, partition, _)| (*topic, *partition));
        order.dedup_by_key(|(topic, partition, _)| (*topic, *partition));
        let mut guards: Vec<_> = order.iter().map(|(_, _, state)| hold(&state.next)).collect();
        let mut next: Vec<u64> = guards.iter().map(|guard| **guard).collect();

        let mut batch = self.db.batch();
        let mut firsts = Vec::with_capacity(parts.len());
        for (part, stored) in parts.iter().zip(encoded) {
            let slot = order
                .binary_search_by_key(&(part.topic_id, part.partition), |(topic, partition, _)| (*topic, *partition))
                .map_err(|_| EmbeddedError::corrupt("records", "append part lost its partition lock"))?;
            firsts.push(next[slot]);
            for (count, value, buckets) in stored {
                let first = next[slot];
                batch.insert(&self.ks.records, batch_key(part.topic_id, part.partition, first), value);
                for entry in index::entries(part.topic_id, part.partition, first, buckets) {
                    batch.insert(&self.ks.index, entry, []);
                }
                next[slot] += count;
            }
        }
        for (key, next_offset) in commits {
            batch.insert(&self.ks.offsets, key, next_offset.to_be_bytes());
        }
        super::db::commit(batch)?;
        for (guard, end) in guards.iter_mut().zip(&next) {
            **guard = *end;
        }
        let publish: Vec<(Arc<PartitionState>, u64)> =
            order.iter().zip(&next).map(|((_, _, state), end)| (Arc::clone(state), *end)).collect();
        let ticket = self.committer().enqueue(Some(Box::new(move || {
            for (state, end) in publish {
                state.publish(end);
            }
        })))?;
        drop(guards);
        Ok((firsts, ticket))
    }

    /// Records of one partition in `[from, upto)`, at most `max`, from `from` exactly when it
    /// exists (when retention deleted it, from the first record that exists). `upto` must not be
    /// past the visible end.
    fn scan(
        &self,
        topic_id: u32,
        partition: u32,
        from: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, EmbeddedError> {
        let span = usize::try_from(upto.saturating_sub(from)).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(max.min(span));
        if max == 0 || from >= upto {
            return Ok(out);
        }
        let mut batches =
            self.ks.records.range(batch_key(topic_id, partition, from)..batch_key(topic_id, partition, upto));
        let first = batches.next().map(fjall::Guard::into_inner).transpose()?;
        // The offset the next record must have; before any record is out, retention may have
        // left a gap (it deletes a prefix), after that a gap is a hole.
        let mut expected = from;
        let starts_at_from = match &first {
            Some((key, _)) => first_offset_of(key)? == from,
            None => false,
        };
        if !starts_at_from {
            // `from` is inside an earlier batch: the last one starting below it.
            let before = batch_key(topic_id, partition, 0)..batch_key(topic_id, partition, from);
            if let Some(guard) = self.ks.records.range(before).next_back() {
                let (key, value) = guard.into_inner()?;
                let batch = StoredBatch::decode(&key, &value)?;
                if batch.end() > from {
                    batch.read_into(from, upto, max, &mut out)?;
                    expected = batch.end();
                }
            }
        }
        for item in first.into_iter().map(Ok).chain(batches.map(fjall::Guard::into_inner)) {
            if out.len() >= max || expected >= upto {
                break;
            }
            let (key, value) = item?;
            let batch = StoredBatch::decode(&key, &value)?;
            if batch.first < expected || (batch.first > expected && !out.is_empty()) {
                return Err(EmbeddedError::corrupt(
                    "records",
                    format!("batch at offset {} where offset {expected} was expected", batch.first),
                ));
            }
            batch.read_into(from, upto, max, &mut out)?;
            expected = batch.end();
        }
        Ok(out)
    }

    /// Each group's committed offsets on `topic`, one slot per partition (0 where it never
    /// committed).
    fn group_positions(&self, topic: &TopicState) -> Result<HashMap<Vec<u8>, Vec<u64>>, EmbeddedError> {
        let mut groups: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
        for guard in self.ks.offsets.prefix(topic.id.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            let (Some(partition), Some(group)) = (key.get(4..8), key.get(8..)) else {
                return Err(EmbeddedError::corrupt("offsets", "key shorter than 8 bytes"));
            };
            let partition = be_u32(partition, "offsets")? as usize;
            let offset = be_u64(&value, "offsets")?;
            let slots = groups.entry(group.to_vec()).or_insert_with(|| vec![0; topic.partitions.len()]);
            if let Some(slot) = slots.get_mut(partition) {
                *slot = offset;
            }
        }
        Ok(groups)
    }

    /// See [`EmbeddedDb::apply_retention`].
    pub(crate) fn apply_log_retention(&self, now_ms: u64) -> Result<u64, EmbeddedError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let topics: Vec<Arc<TopicState>> =
            self.topics.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        let mut deleted = 0;
        for topic in topics {
            let retention = match topic.indexed {
                true => self.options.retention.max(self.options.indexed_retention),
                false => self.options.retention,
            };
            let cutoff = now_ms.saturating_sub(millis(retention));
            let groups = self.group_positions(&topic)?;
            for (index, state) in topic.partitions.iter().enumerate() {
                let consumed = groups.values().map(|slots| slots.get(index).copied().unwrap_or(0)).min();
                let bound = match (consumed, topic.indexed) {
                    (Some(consumed), _) => consumed.min(state.visible_end()),
                    // An indexed topic is a store of its own: with no consumer, age alone decides.
                    (None, true) => state.visible_end(),
                    // A topic no group ever committed on keeps everything.
                    (None, false) => continue,
                };
                let trimmed = self.trim_partition(&topic, index as u32, state, bound, cutoff)?;
                if trimmed > 0 {
                    tracing::debug!(topic = %topic.name, partition = index, records = trimmed, start = state.start(), "retention trimmed partition");
                }
                deleted += trimmed;
            }
        }
        Ok(deleted)
    }

    /// Deletes the partition's stored batches from its start while all their records are below
    /// `bound` (a batch straddling it is kept whole), stopping at the first one appended after
    /// `cutoff`; moves the partition's start past what it deleted. Returns the records deleted.
    fn trim_partition(
        &self,
        topic: &TopicState,
        partition: u32,
        state: &PartitionState,
        bound: u64,
        cutoff: u64,
    ) -> Result<u64, EmbeddedError> {
        let start = state.start();
        if bound <= start {
            return Ok(0);
        }
        let prefix = partition_prefix(topic.id, partition);
        let mut deleted = 0;
        let mut new_start = start;
        let mut batch = self.db.batch();
        let flush = |batch: fjall::OwnedWriteBatch, new_start: u64| -> Result<(), EmbeddedError> {
            let mut batch = batch;
            batch.insert(&self.ks.log_starts, prefix, new_start.to_be_bytes());
            super::db::commit(batch)?;
            state.start.store(new_start, Ordering::Release);
            Ok(())
        };
        for guard in self.ks.records.range(batch_key(topic.id, partition, start)..batch_key(topic.id, partition, bound))
        {
            let (key, value) = guard.into_inner()?;
            let stored = StoredBatch::decode(&key, &value)?;
            if stored.end() > bound || stored.timestamp_ms > cutoff {
                break;
            }
            new_start = stored.end();
            if topic.indexed {
                let keys: Vec<&[u8]> = stored.records().map(|r| r.map(|(_, key, _)| key)).collect::<Result<_, _>>()?;
                for entry in
                    index::entries(topic.id, partition, stored.first, index::distinct_buckets(keys.into_iter()))
                {
                    batch.remove(&self.ks.index, entry);
                }
            }
            batch.remove(&self.ks.records, key);
            deleted += u64::from(stored.count);
            if batch.len() >= RETENTION_CHUNK {
                flush(std::mem::replace(&mut batch, self.db.batch()), new_start)?;
            }
        }
        if !batch.is_empty() {
            flush(batch, new_start)?;
        }
        Ok(deleted)
    }
}

/// Parts and commits resolved against the topic metadata, ready for one write batch.
type ResolvedWrite = (Vec<ResolvedPart>, Vec<(Vec<u8>, u64)>);

impl EmbeddedDb {
    /// The records of an indexed topic whose key starts with `group` (see `index.rs`), in
    /// (partition, offset) order, only those durable and visible to readers.
    pub(crate) async fn lookup_group(&self, topic: &str, group: &[u8]) -> Result<Vec<StoredRecord>, EmbeddedError> {
        // A topic not created yet holds nothing.
        let Some(topic) = self.inner.topic(topic) else { return Ok(Vec::new()) };
        if !topic.indexed {
            return Err(EmbeddedError::InvalidOptions(format!("topic {} is not indexed", topic.name)));
        }
        let visible = |partition: u32| topic.partitions.get(partition as usize).map_or(0, |p| p.visible_end());
        self.call(|inner| inner.lookup(topic.id, group, visible)).await
    }

    /// Checks and resolves an append; `None` when there is nothing to write.
    fn resolve_write(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<Option<ResolvedWrite>, LogError> {
        check_record_sizes(&parts)?;
        let mut resolved = Vec::with_capacity(parts.len());
        for part in parts {
            let topic = self.inner.resolve(&part.topic)?;
            let state = Arc::clone(topic.partition(part.partition)?);
            resolved.push(ResolvedPart {
                topic_id: topic.id,
                indexed: topic.indexed,
                partition: part.partition,
                state,
                records: part.records,
            });
        }
        let mut offsets = Vec::with_capacity(commits.len());
        for c in commits {
            let topic = self.inner.resolve(&c.topic)?;
            topic.partition(c.partition)?;
            offsets.push((offset_key(topic.id, c.partition, &c.group), c.next_offset));
        }
        if resolved.is_empty() && offsets.is_empty() {
            return Ok(None);
        }
        Ok(Some((resolved, offsets)))
    }
}

#[async_trait]
impl TopicLog for EmbeddedDb {
    /// `partitions == 0` means [`super::EmbeddedOptions::default_partitions`] when creating, and
    /// "whatever it has" when the topic exists.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        validate_topic_name(topic)?;
        let state = match self.inner.topic(topic) {
            Some(state) => state,
            None => {
                let name = topic.to_string();
                let requested = if partitions == 0 { self.inner.options.default_partitions } else { partitions };
                self.write_durable(move |inner| {
                    let _serial = hold(&inner.locks.topics);
                    if let Some(existing) = inner.topic(&name) {
                        return Ok((existing, inner.committer().enqueue(None)?));
                    }
                    let id = inner
                        .topics
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .map(|t| t.id)
                        .max()
                        .unwrap_or(0)
                        .checked_add(1)
                        .ok_or_else(|| EmbeddedError::corrupt("topics", "topic ids exhausted"))?;
                    let meta = TopicMeta { id, partitions: requested, created_at_ms: now_ms() };
                    let meta =
                        serde_json::to_vec(&meta).map_err(|e| EmbeddedError::corrupt("topics", e.to_string()))?;
                    let mut batch = inner.db.batch();
                    batch.insert(&inner.ks.topics, name.as_bytes(), meta);
                    let ticket = inner.commit_batch(batch, None)?;
                    // Records appended from now on follow the metadata in the journal, so any
                    // persist covering them covers the topic too.
                    let partitions = (0..requested).map(|_| Arc::new(PartitionState::new(0, 0))).collect();
                    let indexed = inner.options.indexes(&name);
                    let state = Arc::new(TopicState { id, name: name.clone(), partitions, indexed });
                    inner
                        .topics
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.clone(), Arc::clone(&state));
                    tracing::info!(topic = %name, partitions = requested, "topic created");
                    Ok((state, ticket))
                })
                .await?
            }
        };
        let existing = state.partition_count();
        if partitions != 0 && partitions != existing {
            return Err(LogError::PartitionMismatch { topic: topic.to_string(), existing, requested: partitions });
        }
        Ok(existing)
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.inner.resolve(topic)?.partition_count())
    }

    async fn append(&self, parts: Vec<Append>) -> Result<Vec<u64>, LogError> {
        self.append_and_commit(parts, Vec::new()).await
    }

    /// One write batch and one group-commit fsync for the records and the offsets.
    async fn append_and_commit(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<Vec<u64>, LogError> {
        let Some((resolved, offsets)) = self.resolve_write(parts, commits)? else { return Ok(Vec::new()) };
        Ok(self.write_durable(move |inner| inner.write_appends(resolved, offsets)).await?)
    }

    /// The same single write, queued for the next group commit but not waited for. Readers see
    /// the records once that commit made them durable, so nothing downstream acts on a record a
    /// crash could take back.
    async fn append_and_commit_ordered(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<(), LogError> {
        let Some((resolved, offsets)) = self.resolve_write(parts, commits)? else { return Ok(()) };
        // The ticket is dropped: the committer still persists the write and publishes the records.
        let (_firsts, _ticket) = self.write_queued(move |inner| inner.write_appends(resolved, offsets)).await?;
        Ok(())
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let topic = self.inner.resolve(topic)?;
        let state = topic.partition(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut ends = state.visible.subscribe();
        // Offsets retention deleted are skipped: the read starts at what exists.
        let from = from.max(state.start());
        let end = *ends.borrow_and_update();
        let end = if end > from {
            end
        } else {
            match tokio::time::timeout(wait, ends.wait_for(|end| *end > from)).await {
                Ok(Ok(end)) => *end,
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_elapsed) => return Ok(Vec::new()),
            }
        };
        let upto = end.min(from.saturating_add(max as u64));
        let (topic_id, partition) = (topic.id, partition);
        Ok(self.call(move |inner| inner.scan(topic_id, partition, from, upto, max)).await?)
    }

    /// One write batch, not waiting for the group commit: the next persist covers it.
    async fn commit_ordered(&self, commits: Vec<Commit>) -> Result<(), LogError> {
        let mut offsets = Vec::with_capacity(commits.len());
        for c in commits {
            let topic = self.inner.resolve(&c.topic)?;
            topic.partition(c.partition)?;
            offsets.push((offset_key(topic.id, c.partition, &c.group), c.next_offset));
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.call(move |inner| {
            let mut batch = inner.db.batch();
            for (key, next_offset) in offsets {
                batch.insert(&inner.ks.offsets, key, next_offset.to_be_bytes());
            }
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }

    async fn commit(&self, group: &str, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError> {
        let topic = self.inner.resolve(topic)?;
        let state = topic.partition(partition)?;
        let end = state.visible_end();
        if next_offset > end {
            tracing::warn!(group, topic = %topic.name, partition, next_offset, end, "group committed past the end of the partition");
        }
        let key = offset_key(topic.id, partition, group);
        self.write_durable(move |inner| {
            let mut batch = inner.db.batch();
            batch.insert(&inner.ks.offsets, key, next_offset.to_be_bytes());
            Ok(((), inner.commit_batch(batch, None)?))
        })
        .await?;
        Ok(())
    }

    async fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.inner.resolve(topic)?;
        topic.partition(partition)?;
        let key = offset_key(topic.id, partition, group);
        Ok(self
            .call(move |inner| match inner.ks.offsets.get(key)? {
                Some(bytes) => be_u64(&bytes, "offsets"),
                None => Ok(0),
            })
            .await?)
    }

    /// The end of durable records (what readers can reach); an append in flight is not counted
    /// until it is durable.
    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.inner.resolve(topic)?;
        Ok(topic.partition(partition)?.visible_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::path::Path;
    use std::time::Instant;

    fn open(dir: &Path) -> EmbeddedDb {
        EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap()
    }

    fn rec(key: &str, value: impl Into<Vec<u8>>) -> Record {
        Record { key: key.as_bytes().to_vec(), value: value.into() }
    }

    fn part(topic: &str, partition: u32, records: Vec<Record>) -> Append {
        Append { topic: topic.to_string(), partition, records }
    }

    async fn read_all(db: &EmbeddedDb, topic: &str, partition: u32) -> Vec<StoredRecord> {
        let mut out = Vec::new();
        loop {
            let from = out.last().map_or(0, |r: &StoredRecord| r.offset + 1);
            let batch = db.read(topic, partition, from, 1000, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    #[tokio::test]
    async fn append_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert_eq!(db.ensure_topic("t", 2).await.unwrap(), 2);
        let firsts = db
            .append(vec![
                part("t", 0, vec![rec("a", "0"), rec("b", "1")]),
                part("t", 1, vec![rec("c", "x")]),
                part("t", 0, vec![rec("d", "2")]),
            ])
            .await
            .unwrap();
        assert_eq!(firsts, vec![0, 0, 2]);
        // An append returns only after a persist that covers it.
        let before = db.commit_stats();
        assert_eq!(db.append(vec![part("t", 0, vec![rec("e", "3")])]).await.unwrap(), vec![3]);
        let after = db.commit_stats();
        assert_eq!(after.waiters, before.waiters + 1);
        assert_eq!(after.syncs, before.syncs + 1);

        let read = db.read("t", 0, 0, 10, Duration::ZERO).await.unwrap();
        let values: Vec<&[u8]> = read.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(values, [b"0", b"1", b"2", b"3"]);
        assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(read[0].key, b"a");
        assert!(read[0].timestamp_ms > 0);
        assert_eq!(db.read("t", 0, 1, 2, Duration::ZERO).await.unwrap().len(), 2);
        assert_eq!(db.read("t", 0, 1, 2, Duration::ZERO).await.unwrap()[0].offset, 1);
        assert!(db.read("t", 0, 4, 10, Duration::ZERO).await.unwrap().is_empty());
        assert!(db.read("t", 0, 0, 0, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(db.end_offset("t", 0).await.unwrap(), 4);
        assert_eq!(db.end_offset("t", 1).await.unwrap(), 1);
        // An empty record list is no write, and reports where it would have started.
        assert_eq!(db.append(vec![part("t", 1, vec![])]).await.unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn topic_errors() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert!(matches!(db.ensure_topic("Bad_Name", 1).await, Err(LogError::InvalidName(_))));
        assert!(matches!(db.append(vec![part("nope", 0, vec![rec("k", "v")])]).await, Err(LogError::UnknownTopic(_))));
        assert!(matches!(db.read("Bad", 0, 0, 1, Duration::ZERO).await, Err(LogError::InvalidName(_))));
        db.ensure_topic("t", 3).await.unwrap();
        assert_eq!(db.ensure_topic("t", 3).await.unwrap(), 3);
        assert_eq!(db.ensure_topic("t", 0).await.unwrap(), 3);
        assert!(matches!(
            db.ensure_topic("t", 4).await,
            Err(LogError::PartitionMismatch { existing: 3, requested: 4, .. })
        ));
        assert!(matches!(
            db.append(vec![part("t", 3, vec![rec("k", "v")])]).await,
            Err(LogError::NoSuchPartition { partition: 3, partitions: 3, .. })
        ));
        assert!(matches!(db.commit("g", "t", 7, 1).await, Err(LogError::NoSuchPartition { .. })));
        assert_eq!(db.ensure_topic("d", 0).await.unwrap(), 8);
        assert_eq!(db.partition_count("d").await.unwrap(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appenders_get_unique_contiguous_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic("t", 2).await.unwrap();
        let (tasks, appends, per) = (32u64, 10u64, 5u64);
        let mut handles = Vec::new();
        for task in 0..tasks {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                let mut firsts = Vec::new();
                for n in 0..appends {
                    let records = (0..per).map(|i| rec(&format!("{task}"), format!("{task}:{n}:{i}"))).collect();
                    let first = db.append(vec![part("t", 0, records), part("t", 1, vec![rec("x", "y")])]).await;
                    firsts.push(first.unwrap()[0]);
                }
                firsts
            }));
        }
        let mut offsets = HashSet::new();
        for handle in handles {
            for first in handle.await.unwrap() {
                for i in 0..per {
                    assert!(offsets.insert(first + i), "offset {} given twice", first + i);
                }
            }
        }
        let total = tasks * appends * per;
        assert_eq!(offsets, (0..total).collect::<HashSet<_>>());
        assert_eq!(db.end_offset("t", 0).await.unwrap(), total);
        assert_eq!(db.end_offset("t", 1).await.unwrap(), tasks * appends);

        // Each task's records are in its own order, and each append's records are adjacent.
        let all = read_all(&db, "t", 0).await;
        assert_eq!(all.len() as u64, total);
        let mut last_seen: HashMap<String, (u64, u64)> = HashMap::new();
        for r in &all {
            let text = String::from_utf8(r.value.clone()).unwrap();
            let mut fields = text.split(':').map(|f| f.parse::<u64>().unwrap());
            let (task, n, i) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
            if let Some(prev) = last_seen.insert(task.to_string(), (n, i)) {
                assert!((n, i) > prev, "task {task} out of order");
            }
            assert_eq!(r.offset % per, i, "append split");
        }
        let stats = db.commit_stats();
        assert!(stats.syncs >= 1 && stats.syncs <= stats.waiters, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_waits_and_wakes_when_data_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic("t", 1).await.unwrap();

        let started = Instant::now();
        assert!(db.read("t", 0, 0, 10, Duration::from_millis(50)).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));

        let reader = {
            let db = db.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let records = db.read("t", 0, 0, 10, Duration::from_secs(10)).await.unwrap();
                (records, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        db.append(vec![part("t", 0, vec![rec("k", "v")])]).await.unwrap();
        let (records, waited) = reader.await.unwrap();
        assert_eq!(records.len(), 1);
        assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    }

    #[tokio::test]
    async fn data_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            db.ensure_topic("a", 2).await.unwrap();
            db.ensure_topic("b", 1).await.unwrap();
            db.append(vec![part("a", 1, vec![rec("k", "1"), rec("k", "2")]), part("b", 0, vec![rec("k", "3")])])
                .await
                .unwrap();
            db.commit("g", "a", 1, 1).await.unwrap();
            db.persist().unwrap();
        }
        let db = open(dir.path());
        assert_eq!(db.partition_count("a").await.unwrap(), 2);
        assert_eq!(db.end_offset("a", 0).await.unwrap(), 0);
        assert_eq!(db.end_offset("a", 1).await.unwrap(), 2);
        assert_eq!(db.end_offset("b", 0).await.unwrap(), 1);
        assert_eq!(db.committed("g", "a", 1).await.unwrap(), 1);
        assert_eq!(db.committed("g", "a", 0).await.unwrap(), 0);
        assert_eq!(db.committed("other", "a", 1).await.unwrap(), 0);
        assert_eq!(read_all(&db, "a", 1).await.iter().map(|r| r.value.clone()).collect::<Vec<_>>(), [b"1", b"2"]);
        // New topics after reopen do not reuse ids.
        db.ensure_topic("c", 1).await.unwrap();
        assert!(read_all(&db, "c", 0).await.is_empty());
        assert_eq!(db.append(vec![part("a", 1, vec![rec("k", "4")])]).await.unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let err = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap_err();
        assert!(matches!(err, EmbeddedError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("use its HTTP API"));
        drop(db);
        open(dir.path());
    }

    #[tokio::test]
    async fn retention_deletes_only_consumed_and_old_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            db.ensure_topic("t", 2).await.unwrap();
            db.ensure_topic("lonely", 1).await.unwrap();
            // One stored batch per record (one part each), so retention can stop at any offset.
            let records =
                |topic: &'static str, partition| (0..10).map(move |i| part(topic, partition, vec![rec("k", vec![i])]));
            db.append(records("t", 0).chain(records("t", 1)).chain(records("lonely", 0)).collect()).await.unwrap();
            db.commit("fast", "t", 0, 8).await.unwrap();
            db.commit("slow", "t", 0, 5).await.unwrap();
            db.commit("fast", "t", 1, 10).await.unwrap();
            // Everything is younger than the default hour: nothing goes.
            assert_eq!(db.apply_retention().unwrap(), 0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let options = EmbeddedOptions { retention: Duration::ZERO, ..EmbeddedOptions::default() };
        let db = EmbeddedDb::open(dir.path(), options.clone()).unwrap();
        // Partition 0: min over groups is 5. Partition 1: "slow" never committed there, so 0.
        // "lonely": no group ever committed, keep all.
        assert_eq!(db.apply_retention().unwrap(), 5);
        assert_eq!(db.apply_retention().unwrap(), 0);
        let p0 = read_all(&db, "t", 0).await;
        assert_eq!(p0.first().map(|r| r.offset), Some(5));
        assert_eq!(p0.len(), 5);
        // A reader from below the retained start gets what exists from there on.
        assert_eq!(
            db.read("t", 0, 0, 2, Duration::ZERO).await.unwrap().iter().map(|r| r.offset).collect::<Vec<_>>(),
            [5, 6]
        );
        assert_eq!(read_all(&db, "t", 1).await.len(), 10);
        assert_eq!(read_all(&db, "lonely", 0).await.len(), 10);

        // Once everything is consumed the partition empties but keeps its end across reopen.
        db.commit("slow", "t", 0, 10).await.unwrap();
        db.commit("fast", "t", 0, 10).await.unwrap();
        assert_eq!(db.apply_retention().unwrap(), 5);
        drop(db);
        let db = EmbeddedDb::open(dir.path(), options).unwrap();
        assert_eq!(db.end_offset("t", 0).await.unwrap(), 10);
        assert!(read_all(&db, "t", 0).await.is_empty());
        assert_eq!(db.append(vec![part("t", 0, vec![rec("k", "new")])]).await.unwrap(), vec![10]);
        assert_eq!(db.read("t", 0, 0, 10, Duration::ZERO).await.unwrap()[0].offset, 10);
    }

    #[tokio::test]
    async fn indexed_topic_finds_groups_and_retention_drops_batches_with_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let indexed = |retention: Duration| EmbeddedOptions {
            indexed_topics: vec!["ev".into()],
            indexed_retention: retention,
            retention: Duration::ZERO,
            ..EmbeddedOptions::default()
        };
        let group_of = |records: &[StoredRecord]| -> Vec<(u64, Vec<u8>)> {
            records.iter().map(|r| (r.offset, r.value.clone())).collect()
        };
        let db = EmbeddedDb::open(dir.path(), indexed(Duration::from_secs(3600))).unwrap();
        db.ensure_topic("ev", 2).await.unwrap();
        db.ensure_topic("plain", 1).await.unwrap();
        // Two groups of one millisecond bucket, one group elsewhere, a key with no separator.
        let (a, b, c) = ("01a217b2-fa1c-7aaa", "01a217b2-fa1c-7bbb", "01a217b2-ffff-7ccc");
        let key = |group: &str, event: &str| format!("{group}\x1f{event}");
        db.append(vec![
            part("ev", 0, vec![rec(&key(a, "1"), "a1"), rec(&key(b, "1"), "b1"), rec(&key(c, "1"), "c1")]),
            part("ev", 1, vec![rec(&key(a, "2"), "a2"), rec("bare", "x")]),
        ])
        .await
        .unwrap();
        db.append(vec![part("ev", 0, vec![rec(&key(a, "3"), "a3")])]).await.unwrap();
        db.append(vec![part("plain", 0, vec![rec(&key(a, "9"), "p")])]).await.unwrap();

        let found = db.lookup_group("ev", a.as_bytes()).await.unwrap();
        assert_eq!(group_of(&found), [(0, b"a1".to_vec()), (3, b"a3".to_vec()), (0, b"a2".to_vec())]);
        assert_eq!(group_of(&db.lookup_group("ev", b"bare").await.unwrap()), [(1, b"x".to_vec())]);
        assert!(db.lookup_group("ev", b"01a217b2-fa1c-7ddd").await.unwrap().is_empty());
        assert!(db.lookup_group("plain", a.as_bytes()).await.is_err(), "only indexed topics answer");
        assert!(db.lookup_group("missing", a.as_bytes()).await.unwrap().is_empty());

        // Younger than the indexed retention: kept although no group ever consumed it.
        assert_eq!(db.apply_retention().unwrap(), 0);
        drop(db);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let db = EmbeddedDb::open(dir.path(), indexed(Duration::ZERO)).unwrap();
        // Found after reopen; a consumer's position still protects what it has not read.
        assert_eq!(db.lookup_group("ev", a.as_bytes()).await.unwrap().len(), 3);
        db.commit("reader", "ev", 0, 3).await.unwrap();
        db.commit("reader", "ev", 1, 2).await.unwrap();
        // Partition 0's first batch (3 records) and partition 1's batch (2) go, with their entries.
        assert_eq!(db.apply_retention().unwrap(), 5);
        assert_eq!(group_of(&db.lookup_group("ev", a.as_bytes()).await.unwrap()), [(3, b"a3".to_vec())]);
        assert!(db.lookup_group("ev", b"bare").await.unwrap().is_empty());
        let left: Vec<Vec<u8>> = db.inner.ks.index.iter().map(|g| g.key().unwrap().to_vec()).collect();
        assert_eq!(left.len(), 1, "one entry left, for the batch at offset 3: {left:?}");
    }

    const CRASH_CHILD_DIR: &str = "HERALD_TEST_CRASH_CHILD_DIR";

    /// The child half of the SIGKILL test: appends from several tasks until killed, printing each
    /// acknowledged append as `ack <first> <count> <task> <seq>`.
    fn append_until_killed(dir: &Path) {
        use std::io::Write;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let db = open(dir);
            db.ensure_topic("crash", 1).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let tasks: Vec<_> = (0..4u32)
                .map(|task| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let mut seq = 0u32;
                        while Instant::now() < deadline {
                            let records = (0..10).map(|i| rec("k", format!("{task}:{seq}:{i}"))).collect();
                            let first = db.append(vec![part("crash", 0, records)]).await.unwrap()[0];
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "ack {first} 10 {task} {seq}").unwrap();
                            out.flush().unwrap();
                            seq += 1;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    /// A process killed with SIGKILL mid-append loses nothing it acknowledged, and recovers its
    /// offsets without holes or reuse. (This checks the journal reached the OS before the ack; that
    /// the fsync also happened before it, which only an OS crash or power loss would show, is what
    /// the group-commit tests check.)
    #[test]
    fn acknowledged_appends_survive_sigkill() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
            append_until_killed(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "embedded::log::tests::acknowledged_appends_survive_sigkill", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CRASH_CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acks = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let Some(ack) = line.strip_prefix("ack ") else { continue };
            let fields: Vec<u64> = ack.split(' ').map(|f| f.parse().unwrap()).collect();
            acks.push((fields[0], fields[1], fields[2], fields[3]));
            if acks.len() == 200 {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(acks.len(), 200, "child stopped early");

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = open(dir.path());
            let all = read_all(&db, "crash", 0).await;
            assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64), "hole in recovered log");
            assert_eq!(db.end_offset("crash", 0).await.unwrap(), all.len() as u64);
            for (first, count, task, seq) in acks {
                for i in 0..count {
                    let got = all.get((first + i) as usize).map(|r| String::from_utf8_lossy(&r.value).into_owned());
                    assert_eq!(got, Some(format!("{task}:{seq}:{i}")), "acknowledged record at {} lost", first + i);
                }
            }
        });
    }

    /// The stored batches of a partition, as `(first offset, record count)`.
    fn stored_batches(db: &EmbeddedDb, topic: &str, partition: u32) -> Vec<(u64, u32)> {
        let id = db.inner.topic(topic).unwrap().id;
        db.inner
            .ks
            .records
            .prefix(partition_prefix(id, partition))
            .map(|guard| {
                let (key, value) = guard.into_inner().unwrap();
                let batch = StoredBatch::decode(&key, &value).unwrap();
                (batch.first, batch.count)
            })
            .collect()
    }

    fn offsets(records: &[StoredRecord]) -> Vec<u64> {
        records.iter().map(|r| r.offset).collect()
    }

    /// Record `i` of the numbered test records: key and value both name it.
    fn numbered(range: std::ops::Range<u64>) -> Vec<Record> {
        range.map(|i| rec(&format!("k{i}"), format!("v{i}"))).collect()
    }

    fn assert_numbered(records: &[StoredRecord], range: std::ops::Range<u64>) {
        assert_eq!(offsets(records), range.clone().collect::<Vec<_>>());
        for r in records {
            assert_eq!(r.key, format!("k{}", r.offset).into_bytes());
            assert_eq!(r.value, format!("v{}", r.offset).into_bytes());
        }
    }

    /// Appends the batches `sizes` (one part each) to partition 0 of a new topic `t`, numbering
    /// records from 0.
    async fn append_batches(db: &EmbeddedDb, sizes: &[u64]) {
        db.ensure_topic("t", 1).await.unwrap();
        let mut next = db.end_offset("t", 0).await.unwrap();
        for &size in sizes {
            assert_eq!(db.append(vec![part("t", 0, numbered(next..next + size))]).await.unwrap(), vec![next]);
            next += size;
        }
    }

    #[tokio::test]
    async fn an_append_part_is_one_stored_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic("t", 2).await.unwrap();
        db.append(vec![part("t", 0, numbered(0..5)), part("t", 1, numbered(0..2)), part("t", 0, numbered(5..7))])
            .await
            .unwrap();
        db.append(vec![part("t", 0, numbered(7..8))]).await.unwrap();
        assert_eq!(stored_batches(&db, "t", 0), [(0, 5), (5, 2), (7, 1)]);
        assert_eq!(stored_batches(&db, "t", 1), [(0, 2)]);
        let read = db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap();
        assert_numbered(&read, 0..8);
        assert!(read.iter().all(|r| r.timestamp_ms > 0));
    }

    #[tokio::test]
    async fn read_from_the_middle_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        append_batches(&db, &[10]).await;
        assert_eq!(stored_batches(&db, "t", 0), [(0, 10)]);
        for from in 0..10 {
            assert_numbered(&db.read("t", 0, from, 100, Duration::ZERO).await.unwrap(), from..10);
        }
        assert_numbered(&db.read("t", 0, 3, 4, Duration::ZERO).await.unwrap(), 3..7);
        assert_numbered(&db.read("t", 0, 9, 1, Duration::ZERO).await.unwrap(), 9..10);
        assert!(db.read("t", 0, 10, 100, Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reads_span_batches_and_max_cuts_inside_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        append_batches(&db, &[3, 4, 1, 5]).await;
        assert_eq!(stored_batches(&db, "t", 0), [(0, 3), (3, 4), (7, 1), (8, 5)]);
        assert_numbered(&db.read("t", 0, 2, 100, Duration::ZERO).await.unwrap(), 2..13);
        assert_numbered(&db.read("t", 0, 5, 5, Duration::ZERO).await.unwrap(), 5..10);
        assert_numbered(&db.read("t", 0, 0, 4, Duration::ZERO).await.unwrap(), 0..4);
        assert_numbered(&db.read("t", 0, 7, 1, Duration::ZERO).await.unwrap(), 7..8);
        assert_numbered(&db.read("t", 0, 12, 100, Duration::ZERO).await.unwrap(), 12..13);
        // Every (from, max) pair gives exactly the records asked for.
        for from in 0..14 {
            for max in 1..15 {
                let read = db.read("t", 0, from, max, Duration::ZERO).await.unwrap();
                assert_numbered(&read, from.min(13)..(from + max as u64).min(13));
            }
        }
        // A reader taking 2 at a time walks across every batch boundary.
        let mut all = Vec::new();
        loop {
            let from = all.last().map_or(0, |r: &StoredRecord| r.offset + 1);
            let read = db.read("t", 0, from, 2, Duration::ZERO).await.unwrap();
            if read.is_empty() {
                break;
            }
            assert!(read.len() <= 2);
            all.extend(read);
        }
        assert_numbered(&all, 0..13);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waiting_inside_a_batch_wakes_at_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        append_batches(&db, &[4]).await;
        let reader = {
            let db = db.clone();
            tokio::spawn(async move { db.read("t", 0, 6, 10, Duration::from_secs(10)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        db.append(vec![part("t", 0, numbered(4..9))]).await.unwrap();
        assert_numbered(&reader.await.unwrap(), 6..9);
    }

    #[tokio::test]
    async fn reopen_recovers_end_offsets_from_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            db.ensure_topic("t", 3).await.unwrap();
            db.append(vec![part("t", 0, numbered(0..7)), part("t", 1, numbered(0..1))]).await.unwrap();
            db.append(vec![part("t", 0, numbered(7..10))]).await.unwrap();
        }
        let db = open(dir.path());
        assert_eq!(db.end_offset("t", 0).await.unwrap(), 10);
        assert_eq!(db.end_offset("t", 1).await.unwrap(), 1);
        assert_eq!(db.end_offset("t", 2).await.unwrap(), 0);
        assert_eq!(db.append(vec![part("t", 0, numbered(10..12))]).await.unwrap(), vec![10]);
        assert_eq!(db.append(vec![part("t", 2, numbered(0..3))]).await.unwrap(), vec![0]);
        assert_eq!(stored_batches(&db, "t", 0), [(0, 7), (7, 3), (10, 2)]);
        assert_numbered(&db.read("t", 0, 5, 100, Duration::ZERO).await.unwrap(), 5..12);
        assert_numbered(&read_all(&db, "t", 2).await, 0..3);
    }

    #[tokio::test]
    async fn retention_keeps_a_batch_straddling_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { retention: Duration::ZERO, ..EmbeddedOptions::default() };
        {
            let db = EmbeddedDb::open(dir.path(), options.clone()).unwrap();
            append_batches(&db, &[4, 4, 4]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Nothing committed: nothing goes. Committed inside the first batch: it stays whole.
            assert_eq!(db.apply_retention().unwrap(), 0);
            db.commit("g", "t", 0, 3).await.unwrap();
            assert_eq!(db.apply_retention().unwrap(), 0);
            assert_numbered(&db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap(), 0..12);
            // Committed inside the second batch: only the first goes.
            db.commit("g", "t", 0, 6).await.unwrap();
            assert_eq!(db.apply_retention().unwrap(), 4);
            assert_eq!(stored_batches(&db, "t", 0), [(4, 4), (8, 4)]);
            // Reads from below the start begin at the start; reads above it are exact, even the
            // consumed records of the kept batch.
            assert_numbered(&db.read("t", 0, 0, 3, Duration::ZERO).await.unwrap(), 4..7);
            assert_numbered(&db.read("t", 0, 5, 100, Duration::ZERO).await.unwrap(), 5..12);
            // Committed at a batch boundary: the batch below it goes.
            db.commit("g", "t", 0, 8).await.unwrap();
            assert_eq!(db.apply_retention().unwrap(), 4);
            assert_eq!(stored_batches(&db, "t", 0), [(8, 4)]);
            db.commit("g", "t", 0, 11).await.unwrap();
            assert_eq!(db.apply_retention().unwrap(), 0);
            db.persist().unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), options).unwrap();
        assert_eq!(db.end_offset("t", 0).await.unwrap(), 12);
        assert_numbered(&db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap(), 8..12);
        assert_numbered(&db.read("t", 0, 9, 100, Duration::ZERO).await.unwrap(), 9..12);
        db.commit("g", "t", 0, 12).await.unwrap();
        assert_eq!(db.apply_retention().unwrap(), 4);
        assert!(stored_batches(&db, "t", 0).is_empty());
        assert!(db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(db.append(vec![part("t", 0, numbered(12..13))]).await.unwrap(), vec![12]);
        assert_numbered(&db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap(), 12..13);
    }

    #[tokio::test]
    async fn bulk_threads_and_the_rest_have_committers_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic("t", 1).await.unwrap();
        let bulk_db = db.clone();
        let bulk_offsets = std::thread::spawn(move || {
            // This thread only: its nice value goes up, as a bulk runtime thread's does.
            let _ = crate::channels::io::enter_bulk(1);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(bulk_db.append(vec![part("t", 0, numbered(0..2))])).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(bulk_offsets, vec![0]);
        assert_eq!(db.inner.bulk_commit.stats().waiters, 1, "the bulk thread's append");
        let own = db.inner.commit.stats().waiters;

        // A bulk writer in the middle of a write, not queued yet, holds up only its own committer.
        let stalled = db.inner.bulk_commit.writing();
        assert_eq!(db.append(vec![part("t", 0, numbered(2..3))]).await.unwrap(), vec![2]);
        assert_eq!(db.inner.commit.stats().waiters, own + 1);
        assert_eq!(db.inner.bulk_commit.stats().waiters, 1);
        drop(stalled);
        // One journal: what either committer made durable, readers see in offset order.
        assert_numbered(&db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap(), 0..3);
        assert_eq!(db.commit_stats().waiters, db.inner.commit.stats().waiters + 1);
    }

    #[tokio::test]
    async fn a_large_append_is_split_but_stays_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic("t", 1).await.unwrap();
        let big = |i: u8| Record { key: vec![i], value: vec![i; MAX_BATCH_BYTES / 4] };
        let before = db.commit_stats();
        let firsts = db
            .append_and_commit(
                vec![part("t", 0, (0..10).map(big).collect())],
                vec![Commit { group: "g".into(), topic: "t".into(), partition: 0, next_offset: 3 }],
            )
            .await
            .unwrap();
        assert_eq!(firsts, vec![0]);
        assert_eq!(db.commit_stats().waiters, before.waiters + 1);
        // Records of a quarter of the batch limit (plus their lengths): 3 fit in a stored batch.
        assert_eq!(stored_batches(&db, "t", 0), [(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert_eq!(db.committed("g", "t", 0).await.unwrap(), 3);
        for from in [0, 2, 3, 4, 8, 9] {
            let read = db.read("t", 0, from, 3, Duration::ZERO).await.unwrap();
            assert_eq!(offsets(&read), (from..(from + 3).min(10)).collect::<Vec<_>>());
            assert!(
                read.iter().all(|r| r.key == [r.offset as u8] && r.value == vec![r.offset as u8; MAX_BATCH_BYTES / 4])
            );
        }
        // A record larger than the batch limit gets a batch of its own.
        let huge = Record { key: b"h".to_vec(), value: vec![7; MAX_BATCH_BYTES + 1] };
        db.append(vec![part("t", 0, vec![rec("a", "1"), huge.clone(), rec("b", "2")])]).await.unwrap();
        assert_eq!(stored_batches(&db, "t", 0)[4..], [(10, 1), (11, 1), (12, 1)]);
        assert_eq!(db.read("t", 0, 11, 1, Duration::ZERO).await.unwrap()[0].value, huge.value);
    }

    /// Writes a value in the one-record format used before batches.
    fn insert_legacy(db: &EmbeddedDb, topic: &str, partition: u32, offset: u64, timestamp_ms: u64, record: &Record) {
        let mut value = timestamp_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&(record.key.len() as u32).to_be_bytes());
        value.extend_from_slice(&record.key);
        value.extend_from_slice(&record.value);
        let id = db.inner.topic(topic).unwrap().id;
        db.inner.ks.records.insert(batch_key(id, partition, offset), value).unwrap();
    }

    #[tokio::test]
    async fn one_record_values_from_before_batches_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            db.ensure_topic("t", 1).await.unwrap();
            for (offset, record) in numbered(0..3).iter().enumerate() {
                insert_legacy(&db, "t", 0, offset as u64, now_ms(), record);
            }
            db.persist().unwrap();
        }
        let options = EmbeddedOptions { retention: Duration::ZERO, ..EmbeddedOptions::default() };
        let db = EmbeddedDb::open(dir.path(), options).unwrap();
        assert_eq!(db.end_offset("t", 0).await.unwrap(), 3);
        assert_eq!(db.append(vec![part("t", 0, numbered(3..6))]).await.unwrap(), vec![3]);
        assert_eq!(stored_batches(&db, "t", 0), [(0, 1), (1, 1), (2, 1), (3, 3)]);
        assert_numbered(&read_all(&db, "t", 0).await, 0..6);
        assert_numbered(&db.read("t", 0, 2, 2, Duration::ZERO).await.unwrap(), 2..4);
        tokio::time::sleep(Duration::from_millis(5)).await;
        db.commit("g", "t", 0, 4).await.unwrap();
        assert_eq!(db.apply_retention().unwrap(), 3);
        assert_numbered(&db.read("t", 0, 0, 100, Duration::ZERO).await.unwrap(), 3..6);
    }

    #[tokio::test]
    async fn corrupt_batches_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        append_batches(&db, &[3]).await;
        let id = db.inner.topic("t").unwrap().id;
        // The cases below corrupt the records themselves, so they use the uncompressed format.
        let mut good = Vec::new();
        batch_header(&mut good, BATCH_FORMAT, 3, 1);
        good.extend_from_slice(&encode_records(&numbered(0..3)));
        let lz4 = encode_batch(1, &numbered(0..3));
        let mut lz4_garbage = lz4[..BATCH_HEADER + 4].to_vec();
        lz4_garbage.extend_from_slice(&[0xff; 12]);
        let mut lz4_huge = lz4.clone();
        lz4_huge[BATCH_HEADER..BATCH_HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut trailing = good.clone();
        trailing.push(0);
        let mut zero_count = good.clone();
        zero_count[1..5].copy_from_slice(&0u32.to_be_bytes());
        let mut too_many = good.clone();
        too_many[1..5].copy_from_slice(&4u32.to_be_bytes());
        let mut long_key = good.clone();
        long_key[BATCH_HEADER..BATCH_HEADER + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("unknown format", vec![9; 20]),
            ("short header", good[..7].to_vec()),
            ("truncated record", good[..good.len() - 1].to_vec()),
            ("trailing bytes", trailing),
            ("zero records", zero_count),
            ("count past the records", too_many),
            ("key length past the end", long_key),
            ("short legacy", vec![0, 0, 0, 1]),
            ("compressed garbage", lz4_garbage),
            ("impossible decompressed size", lz4_huge),
            ("truncated compressed records", lz4[..lz4.len() - 3].to_vec()),
        ];
        for (case, value) in cases {
            db.inner.ks.records.insert(batch_key(id, 0, 0), value).unwrap();
            let err = db.read("t", 0, 0, 10, Duration::ZERO).await.unwrap_err();
            assert!(err.to_string().contains("corrupt"), "{case}: {err}");
            assert!(matches!(err, LogError::Backend(_)), "{case}: {err:?}");
        }
        // Batches that overlap, or leave a hole, inside what a read covers.
        db.inner.ks.records.insert(batch_key(id, 0, 0), good.clone()).unwrap();
        db.append(vec![part("t", 0, numbered(3..6))]).await.unwrap();
        db.append(vec![part("t", 0, numbered(6..9))]).await.unwrap();
        assert_numbered(&db.read("t", 0, 4, 10, Duration::ZERO).await.unwrap(), 4..9);
        db.inner.ks.records.insert(batch_key(id, 0, 2), encode_batch(1, &numbered(2..3))).unwrap();
        let err = db.read("t", 0, 0, 10, Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().contains("where offset 3 was expected"), "{err}");
        db.inner.ks.records.remove(batch_key(id, 0, 2)).unwrap();
        db.inner.ks.records.remove(batch_key(id, 0, 3)).unwrap();
        let err = db.read("t", 0, 1, 10, Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().contains("batch at offset 6 where offset 3 was expected"), "{err}");
        // A batch whose count overflows the offsets; a key too short.
        let overflow = [0u8; 16].iter().copied().chain(u64::MAX.to_be_bytes()).collect::<Vec<_>>();
        assert!(StoredBatch::decode(&overflow[8..], &good).is_err());
        assert!(StoredBatch::decode(b"short", &good).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any bytes, as a value or after a valid header, decode to an error or to records, never
        /// a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            count in 0u32..5,
            first in any::<u64>(),
        ) {
            let key = batch_key(1, 0, first);
            let mut framed = vec![BATCH_FORMAT];
            framed.extend_from_slice(&count.to_be_bytes());
            framed.extend_from_slice(&7u64.to_be_bytes());
            framed.extend_from_slice(&bytes);
            for value in [&bytes, &framed] {
                if let Ok(batch) = StoredBatch::decode(&key, value) {
                    let mut out = Vec::new();
                    let _ = batch.read_into(first, u64::MAX, usize::MAX, &mut out);
                    prop_assert!(out.len() <= batch.count as usize);
                    prop_assert!(batch.records().count() <= batch.count as usize);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        /// Random appends (one or more parts, each a partition and a batch of values of random
        /// sizes, some large enough to be split), then drop and reopen: every partition holds
        /// exactly what was appended to it, in order, at the offsets append returned, and a read
        /// from any offset with any `max` returns exactly the records from there.
        #[test]
        fn recovery_yields_exactly_the_appended_records(
            appends in prop::collection::vec(
                prop::collection::vec(
                    (0u32..3, prop::collection::vec(
                        prop_oneof![
                            8 => prop::collection::vec(any::<u8>(), 0..64),
                            1 => (0usize..(MAX_BATCH_BYTES / 2)).prop_map(|len| vec![0x5A; len]),
                        ],
                        0..20,
                    )),
                    1..3,
                ),
                1..12,
            ),
            reads in prop::collection::vec((0u32..3, any::<prop::sample::Index>(), 1usize..40), 1..20),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut expected: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); 3];
            runtime.block_on(async {
                let db = open(dir.path());
                db.ensure_topic("p", 3).await.unwrap();
                for parts in &appends {
                    let append = parts
                        .iter()
                        .map(|(partition, values)| {
                            part("p", *partition, values.iter().map(|v| rec("k", v.clone())).collect())
                        })
                        .collect();
                    let firsts = db.append(append).await.unwrap();
                    for ((partition, values), first) in parts.iter().zip(firsts) {
                        let slot = &mut expected[*partition as usize];
                        prop_assert_eq!(first, slot.len() as u64);
                        slot.extend(values.iter().cloned().enumerate().map(|(i, v)| (first + i as u64, v)));
                    }
                }
                Ok(())
            })?;
            runtime.block_on(async {
                let db = open(dir.path());
                for (partition, want) in expected.iter().enumerate() {
                    let got: Vec<(u64, Vec<u8>)> =
                        read_all(&db, "p", partition as u32).await.into_iter().map(|r| (r.offset, r.value)).collect();
                    prop_assert_eq!(&got, want);
                    prop_assert_eq!(db.end_offset("p", partition as u32).await.unwrap(), want.len() as u64);
                }
                for (partition, from, max) in &reads {
                    let want = &expected[*partition as usize];
                    let from = from.index(want.len() + 1);
                    let got: Vec<(u64, Vec<u8>)> = db
                        .read("p", *partition, from as u64, *max, Duration::ZERO)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|r| (r.offset, r.value))
                        .collect();
                    prop_assert_eq!(&got[..], &want[from..(from + max).min(want.len())]);
                }
                Ok(())
            })?;
        }
    }
}
