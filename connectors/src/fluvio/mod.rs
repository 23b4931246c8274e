//! Herald's topics on a Fluvio cluster ([`FluvioLog`], cargo feature `fluvio`).
//!
//! # Mapping
//! - A Herald topic is the Fluvio topic of the same name, after an optional prefix
//!   ([`FluvioOptions::prefix`], so several Herald installations or test runs share a cluster).
//!   Both follow Fluvio's naming rule, so names carry over unchanged.
//! - Herald chooses partitions itself (a stable hash of the key, [`herald_schemas::topic`]), so a
//!   record goes to the partition Herald named: one producer per `(topic, partition)`, built with
//!   Fluvio's specific partitioner. Records are batched by the producer (`linger`, `batch_bytes`).
//! - Offsets are Fluvio's. **Consumer positions are not**: Fluvio's consumer offsets follow what a
//!   stream has yielded, Herald's follow what is durable downstream, committed in order by the task
//!   at the end of each chain. They are kept in the state backend ([`OffsetStore`]: the embedded
//!   database, or ScyllaDB), and a read opens a Fluvio stream at the exact offset asked for.
//!
//! # Promises (see [`TopicLog`])
//! - `append` returns once every record is acknowledged by the partition leader after the
//!   replicas in sync have it (`Isolation::ReadCommitted`); the offsets it returns are final. A
//!   part's records get increasing offsets in order; appends from other producers to the same
//!   partition may interleave with them.
//! - Reads return only committed records (read-committed isolation), in offset order, from the
//!   offset asked for.
//! - Commits are durable when they return (the offset store's promise). `append_and_commit` is
//!   two steps here, append then commit: a crash between them replays the batch, and every
//!   consumer absorbs that (derived ids, the ledger, the sinks' event-id windows).

use async_trait::async_trait;
use fluvio::consumer::{ConsumerConfigExtBuilder, Record as FluvioRecord};
use fluvio::dataplane::link::ErrorCode;
use fluvio::metadata::topic::TopicSpec;
use fluvio::{Fluvio, FluvioAdmin, FluvioClusterConfig, Isolation, Offset, RecordKey, TopicProducerConfigBuilder};
use futures_util::{Stream, StreamExt};
use herald_schemas::store::OffsetStore;
use herald_schemas::topic::{Append, Commit, LogError, StoredRecord, TopicLog, validate_topic_name};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How Herald uses a Fluvio cluster (`--topics fluvio://host:port?…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluvioOptions {
    /// The cluster's public endpoint (the SC), `host:port`.
    pub endpoint: String,
    /// Put before every topic name (`a-z`, `0-9`, `-`); empty by default.
    pub prefix: String,
    /// Replicas of each partition for topics Herald creates: 1 by default (a one-node cluster);
    /// use 3 in production, so a record acknowledged survives the loss of a node.
    pub replication: u32,
    /// How long a producer waits to fill a batch. Herald waits for every append's
    /// acknowledgment, so this is added to each append's latency: keep it small.
    pub linger: Duration,
    /// Most bytes a producer puts in one batch.
    pub batch_bytes: usize,
    /// How long the leader may take to acknowledge a batch.
    pub timeout: Duration,
}

impl Default for FluvioOptions {
    fn default() -> Self {
        FluvioOptions {
            endpoint: "127.0.0.1:9003".into(),
            prefix: String::new(),
            replication: 1,
            linger: Duration::from_millis(1),
            batch_bytes: 256 << 10,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FluvioUrlError {
    #[error("{0:?} is not a Fluvio URL: write fluvio://host:port (for example fluvio://127.0.0.1:9003)")]
    Scheme(String),
    #[error("fluvio URL {0:?} names no endpoint: write fluvio://host:port")]
    NoEndpoint(String),
    #[error("fluvio URL option {name}={value:?}: {reason}")]
    Option { name: String, value: String, reason: String },
    #[error("unknown fluvio URL option {0:?} (known: prefix, replication, linger, batch_bytes, timeout)")]
    UnknownOption(String),
}

impl FluvioOptions {
    /// Parses `fluvio://host:port[?prefix=…&replication=N&linger=1ms&batch_bytes=N&timeout=10s]`.
    /// A port-less host gets Fluvio's default SC port, 9003.
    pub fn from_url(url: &str) -> Result<FluvioOptions, FluvioUrlError> {
        let rest = url.strip_prefix("fluvio://").ok_or_else(|| FluvioUrlError::Scheme(url.to_string()))?;
        let (endpoint, query) = rest.split_once('?').unwrap_or((rest, ""));
        let endpoint = endpoint.trim_end_matches('/');
        if endpoint.is_empty() {
            return Err(FluvioUrlError::NoEndpoint(url.to_string()));
        }
        let mut options = FluvioOptions {
            endpoint: if endpoint.contains(':') { endpoint.to_string() } else { format!("{endpoint}:9003") },
            ..FluvioOptions::default()
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let bad =
                |reason: String| FluvioUrlError::Option { name: name.to_string(), value: value.to_string(), reason };
            match &*name {
                "prefix" => {
                    // The prefix must keep names valid: check it on a name it would make.
                    validate_topic_name(&format!("{value}x")).map_err(|e| bad(e.to_string()))?;
                    options.prefix = value.to_string();
                }
                "replication" => {
                    options.replication = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a whole number of replicas, 1 or more".into()))?
                }
                "batch_bytes" => {
                    options.batch_bytes = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1024)
                        .ok_or_else(|| bad("a number of bytes, 1024 or more".into()))?
                }
                "linger" => options.linger = humantime::parse_duration(&value).map_err(|e| bad(e.to_string()))?,
                "timeout" => options.timeout = humantime::parse_duration(&value).map_err(|e| bad(e.to_string()))?,
                other => return Err(FluvioUrlError::UnknownOption(other.to_string())),
            }
        }
        Ok(options)
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<FluvioRecord, ErrorCode>> + Send>>;

/// An open stream positioned at `next`, kept between reads of the same partition.
struct OpenStream {
    stream: RecordStream,
    last_used: Instant,
    /// When the stream last gave a record (or was opened).
    last_record: Instant,
}

/// Streams not read for this long are closed (a reader that stopped or moved elsewhere).
const IDLE_STREAM: Duration = Duration::from_secs(60);

/// A stream that gave no record for this long is replaced by one opened afresh at the same
/// offset. Seen on a live cluster: after the consumers' process was SIGKILLed and restarted
/// mid-traffic, a few long-lived streams stopped delivering records appended after they were
/// opened, while a new stream at the same offset read them at once. Reopening an idle stream
/// bounds such a stall to this long, at the cost of one stream open per idle partition per
/// period.
const STALE_STREAM: Duration = Duration::from_secs(2);

type Producer = Arc<fluvio::TopicProducerPool>;

/// Herald's topic log on a Fluvio cluster. Cheap to clone.
#[derive(Clone)]
pub struct FluvioLog {
    inner: Arc<Inner>,
}

struct Inner {
    client: Fluvio,
    admin: FluvioAdmin,
    offsets: Arc<dyn OffsetStore>,
    options: FluvioOptions,
    /// Partition counts of topics seen (a topic's count never changes).
    partitions: Mutex<HashMap<String, u32>>,
    producers: tokio::sync::Mutex<HashMap<(String, u32), Producer>>,
    /// Open read streams by `(fluvio topic, partition, next offset)`.
    streams: Mutex<HashMap<(String, u32, u64), OpenStream>>,
    /// Where a fresh stream at `(topic, partition, from)` started when past `from` (see [`Contiguous`]).
    late_starts: Mutex<HashMap<(String, u32, u64), u64>>,
}

fn backend(what: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Backend(format!("fluvio: {what}: {error:#}"))
}

impl FluvioLog {
    /// Connects to the cluster; consumer positions go to `offsets`.
    pub async fn connect(options: FluvioOptions, offsets: Arc<dyn OffsetStore>) -> Result<FluvioLog, LogError> {
        let config = FluvioClusterConfig::new(options.endpoint.clone());
        let client = tokio::time::timeout(options.timeout, Fluvio::connect_with_config(&config))
            .await
            .map_err(|_| backend(&format!("connecting to {}", options.endpoint), "timed out"))?
            .map_err(|e| backend(&format!("connecting to {}", options.endpoint), e))?;
        let admin = client.admin().await;
        tracing::info!(endpoint = %options.endpoint, prefix = %options.prefix, "connected to Fluvio");
        Ok(FluvioLog {
            inner: Arc::new(Inner {
                client,
                admin,
                offsets,
                options,
                partitions: Mutex::new(HashMap::new()),
                producers: tokio::sync::Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
                late_starts: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &FluvioOptions {
        &self.inner.options
    }

    /// The Fluvio name of a Herald topic.
    pub fn fluvio_name(&self, topic: &str) -> Result<String, LogError> {
        validate_topic_name(topic)?;
        let name = format!("{}{topic}", self.inner.options.prefix);
        validate_topic_name(&name)?;
        Ok(name)
    }

    /// The topic's partition count as the cluster has it (`None`: no such topic).
    async fn lookup_partitions(&self, name: &str) -> Result<Option<u32>, LogError> {
        if let Some(n) = self.inner.partitions.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(Some(*n));
        }
        let found = self
            .inner
            .admin
            .list::<TopicSpec, String>(vec![name.to_string()])
            .await
            .map_err(|e| backend(&format!("listing topic {name}"), e))?;
        let Some(topic) = found.into_iter().find(|t| t.name == name) else { return Ok(None) };
        let partitions = topic.spec.partitions();
        self.inner.partitions.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), partitions);
        Ok(Some(partitions))
    }

    async fn partitions_of(&self, topic: &str) -> Result<(String, u32), LogError> {
        let name = self.fluvio_name(topic)?;
        match self.lookup_partitions(&name).await? {
            Some(n) => Ok((name, n)),
            None => Err(LogError::UnknownTopic(topic.to_string())),
        }
    }

    async fn check_partition(&self, topic: &str, partition: u32) -> Result<String, LogError> {
        let (name, partitions) = self.partitions_of(topic).await?;
        if partition >= partitions {
            return Err(LogError::NoSuchPartition { topic: topic.to_string(), partition, partitions });
        }
        Ok(name)
    }

    async fn producer(&self, name: &str, partition: u32) -> Result<Producer, LogError> {
        let mut producers = self.inner.producers.lock().await;
        if let Some(p) = producers.get(&(name.to_string(), partition)) {
            return Ok(p.clone());
        }
        let options = &self.inner.options;
        let config = TopicProducerConfigBuilder::default()
            .set_specific_partitioner(partition)
            .linger(options.linger)
            .batch_size(options.batch_bytes)
            // Room for a batch and its header: a batch of exactly the request limit is refused.
            .max_request_size(options.batch_bytes * 2)
            .timeout(options.timeout)
            .isolation(Isolation::ReadCommitted)
            .build()
            .map_err(|e| backend("producer settings", e))?;
        let producer = Arc::new(
            self.inner
                .client
                .topic_producer_with_config(name, config)
                .await
                .map_err(|e| backend(&format!("producer for {name}/{partition}"), e))?,
        );
        producers.insert((name.to_string(), partition), producer.clone());
        Ok(producer)
    }

    /// Appends one part; returns its first offset. A producer that failed is replaced: Fluvio's
    /// keeps refusing sends after an error until its errors are cleared.
    async fn append_part(&self, part: Append) -> Result<u64, LogError> {
        let name = self.check_partition(&part.topic, part.partition).await?;
        let partition = part.partition;
        let producer = self.producer(&name, partition).await?;
        let result = self.send_part(&name, &producer, part).await;
        if result.is_err() {
            self.inner.producers.lock().await.remove(&(name, partition));
        }
        result
    }

    async fn send_part(&self, name: &str, producer: &Producer, part: Append) -> Result<u64, LogError> {
        let what = || format!("appending to {name}/{}", part.partition);
        let mut pending = Vec::with_capacity(part.records.len());
        for record in part.records {
            let key = if record.key.is_empty() { RecordKey::NULL } else { RecordKey::from(record.key) };
            pending.push(producer.send(key, record.value).await.map_err(|e| backend(&what(), e))?);
        }
        producer.flush().await.map_err(|e| backend(&what(), e))?;
        let mut first = None;
        for output in pending {
            let metadata = output.wait().await.map_err(|e| backend(&what(), e))?;
            if metadata.partition_id() != part.partition {
                return Err(backend(&what(), format!("record went to partition {}", metadata.partition_id())));
            }
            let offset = u64::try_from(metadata.offset()).map_err(|_| backend(&what(), "negative offset"))?;
            first.get_or_insert(offset);
        }
        Ok(first.unwrap_or(0))
    }

    async fn open_stream(
        &self,
        name: &str,
        partition: u32,
        offset: Offset,
        once: bool,
    ) -> Result<RecordStream, LogError> {
        let config = ConsumerConfigExtBuilder::default()
            .topic(name.to_string())
            .partition(partition)
            .offset_start(offset)
            .isolation(Isolation::ReadCommitted)
            .disable_continuous(once)
            .build()
            .map_err(|e| backend("consumer settings", e))?;
        let stream = self
            .inner
            .client
            .consumer_with_config(config)
            .await
            .map_err(|e| backend(&format!("reading {name}/{partition}"), e))?;
        Ok(Box::pin(stream))
    }

    /// Takes the open stream at `(name, partition, from)` (with when it last gave a record),
    /// closing streams unused too long; a stream that gave nothing for [`STALE_STREAM`] is not
    /// returned.
    fn take_stream(&self, name: &str, partition: u32, from: u64) -> Option<(RecordStream, Instant)> {
        let mut streams = self.inner.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|_, s| s.last_used.elapsed() < IDLE_STREAM);
        let open = streams.remove(&(name.to_string(), partition, from))?;
        if open.last_record.elapsed() >= STALE_STREAM {
            tracing::debug!(topic = name, partition, from, "no record for a while: reading from a fresh stream");
            return None;
        }
        Some((open.stream, open.last_record))
    }

    fn put_stream(&self, name: &str, partition: u32, next: u64, stream: RecordStream, last_record: Instant) {
        let open = OpenStream { stream, last_used: Instant::now(), last_record };
        self.inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name.to_string(), partition, next), open);
    }
}

/// A Fluvio record as Herald's.
fn stored(record: &FluvioRecord) -> Option<StoredRecord> {
    Some(StoredRecord {
        offset: u64::try_from(record.offset()).ok()?,
        key: record.key().map(<[u8]>::to_vec).unwrap_or_default(),
        value: record.value().to_vec(),
        timestamp_ms: u64::try_from(record.timestamp()).unwrap_or(0),
    })
}

/// The records one read returns: consecutive offsets from `from` on, at most `max`.
///
/// Seen on a live cluster under load: a long-lived Fluvio stream sometimes skips offsets (it
/// yielded 2811, then 2813), while a stream opened afresh at 2812 reads it. A reader that trusted
/// the stream would commit past records it never saw, so a read stops at a gap ([`Self::broken`])
/// and the next one reads from a fresh stream. The first record of a fresh stream may be past
/// `from` when the records before it are gone (retention); that is believed only when a second
/// fresh stream starts at the same offset (`confirmed_start`), and the read is broken otherwise.
struct Contiguous {
    records: Vec<StoredRecord>,
    next: u64,
    max: usize,
    fresh: bool,
    /// Where the previous fresh stream at `from` started, if past `from`.
    confirmed_start: Option<u64>,
    broken: bool,
    /// Where a fresh stream started when the records from `from` on were gone.
    started_late: Option<u64>,
}

impl Contiguous {
    fn new(from: u64, max: usize, fresh: bool, confirmed_start: Option<u64>) -> Self {
        Contiguous { records: Vec::new(), next: from, max, fresh, confirmed_start, broken: false, started_late: None }
    }

    fn admit(&mut self, record: Option<StoredRecord>) {
        let Some(record) = record else { return };
        if record.offset < self.next || self.broken || self.records.len() >= self.max {
            // Before the start (a stream may begin with its batch's earlier records).
            return;
        }
        if record.offset > self.next {
            let first_of_fresh = self.fresh && self.records.is_empty() && self.started_late.is_none();
            if first_of_fresh && self.confirmed_start == Some(record.offset) {
                self.started_late = Some(record.offset);
            } else {
                if first_of_fresh {
                    self.started_late = Some(record.offset);
                }
                self.broken = true;
                return;
            }
        }
        self.next = record.offset + 1;
        self.records.push(record);
    }
}

fn store_error(e: herald_schemas::store::StoreError) -> LogError {
    LogError::Backend(format!("consumer offsets: {e}"))
}

#[async_trait]
impl TopicLog for FluvioLog {
    /// Creates the topic with `partitions` partitions and the configured replication if the
    /// cluster does not have it; `partitions == 0` takes an existing topic as it is.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        let name = self.fluvio_name(topic)?;
        let existing = match self.lookup_partitions(&name).await? {
            Some(n) => n,
            None if partitions == 0 => return Err(LogError::UnknownTopic(topic.to_string())),
            None => {
                let spec = TopicSpec::new_computed(partitions, self.inner.options.replication, None);
                match self.inner.admin.create(name.clone(), false, spec).await {
                    Ok(()) => {
                        tracing::info!(topic = %name, partitions, replication = self.inner.options.replication, "Fluvio topic created");
                    }
                    // Another worker created it meanwhile: look again.
                    Err(error) => tracing::debug!(topic = %name, %error, "topic not created"),
                }
                self.lookup_partitions(&name)
                    .await?
                    .ok_or_else(|| backend(&format!("creating topic {name}"), "not there after creation"))?
            }
        };
        if partitions != 0 && partitions != existing {
            return Err(LogError::PartitionMismatch { topic: topic.to_string(), existing, requested: partitions });
        }
        Ok(existing)
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.partitions_of(topic).await?.1)
    }

    /// Parts are appended concurrently, each part's records in order, each on a task of its own
    /// that runs to its end even if the caller stops waiting: a producer's send cancelled half
    /// way would leave records queued in the producer without anyone waiting for them, and an
    /// error in one part does not cut the others short.
    async fn append(&self, parts: Vec<Append>) -> Result<Vec<u64>, LogError> {
        let tasks: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let log = self.clone();
                tokio::spawn(async move { log.append_part(part).await })
            })
            .collect();
        let mut firsts = Vec::with_capacity(tasks.len());
        let mut failed = None;
        for task in tasks {
            match task.await {
                Ok(Ok(first)) => firsts.push(first),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => failed = failed.or(Some(backend("append task", e))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(firsts),
        }
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let name = self.check_partition(topic, partition).await?;
        let (mut stream, last_record, fresh) = match self.take_stream(&name, partition, from) {
            Some((stream, last_record)) => (stream, last_record, false),
            None => {
                let start =
                    Offset::absolute(i64::try_from(from).unwrap_or(i64::MAX)).map_err(|e| backend("offset", e))?;
                (self.open_stream(&name, partition, start, false).await?, Instant::now(), true)
            }
        };
        let what = || format!("reading {name}/{partition}");
        let late_key = (name.clone(), partition, from);
        let confirmed = self.inner.late_starts.lock().unwrap_or_else(PoisonError::into_inner).remove(&late_key);
        let mut run = Contiguous::new(from, max, fresh, confirmed);
        let deadline = tokio::time::Instant::now() + wait;
        // Wait for the first record at or past `from`, then take what is ready.
        while run.records.is_empty() && !run.broken {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break,
                Ok(None) => return Err(backend(&what(), "stream ended")),
                Ok(Some(Err(code))) => return Err(backend(&what(), code)),
                Ok(Some(Ok(record))) => run.admit(stored(&record)),
            }
        }
        // Then what is ready now, polled with this task's waker (a no-op waker, as
        // `now_or_never` uses, could leave the stream's wake-up registered with nobody).
        while run.records.len() < max && !run.broken {
            let next = tokio::select! {
                biased;
                next = stream.next() => next,
                () = std::future::ready(()) => break,
            };
            match next {
                Some(Ok(record)) => run.admit(stored(&record)),
                Some(Err(code)) => return Err(backend(&what(), code)),
                None => return Err(backend(&what(), "stream ended")),
            }
        }
        if run.broken {
            if let (true, Some(start)) = (run.records.is_empty(), run.started_late) {
                // A fresh stream started past `from`: believed if the next fresh one does too.
                self.inner.late_starts.lock().unwrap_or_else(PoisonError::into_inner).insert(late_key, start);
            }
            // The stream skipped offsets: drop it; the next read opens a fresh one at the gap.
            tracing::debug!(topic = %name, partition, at = run.next, "stream skipped records; reopening");
            return Ok(run.records);
        }
        if let Some(start) = run.started_late {
            tracing::warn!(topic = %name, partition, from, start, "records before the partition's start are gone (Fluvio retention)");
        }
        let got = run.records;
        let next = got.last().map_or(from, |r| r.offset + 1);
        let last_record = if got.is_empty() { last_record } else { Instant::now() };
        self.put_stream(&name, partition, next, stream, last_record);
        Ok(got)
    }

    async fn commit(&self, group: &str, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError> {
        let commit = Commit { group: group.into(), topic: topic.into(), partition, next_offset };
        self.inner.offsets.save_offsets(&[commit]).await.map_err(store_error)
    }

    async fn commit_ordered(&self, commits: Vec<Commit>) -> Result<(), LogError> {
        self.inner.offsets.save_offsets(&commits).await.map_err(store_error)
    }

    /// Appends, then commits: two steps (see the module doc).
    async fn append_and_commit(&self, parts: Vec<Append>, commits: Vec<Commit>) -> Result<Vec<u64>, LogError> {
        let firsts = if parts.is_empty() { Vec::new() } else { self.append(parts).await? };
        if !commits.is_empty() {
            self.inner.offsets.save_offsets(&commits).await.map_err(store_error)?;
        }
        Ok(firsts)
    }

    async fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.inner.offsets.load_offset(group, topic, partition).await.map_err(store_error)?.unwrap_or(0))
    }

    /// The offset after the last committed record: read with a one-shot stream from one record
    /// before the end.
    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        let name = self.check_partition(topic, partition).await?;
        let mut stream = self.open_stream(&name, partition, Offset::from_end(1), true).await?;
        let mut end = 0;
        while let Some(record) = tokio::time::timeout(self.inner.options.timeout, stream.next())
            .await
            .map_err(|_| backend(&format!("end of {name}/{partition}"), "timed out"))?
        {
            let record = record.map_err(|code| backend(&format!("end of {name}/{partition}"), code))?;
            if let Some(r) = stored(&record) {
                end = end.max(r.offset + 1);
            }
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let o = FluvioOptions::from_url("fluvio://127.0.0.1:9003").unwrap();
        assert_eq!(o.endpoint, "127.0.0.1:9003");
        assert_eq!((o.replication, o.prefix.as_str()), (1, ""));
        let o = FluvioOptions::from_url("fluvio://sc.internal?replication=3&prefix=prod-&linger=5ms").unwrap();
        assert_eq!(o.endpoint, "sc.internal:9003");
        assert_eq!((o.replication, o.prefix.as_str(), o.linger), (3, "prod-", Duration::from_millis(5)));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(matches!(FluvioOptions::from_url("kafka://x:1"), Err(FluvioUrlError::Scheme(_))));
        assert!(matches!(FluvioOptions::from_url("fluvio://"), Err(FluvioUrlError::NoEndpoint(_))));
        assert!(matches!(FluvioOptions::from_url("fluvio://h:1?replication=0"), Err(FluvioUrlError::Option { .. })));
        assert!(matches!(FluvioOptions::from_url("fluvio://h:1?prefix=Bad_"), Err(FluvioUrlError::Option { .. })));
        assert!(matches!(FluvioOptions::from_url("fluvio://h:1?partitions=3"), Err(FluvioUrlError::UnknownOption(_))));
        let e = FluvioOptions::from_url("fluvio://h:1?linger=soon").unwrap_err().to_string();
        assert!(e.contains("linger"), "{e}");
    }

    fn rec(offset: u64) -> StoredRecord {
        StoredRecord { offset, key: vec![], value: vec![], timestamp_ms: 0 }
    }

    fn run(fresh: bool, from: u64, max: usize, offsets: &[u64]) -> Contiguous {
        run_confirmed(fresh, None, from, max, offsets)
    }

    fn run_confirmed(fresh: bool, confirmed: Option<u64>, from: u64, max: usize, offsets: &[u64]) -> Contiguous {
        let mut run = Contiguous::new(from, max, fresh, confirmed);
        for &offset in offsets {
            run.admit(Some(rec(offset)));
        }
        run
    }

    fn offsets(run: &Contiguous) -> Vec<u64> {
        run.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn reads_start_at_the_offset_asked_for_and_stop_at_max() {
        let r = run(false, 5, 3, &[3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(offsets(&r), vec![5, 6, 7]);
        assert!(!r.broken);
        assert!(run(false, 5, 10, &[0, 1, 2, 3]).records.is_empty());
    }

    #[test]
    fn a_skipped_offset_ends_the_read_before_it() {
        // A long-lived stream that jumps from 2811 to 2813: the read ends at 2811, so the reader
        // never commits past 2812.
        let r = run(false, 2810, 100, &[2810, 2811, 2813, 2814]);
        assert_eq!(offsets(&r), vec![2810, 2811]);
        assert!(r.broken);
        assert_eq!(r.next, 2812);
        // A cached stream whose first record is past `from` is broken too.
        let r = run(false, 10, 100, &[12, 13]);
        assert!(r.records.is_empty() && r.broken);
    }

    #[test]
    fn a_fresh_stream_starting_late_is_believed_when_a_second_one_agrees() {
        // The first fresh stream at 10 starts at 40: not believed yet.
        let r = run(true, 10, 100, &[40, 41]);
        assert!(r.records.is_empty() && r.broken);
        assert_eq!(r.started_late, Some(40));
        // A second fresh stream starting there too: records before 40 are gone (retention).
        let r = run_confirmed(true, Some(40), 10, 100, &[40, 41, 43]);
        assert_eq!(offsets(&r), vec![40, 41]);
        assert_eq!(r.started_late, Some(40));
        assert!(r.broken, "a gap after the start still ends the read");
        // One that starts elsewhere is not believed.
        let r = run_confirmed(true, Some(40), 10, 100, &[12, 13]);
        assert!(r.records.is_empty() && r.broken);
    }
}
