//! The analytics sink: `herald-events` → Arrow record batches → Parquet files, exactly once.
//!
//! One reader per partition of `herald-events` (consumer group [`GROUP`]); each partition's
//! events build up in [`EventRows`] until the sink flushes: when `flush_rows` rows are buffered
//! over all partitions, every `flush_interval`, at a day boundary (a file holds one day), and
//! when the runtime stops (SIGTERM), so a graceful shutdown leaves nothing buffered. How a flush
//! stays exactly once across crashes is in [`super::files`]. A SIGKILL loses only the buffer,
//! which is still in `herald-events` past the committed offset and is read again.
//!
//! The log itself can hold an event twice: a stage that replays its uncommitted input after a
//! crash emits that input's events again, with the same derived event ids (a dispatcher, for a
//! delivery its ledger already has as sent). So each partition remembers the ids of its last
//! `dedup_window` events ([`Recent`]) and drops an event it has seen, and on start it refills
//! that memory from the `event_id` column of the partition's newest files. A repeat comes at most
//! one stage's uncommitted tail (its read queue and batch) after the original, far inside the
//! window; events of one notification share a partition, so per-partition memory is enough.

use super::compact;
use super::files::{self, FileRange};
use crate::runtime::queue::{Batch, QueueRx};
use crate::runtime::reader::{ReadSettings, spawn_readers};
use crate::runtime::recent::Recent;
use crate::runtime::supervise::{TaskFailed, TaskResult};
use arrow::array::AsArray;
use herald_schemas::DeliveryEvent;
use herald_schemas::analytics::EventRows;
use herald_schemas::codec::{self, CodecError};
use herald_schemas::topic::{self, Commit, StoredRecord, TopicLog};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A compaction "interval" when compaction is off: a year (`Instant + Duration::MAX` overflows).
const NEVER: Duration = Duration::from_secs(365 * 86_400);

/// The consumer group of the analytics sink on `herald-events`.
pub const GROUP: &str = "herald-analytics";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("analytics files in {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("cannot build a record batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cannot write Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("the file writer stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Clone)]
pub struct AnalyticsSink {
    pub log: Arc<dyn TopicLog>,
    /// `<data-dir>/events`.
    pub root: PathBuf,
    /// The partitions of `herald-events` this worker processes.
    pub partitions: Arc<[u32]>,
    pub read: ReadSettings,
    /// Flush once this many rows are buffered (all partitions together).
    pub flush_rows: usize,
    /// Flush at least this often while events come in.
    pub flush_interval: Duration,
    /// How many of each partition's latest event ids are remembered to drop a repeat.
    pub dedup_window: usize,
    /// How often small files are merged ([`super::compact`]); `None`: never.
    pub compact_interval: Option<Duration>,
    /// The size merged files grow to.
    pub compact_target_bytes: u64,
}

/// One partition's events since its last flush, all of one UTC day.
struct Pending {
    /// The offset the next file starts at (everything before it is in files or committed).
    from: u64,
    /// The offset after the last record read.
    to: u64,
    day: String,
    rows: EventRows,
    recent: Recent,
}

/// An event with its offset, so files can be cut exactly at a day boundary.
fn decode_event(record: &StoredRecord) -> Result<(u64, DeliveryEvent), CodecError> {
    Ok((record.offset, codec::decode(&record.value)?))
}

impl AnalyticsSink {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        tasks.spawn(self.clone().run(token));
    }

    fn failed<E: std::error::Error + Send + Sync + 'static>(e: E) -> TaskFailed {
        TaskFailed::new("analytics", e)
    }

    /// Recovers the files, then reads (the readers start where the files end) until stopped.
    async fn run(self, token: CancellationToken) -> TaskResult {
        let root = self.root.clone();
        let found = tokio::task::spawn_blocking(move || files::recover(&root))
            .await
            .map_err(Self::failed)?
            .map_err(|source| Self::failed(SinkError::Io { dir: self.root.clone(), source }))?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || compact::clear_staging(&root))
            .await
            .map_err(Self::failed)?
            .map_err(|source| Self::failed(SinkError::Io { dir: compact::staging(&self.root), source }))?;
        let window = self.dedup_window;
        let mut latest = tokio::task::spawn_blocking(move || latest_event_ids(found.by_partition, window))
            .await
            .map_err(Self::failed)?
            .map_err(Self::failed)?;
        let mut pending = HashMap::new();
        for &partition in self.partitions.iter() {
            let committed = self.log.committed(GROUP, topic::EVENTS, partition).await.map_err(Self::failed)?;
            let from = match found.ends.get(&partition) {
                // Written but not committed before a crash: never again.
                Some(&end) if end > committed => {
                    self.log.commit(GROUP, topic::EVENTS, partition, end).await.map_err(Self::failed)?;
                    end
                }
                _ => committed,
            };
            let mut recent = Recent::new(self.dedup_window);
            for id in latest.remove(&partition).unwrap_or_default() {
                recent.first_time(&id);
            }
            pending.insert(partition, Pending { from, to: from, day: String::new(), rows: EventRows::new(), recent });
        }
        tracing::info!(
            dir = %self.root.display(),
            files = found.files,
            removed_temporaries = found.removed_temporaries,
            "analytics sink started"
        );
        let mut readers = JoinSet::new();
        let sources = self.partitions.iter().map(|&p| (topic::EVENTS.to_string(), p));
        let mut rx: QueueRx<(u64, DeliveryEvent)> =
            spawn_readers("analytics", &self.log, sources, GROUP, &self.read, decode_event, &token, &mut readers);
        let mut next_flush = Instant::now() + self.flush_interval;
        let mut next_compaction = Instant::now() + self.compact_interval.unwrap_or(NEVER);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => self.absorb(batch, &mut pending).await?,
                    None => break,
                },
                _ = tokio::time::sleep_until(next_flush.into()) => {
                    self.flush(&mut pending).await?;
                    next_flush = Instant::now() + self.flush_interval;
                }
                Some(ended) = readers.join_next(), if !readers.is_empty() => {
                    ended.map_err(Self::failed)??;
                }
                _ = tokio::time::sleep_until(next_compaction.into()), if self.compact_interval.is_some() => {
                    self.compact().await;
                    next_compaction = Instant::now() + self.compact_interval.unwrap_or(NEVER);
                }
            }
            if pending.values().map(|p| p.rows.len()).sum::<usize>() >= self.flush_rows {
                self.flush(&mut pending).await?;
                next_flush = Instant::now() + self.flush_interval;
            }
        }
        // Stopping: the readers are done, so everything read is flushed and committed.
        self.flush(&mut pending).await?;
        tracing::info!("analytics sink stopped; everything buffered is in Parquet");
        Ok(())
    }

    /// Adds one partition's batch, flushing that partition first at a day boundary.
    async fn absorb(
        &self,
        batch: Batch<(u64, DeliveryEvent)>,
        pending: &mut HashMap<u32, Pending>,
    ) -> Result<(), TaskFailed> {
        let Some(source) = batch.sources.first() else { return Ok(()) };
        let partition = source.partition;
        let next_offset = source.next_offset;
        let mut repeats = 0u64;
        for (offset, event) in batch.items {
            let day = files::utc_day(event.at_ms);
            let Some(p) = pending.get_mut(&partition) else { continue };
            if !p.recent.first_time(&event.event_id) {
                repeats += 1;
                continue;
            }
            if !p.rows.is_empty() && p.day != day {
                p.to = offset;
                self.flush_partitions(pending, &[partition]).await?;
            }
            let Some(p) = pending.get_mut(&partition) else { continue };
            p.day = day;
            p.rows.push(&event);
            p.to = offset + 1;
        }
        if let Some(p) = pending.get_mut(&partition) {
            // Records the reader skipped (undecodable, or repeats) at the end are covered too.
            p.to = p.to.max(next_offset);
        }
        if repeats > 0 {
            metrics::counter!("herald_analytics_repeats_dropped_total").increment(repeats);
            tracing::debug!(partition, repeats, "events the log holds twice dropped");
        }
        Ok(())
    }

    /// Merges small files (between two flushes: nothing else writes meanwhile). A failure is
    /// logged and leaves the files as they were; the next compaction tries again.
    async fn compact(&self) {
        let (root, target) = (self.root.clone(), self.compact_target_bytes);
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || compact::compact(&root, target)).await {
            Ok(Ok(done)) => {
                metrics::counter!("herald_analytics_compacted_files_total").increment(done.files_in as u64);
                metrics::histogram!("herald_analytics_compaction_seconds").record(started.elapsed().as_secs_f64());
                if done.days > 0 {
                    tracing::info!(
                        days = done.days,
                        files_in = done.files_in,
                        files_out = done.files_out,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "analytics files compacted"
                    );
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "analytics compaction failed; files left as they were"),
            Err(error) => tracing::warn!(%error, "analytics compaction stopped; files left as they were"),
        }
    }

    async fn flush(&self, pending: &mut HashMap<u32, Pending>) -> Result<(), TaskFailed> {
        let partitions: Vec<u32> = pending.keys().copied().collect();
        self.flush_partitions(pending, &partitions).await
    }

    /// Writes each partition's rows as one file and commits the ranges in one write.
    async fn flush_partitions(&self, pending: &mut HashMap<u32, Pending>, which: &[u32]) -> Result<(), TaskFailed> {
        let started = Instant::now();
        let mut writes = Vec::new();
        let mut commits = Vec::new();
        for partition in which {
            let Some(p) = pending.get_mut(partition) else { continue };
            if p.to <= p.from {
                continue;
            }
            let range = FileRange { partition: *partition, from: p.from, to: p.to };
            if !p.rows.is_empty() {
                let batch = p.rows.finish().map_err(|e| Self::failed(SinkError::from(e)))?;
                writes.push((range, p.day.clone(), batch));
            }
            commits.push(Commit {
                group: GROUP.to_string(),
                topic: topic::EVENTS.to_string(),
                partition: *partition,
                next_offset: p.to,
            });
            p.from = p.to;
        }
        if commits.is_empty() {
            return Ok(());
        }
        let root = self.root.clone();
        let (files, rows) = tokio::task::spawn_blocking(move || write_files(&root, writes))
            .await
            .map_err(Self::failed)?
            .map_err(Self::failed)?;
        self.log.commit_ordered(commits).await.map_err(Self::failed)?;
        metrics::counter!("herald_analytics_rows_total").increment(rows as u64);
        metrics::counter!("herald_analytics_files_total").increment(files as u64);
        metrics::histogram!("herald_analytics_flush_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(files, rows, "analytics flushed");
        Ok(())
    }
}

/// Encodes each batch as Parquet (zstd) and writes it under its day; returns files and rows.
fn write_files(
    root: &std::path::Path,
    writes: Vec<(FileRange, String, arrow::record_batch::RecordBatch)>,
) -> Result<(usize, usize), SinkError> {
    let mut rows = 0;
    let count = writes.len();
    for (range, day, batch) in writes {
        rows += batch.num_rows();
        let bytes = encode_parquet(&batch)?;
        let dir = files::day_dir(root, &day);
        files::write_atomically(&dir, &range.file_name(), &bytes).map_err(|source| SinkError::Io { dir, source })?;
    }
    Ok((count, rows))
}

/// Per partition, the event ids of its newest files, oldest first, at most `window` of them.
fn latest_event_ids(
    by_partition: HashMap<u32, Vec<(FileRange, PathBuf)>>,
    window: usize,
) -> Result<HashMap<u32, Vec<String>>, SinkError> {
    let mut latest = HashMap::new();
    for (partition, files) in by_partition {
        let mut newest_first: Vec<Vec<String>> = Vec::new();
        let mut count = 0;
        for (_, path) in files.iter().rev() {
            if count >= window {
                break;
            }
            let ids = event_ids(path)?;
            count += ids.len();
            newest_first.push(ids);
        }
        let ids: Vec<String> = newest_first.into_iter().rev().flatten().collect();
        let skip = ids.len().saturating_sub(window);
        latest.insert(partition, ids.into_iter().skip(skip).collect());
    }
    Ok(latest)
}

/// The `event_id` column of one event file, in row order.
fn event_ids(path: &std::path::Path) -> Result<Vec<String>, SinkError> {
    let io = |source| SinkError::Io { dir: path.to_path_buf(), source };
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).map_err(io)?)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["event_id"]);
    let mut ids = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let column = batch.column(0).as_string_opt::<i32>().ok_or_else(|| {
            SinkError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                "{}: event_id is not a utf8 column",
                path.display()
            )))
        })?;
        ids.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(ids)
}

/// How every event file is written: zstd level 3.
pub fn writer_properties() -> Result<WriterProperties, SinkError> {
    Ok(WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build())
}

/// One record batch as a Parquet file in memory, zstd compressed.
pub fn encode_parquet(batch: &arrow::record_batch::RecordBatch) -> Result<Vec<u8>, SinkError> {
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(writer_properties()?))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::requests::event_appends;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::{EventKind, NotificationId};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn sink(db: &Arc<EmbeddedDb>, root: PathBuf) -> AnalyticsSink {
        AnalyticsSink {
            log: db.clone(),
            root,
            partitions: Arc::from([0, 1]),
            read: ReadSettings {
                batch_size: 100,
                read_wait: Duration::from_millis(20),
                queue_records: 200,
                linger: Duration::ZERO,
            },
            flush_rows: 64,
            flush_interval: Duration::from_millis(50),
            dedup_window: 1_000,
            compact_interval: None,
            compact_target_bytes: 64 << 20,
        }
    }

    async fn open(dir: &std::path::Path) -> Arc<EmbeddedDb> {
        let db = Arc::new(EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap());
        db.ensure_topic(topic::EVENTS, 2).await.unwrap();
        db
    }

    /// `n` accepted events of distinct notifications at `at_ms`.
    async fn append_events(db: &EmbeddedDb, from: usize, n: usize, at_ms: u64) {
        let events: Vec<DeliveryEvent> = (from..from + n)
            .map(|i| {
                let id = NotificationId(format!("n-{i}"));
                DeliveryEvent::new(&id, "c", "u", EventKind::Accepted, None, None, at_ms)
            })
            .collect();
        db.append(event_appends(&events, 2)).await.unwrap();
    }

    /// Every event id in every final file, and how many files there are.
    fn read_back(root: &std::path::Path) -> (Vec<String>, usize) {
        let mut ids = Vec::new();
        let mut count = 0;
        for day in std::fs::read_dir(root).unwrap() {
            for file in std::fs::read_dir(day.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                assert!(path.extension().is_some_and(|e| e == "parquet"), "{}", path.display());
                count += 1;
                ids.extend(notification_ids(std::fs::File::open(&path).unwrap()));
            }
        }
        ids.sort();
        (ids, count)
    }

    /// The `notification_id` column of one event file.
    fn notification_ids(file: std::fs::File) -> Vec<String> {
        let mut ids = Vec::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
            let batch = batch.unwrap();
            let column = batch.column_by_name("notification_id").unwrap();
            ids.extend(column.as_string::<i32>().iter().map(|s| s.unwrap().to_string()));
        }
        ids
    }

    /// Sorted ids, each there once.
    fn assert_once_each(ids: &[String], what: &str) {
        ids.windows(2).for_each(|w| assert_ne!(w[0], w[1], "{what}"));
    }

    async fn run_until_stopped(sink: AnalyticsSink, wait: Duration) {
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        sink.start(token.clone(), &mut tasks);
        tokio::time::sleep(wait).await;
        token.cancel();
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn every_event_lands_once_and_a_day_boundary_cuts_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let root = dir.path().join("events");
        let day_one = 1_795_737_000_000; // 2026-11-26
        append_events(&db, 0, 150, day_one).await;
        append_events(&db, 150, 50, day_one + 86_400_000).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(400)).await;
        let (ids, _) = read_back(&root);
        assert_eq!(ids.len(), 200);
        assert_once_each(&ids, "an event is in two files");
        assert!(root.join("date=2026-11-26").is_dir() && root.join("date=2026-11-27").is_dir());
        for p in 0..2 {
            let end = db.end_offset(topic::EVENTS, p).await.unwrap();
            assert_eq!(db.committed(GROUP, topic::EVENTS, p).await.unwrap(), end);
        }
    }

    #[tokio::test]
    async fn files_written_before_a_lost_commit_are_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let root = dir.path().join("events");
        append_events(&db, 0, 120, 1_795_737_000_000).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(300)).await;
        // As if the process died after the renames and before the commits reached the journal.
        for p in 0..2 {
            db.commit(GROUP, topic::EVENTS, p, 0).await.unwrap();
        }
        // And in the middle of a write: a temporary file nobody may read.
        std::fs::write(root.join("date=2026-11-26").join(".p0000-1-2.parquet.tmp"), b"torn").unwrap();
        append_events(&db, 120, 30, 1_795_737_000_000).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(300)).await;
        let (ids, files) = read_back(&root);
        assert_eq!(ids.len(), 150, "{files} files");
        assert_once_each(&ids, "an event is in two files");
    }

    /// A replaying stage appends events again with their ids: once in the run that flushed the
    /// originals (the ids are remembered), once after a restart (refilled from the files).
    #[tokio::test]
    async fn an_event_the_log_holds_twice_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let root = dir.path().join("events");
        let at = 1_795_737_000_000;
        append_events(&db, 0, 100, at).await;
        append_events(&db, 50, 100, at).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(300)).await;
        assert_eq!(read_back(&root).0.len(), 150);
        append_events(&db, 0, 170, at).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(300)).await;
        let (ids, _) = read_back(&root);
        assert_eq!(ids.len(), 170);
        assert_once_each(&ids, "an event is in two files");
    }

    /// Every final file's rows (notification ids) as a reader outside Herald sees them: list
    /// `date=*/*.parquet`, then open each; `None` when a listed file was gone at its open.
    fn outside_read(root: &std::path::Path) -> Option<Vec<String>> {
        let mut ids = Vec::new();
        for day in std::fs::read_dir(root).ok()? {
            let day = day.ok()?.path();
            if !day.file_name()?.to_string_lossy().starts_with("date=") {
                continue;
            }
            let names: Vec<PathBuf> = std::fs::read_dir(&day).ok()?.map(|e| e.unwrap().path()).collect();
            for path in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
                let file = match std::fs::File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                    Err(e) => panic!("{}: {e}", path.display()),
                };
                ids.extend(notification_ids(file));
            }
        }
        ids.sort();
        Some(ids)
    }

    /// Three rounds of small files, each compacted while a reader lists and reads the files over
    /// and over: every complete read sees every event once; the files shrink to one per
    /// partition; the sink restarts on the merged files without writing anything again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_merges_small_files_and_a_reader_never_sees_an_event_twice_or_misses_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let root = dir.path().join("events");
        let at = 1_795_737_000_000;
        let mut total = 0;
        for round in 0..3 {
            for _ in 0..5 {
                append_events(&db, total, 40, at).await;
                total += 40;
                run_until_stopped(sink(&db, root.clone()), Duration::from_millis(120)).await;
            }
            let files_before = read_back(&root).1;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (root, stop) = (root.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let (mut complete, mut interrupted) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) || complete == 0 {
                        match outside_read(&root) {
                            Some(ids) => {
                                assert_eq!(ids.len(), total, "a complete read saw {} events", ids.len());
                                assert_once_each(&ids, "an event read twice");
                                complete += 1;
                            }
                            None => interrupted += 1,
                        }
                    }
                    (complete, interrupted)
                })
            };
            let done = tokio::task::spawn_blocking({
                let root = root.clone();
                move || compact::compact(&root, 64 << 20).unwrap()
            })
            .await
            .unwrap();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let (complete, interrupted) = reader.join().unwrap();
            println!("round {round}: {done:?}; reads during it: {complete} complete, {interrupted} interrupted");
            assert_eq!(
                (done.files_in, done.files_out),
                (files_before, 2),
                "every small file merged, one per partition"
            );
            let (ids, files) = read_back(&root);
            assert_eq!((ids.len(), files), (total, 2), "one file per partition after compaction");
        }
        // The sink restarts on merged files: nothing written again, and new events land.
        append_events(&db, total, 10, at).await;
        run_until_stopped(sink(&db, root.clone()), Duration::from_millis(200)).await;
        let (ids, _) = read_back(&root);
        assert_eq!(ids.len(), total + 10);
        assert_once_each(&ids, "an event is in two files");
    }

    /// The sink compacts on its own every `compact_interval`, and a start clears the staging
    /// area a crash left (a day half built, an old day swapped out).
    #[tokio::test]
    async fn the_sink_compacts_on_its_interval_and_clears_leftovers_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let root = dir.path().join("events");
        let leftover = compact::staging(&root).join("building").join("date=2026-11-26");
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("p0000-00000000000000000000-00000000000000000001.parquet"), b"half").unwrap();
        let mut sink = sink(&db, root.clone());
        sink.compact_interval = Some(Duration::from_millis(150));
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        sink.start(token.clone(), &mut tasks);
        for i in 0..8 {
            append_events(&db, i * 30, 30, 1_795_737_000_000).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        token.cancel();
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        let (ids, files) = read_back(&root);
        assert_eq!(ids.len(), 240);
        assert!(files <= 4, "{files} files left after compactions");
        assert!(!leftover.exists(), "the staging area a crash left is cleared on start");
    }
}
