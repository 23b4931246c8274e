//! The analytics sink: `herald-events` → Arrow record batches → Parquet files, exactly once.
//!
//! One reader per partition of `herald-events` (consumer group [`GROUP`]); each partition's
//! events build up in [`EventRows`] until the sink flushes: when `flush_rows` rows are buffered
//! over all partitions, every `flush_interval`, at a day boundary (a file holds one day), and
//! when the runtime stops (SIGTERM), so a graceful shutdown leaves nothing buffered. How a flush
//! stays exactly once across crashes is in [`super::files`]. A SIGKILL loses only the buffer,
//! which is still in `herald-events` past the committed offset and is read again.

use super::files::{self, FileRange};
use crate::runtime::queue::{Batch, QueueRx};
use crate::runtime::reader::{ReadSettings, spawn_readers};
use crate::runtime::supervise::{TaskFailed, TaskResult};
use herald_schemas::analytics::EventRows;
use herald_schemas::codec::CodecError;
use herald_schemas::topic::{self, Commit, StoredRecord, TopicLog};
use herald_schemas::{DeliveryEvent, EncodedEvent};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
    pub event_partitions: u32,
    pub read: ReadSettings,
    /// Flush once this many rows are buffered (all partitions together).
    pub flush_rows: usize,
    /// Flush at least this often while events come in.
    pub flush_interval: Duration,
}

/// One partition's events since its last flush, all of one UTC day.
struct Pending {
    /// The offset the next file starts at (everything before it is in files or committed).
    from: u64,
    /// The offset after the last record read.
    to: u64,
    day: String,
    rows: EventRows,
}

/// An event with its offset, so files can be cut exactly at a day boundary.
fn decode_event(record: &StoredRecord) -> Result<(u64, DeliveryEvent), CodecError> {
    let event = EncodedEvent::from_record(&record.key, record.value.clone()).ok_or(CodecError::Empty)?.decode()?;
    Ok((record.offset, event))
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
        let mut pending = HashMap::new();
        for partition in 0..self.event_partitions {
            let committed = self.log.committed(GROUP, topic::EVENTS, partition).await.map_err(Self::failed)?;
            let from = match found.ends.get(&partition) {
                // Written but not committed before a crash: never again.
                Some(&end) if end > committed => {
                    self.log.commit(GROUP, topic::EVENTS, partition, end).await.map_err(Self::failed)?;
                    end
                }
                _ => committed,
            };
            pending.insert(partition, Pending { from, to: from, day: String::new(), rows: EventRows::new() });
        }
        tracing::info!(
            dir = %self.root.display(),
            files = found.files,
            removed_temporaries = found.removed_temporaries,
            "analytics sink started"
        );
        let mut readers = JoinSet::new();
        let sources = (0..self.event_partitions).map(|p| (topic::EVENTS.to_string(), p));
        let mut rx: QueueRx<(u64, DeliveryEvent)> =
            spawn_readers("analytics", &self.log, sources, GROUP, &self.read, decode_event, &token, &mut readers);
        let mut next_flush = Instant::now() + self.flush_interval;
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
        for (offset, event) in batch.items {
            let day = files::utc_day(event.at_ms);
            let Some(p) = pending.get_mut(&partition) else { continue };
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
            // Records the reader skipped (undecodable) at the end are covered too.
            p.to = p.to.max(next_offset);
        }
        Ok(())
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

/// One record batch as a Parquet file in memory, zstd compressed.
pub fn encode_parquet(batch: &arrow::record_batch::RecordBatch) -> Result<Vec<u8>, SinkError> {
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props))?;
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
            event_partitions: 2,
            read: ReadSettings {
                batch_size: 100,
                read_wait: Duration::from_millis(20),
                queue_records: 200,
                linger: Duration::ZERO,
            },
            flush_rows: 64,
            flush_interval: Duration::from_millis(50),
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
                let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = batch.column_by_name("notification_id").unwrap();
                    let strings = arrow::array::AsArray::as_string::<i32>(column);
                    ids.extend(strings.iter().map(|s| s.unwrap().to_string()));
                }
            }
        }
        ids.sort();
        (ids, count)
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
        ids.windows(2).for_each(|w| assert_ne!(w[0], w[1], "an event is in two files"));
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
        ids.windows(2).for_each(|w| assert_ne!(w[0], w[1], "an event is in two files"));
    }
}
