//! Read-only SQL over delivery events with DataFusion: `herald sql` and `POST /v1/analytics/sql`.
//!
//! Tables and views:
//! - `events`: one row per event ([`event_schema`] plus `date`, the UTC day). It is the Parquet
//!   files *and* the events not yet flushed to them, read from `herald-events`: the files are
//!   listed first, and for each partition the log is read from where the listed files end, so a
//!   flush racing the query neither repeats nor hides an event.
//! - `deliveries`: one row per delivery: its final status (the latest event), attempts, request
//!   time, time of the first send and time to send.
//! - `funnel`: by day of request, channel, template and category, the deliveries that were
//!   requested (fanned out), sent, delivered, opened and clicked (a delivery counts once at each
//!   step, whatever day its open came).
//!
//! Only `SELECT`, `WITH … SELECT` and `EXPLAIN` of those are accepted; a query runs under a
//! time limit and returns at most `row_limit` rows (and says when it cut).

use super::files::FileRange;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use herald_schemas::DeliveryEvent;
use herald_schemas::analytics::{EventRows, event_schema};
use herald_schemas::codec;
use herald_schemas::topic::{self, TopicLog};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("only read-only queries are accepted (SELECT, WITH … SELECT, EXPLAIN); got {0}")]
    NotReadOnly(String),
    #[error("one statement per query, got {0}")]
    Statements(usize),
    #[error("invalid SQL: {0}")]
    Invalid(String),
    #[error("the query ran longer than its limit of {0:?} and was stopped")]
    TimedOut(Duration),
    #[error("the query failed: {0}")]
    Failed(String),
    #[error("cannot read the analytics files in {dir}: {detail}")]
    Files { dir: PathBuf, detail: String },
    #[error(
        "more than {limit} events are in herald-events but not in the analytics files: is the \
         analytics sink off (analytics.enabled) or far behind? Start the server with it on to flush them"
    )]
    TailTooLong { limit: usize },
    #[error("cannot read herald-events: {0}")]
    Log(#[from] topic::LogError),
}

impl SqlError {
    /// Whether the query (not Herald) is at fault: a 4xx.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            SqlError::NotReadOnly(_) | SqlError::Statements(_) | SqlError::Invalid(_) | SqlError::TimedOut(_)
        )
    }
}

/// Limits of one query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub time: Duration,
    pub rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { time: Duration::from_secs(30), rows: 10_000 }
    }
}

/// A query's answer.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// More rows existed than the row limit let through.
    pub truncated: bool,
}

/// Refuses anything but one `SELECT` / `WITH` / `EXPLAIN` of a query, with a clear reason.
pub fn check_read_only(sql: &str) -> Result<(), SqlError> {
    let statements = DFParser::parse_sql(sql).map_err(|e| SqlError::Invalid(e.to_string()))?;
    if statements.len() != 1 {
        return Err(SqlError::Statements(statements.len()));
    }
    let read_only = |s: &Statement| matches!(s, Statement::Query(_));
    match &statements[0] {
        DfStatement::Statement(s) if read_only(s) => Ok(()),
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Explain { statement, .. } if read_only(statement) => Ok(()),
            other => Err(SqlError::NotReadOnly(first_words(&other.to_string()))),
        },
        DfStatement::Explain(explain) => match explain.statement.as_ref() {
            DfStatement::Statement(s) if read_only(s) => Ok(()),
            _ => Err(SqlError::NotReadOnly("EXPLAIN of a statement that is not a query".into())),
        },
        other => Err(SqlError::NotReadOnly(first_words(&other.to_string()))),
    }
}

fn first_words(statement: &str) -> String {
    let words: Vec<&str> = statement.split_whitespace().take(3).collect();
    format!("\"{} …\"", words.join(" "))
}

/// Where the events are: the files' directory and the log for what is not in files yet.
pub struct EventSource<'a> {
    pub root: &'a Path,
    pub log: &'a Arc<dyn TopicLog>,
    pub partitions: u32,
}

/// A session with `events`, `deliveries` and `funnel` registered, as of now.
pub async fn session(source: &EventSource<'_>) -> Result<SessionContext, SqlError> {
    let config = SessionConfig::new().with_target_partitions(2).with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let (urls, ends) = list_files(source.root)?;
    let failed = |e: datafusion::error::DataFusionError| SqlError::Failed(e.to_string());
    if urls.is_empty() {
        ctx.register_table("event_files", Arc::new(MemTable::try_new(event_schema(), vec![vec![]]).map_err(failed)?))
            .map_err(failed)?;
    } else {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config =
            ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(event_schema());
        ctx.register_table("event_files", Arc::new(ListingTable::try_new(config).map_err(failed)?)).map_err(failed)?;
    }
    let tail = read_tail(source, &ends).await?;
    ctx.register_table("event_tail", Arc::new(MemTable::try_new(event_schema(), vec![tail]).map_err(failed)?))
        .map_err(failed)?;
    for view in VIEWS {
        ctx.sql(view).await.map_err(failed)?;
    }
    Ok(ctx)
}

const VIEWS: [&str; 3] = [
    "CREATE VIEW events AS
     SELECT *, CAST(event_time AS DATE) AS date FROM (
        SELECT * FROM event_files UNION ALL SELECT * FROM event_tail)",
    "CREATE VIEW deliveries AS
     SELECT delivery_id,
            first_value(notification_id) AS notification_id,
            first_value(client) AS client,
            first_value(user_id) AS user_id,
            first_value(channel) AS channel,
            first_value(provider) AS provider,
            first_value(template) AS template,
            first_value(locale) AS locale,
            first_value(category) AS category,
            last_value(status ORDER BY event_time) AS status,
            max(attempt) AS attempts,
            min(request_time) AS request_time,
            min(CASE WHEN status = 'sent' THEN event_time END) AS sent_time,
            min(CASE WHEN status = 'sent' THEN latency_ms END) AS time_to_send_ms
     FROM events WHERE delivery_id IS NOT NULL
     GROUP BY delivery_id",
    "CREATE VIEW funnel AS
     SELECT date, channel, template, category,
            count(*) AS requested,
            sum(CASE WHEN sent THEN 1 ELSE 0 END) AS sent,
            sum(CASE WHEN delivered THEN 1 ELSE 0 END) AS delivered,
            sum(CASE WHEN opened THEN 1 ELSE 0 END) AS opened,
            sum(CASE WHEN clicked THEN 1 ELSE 0 END) AS clicked
     FROM (
        SELECT delivery_id,
               CAST(min(coalesce(request_time, event_time)) AS DATE) AS date,
               first_value(channel) AS channel,
               first_value(template) AS template,
               first_value(category) AS category,
               bool_or(status = 'sent') AS sent,
               bool_or(status = 'delivered') AS delivered,
               bool_or(status = 'opened') AS opened,
               bool_or(status = 'clicked') AS clicked
        FROM events WHERE delivery_id IS NOT NULL
        GROUP BY delivery_id)
     GROUP BY date, channel, template, category",
];

/// The final files now (as URLs) and, per partition, the offset their ranges reach.
fn list_files(root: &Path) -> Result<(Vec<ListingTableUrl>, HashMap<u32, u64>), SqlError> {
    let failed = |detail: String| SqlError::Files { dir: root.to_path_buf(), detail };
    let mut urls = Vec::new();
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let days = match std::fs::read_dir(root) {
        Ok(days) => days,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((urls, ends)),
        Err(e) => return Err(failed(e.to_string())),
    };
    for day in days {
        let day = day.map_err(|e| failed(e.to_string()))?;
        if !day.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        for entry in std::fs::read_dir(day.path()).map_err(|e| failed(e.to_string()))? {
            let entry = entry.map_err(|e| failed(e.to_string()))?;
            let Some(range) = FileRange::parse(&entry.file_name().to_string_lossy()) else { continue };
            let end = ends.entry(range.partition).or_insert(0);
            *end = (*end).max(range.to);
            let path = entry.path();
            let absolute = std::path::absolute(&path).map_err(|e| failed(e.to_string()))?;
            urls.push(ListingTableUrl::parse(absolute.to_string_lossy()).map_err(|e| failed(e.to_string()))?);
        }
    }
    Ok((urls, ends))
}

/// The most events read from the log for one query. The sink keeps the unflushed tail to about
/// a second of events; a tail this long means the sink is not running (`analytics.enabled =
/// false`) or has fallen far behind, and reading it all would hold it all in memory.
pub const TAIL_LIMIT: usize = 2_000_000;

/// The events of each partition from where the listed files end to the end of the log; an event
/// the log holds twice (a replay's repeat) once.
async fn read_tail(source: &EventSource<'_>, ends: &HashMap<u32, u64>) -> Result<Vec<RecordBatch>, SqlError> {
    let mut rows = EventRows::new();
    let mut seen = std::collections::HashSet::new();
    let mut unflushed = 0;
    for partition in 0..source.partitions {
        let from = ends.get(&partition).copied().unwrap_or(0);
        unflushed += source.log.end_offset(topic::EVENTS, partition).await?.saturating_sub(from);
    }
    if unflushed > TAIL_LIMIT as u64 {
        return Err(SqlError::TailTooLong { limit: TAIL_LIMIT });
    }
    for partition in 0..source.partitions {
        let mut from = ends.get(&partition).copied().unwrap_or(0);
        let end = source.log.end_offset(topic::EVENTS, partition).await?;
        while from < end {
            let records = source.log.read(topic::EVENTS, partition, from, 8192, Duration::ZERO).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for record in records {
                // Undecodable records are skipped, as the sink skips them.
                if let Ok(event) = codec::decode::<DeliveryEvent>(&record.value)
                    && seen.insert(herald_schemas::ids::fingerprint(&event.event_id))
                {
                    rows.push(&event);
                }
            }
        }
    }
    Ok(vec![rows.finish().map_err(|e| SqlError::Failed(e.to_string()))?])
}

/// Builds a session as of now and runs one read-only query in it. A file listed and then gone
/// before it was read (a compaction swapped its day in between; see [`super::compact`]) fails the
/// query with "not found"; it is run once more on a fresh listing.
pub async fn run(source: &EventSource<'_>, sql: &str, limits: Limits) -> Result<Answer, SqlError> {
    check_read_only(sql)?;
    let answer = query(&session(source).await?, sql, limits).await;
    match answer {
        Err(SqlError::Failed(message)) if message.to_ascii_lowercase().contains("not found") => {
            tracing::debug!(%message, "an event file went away during the query; running it again");
            query(&session(source).await?, sql, limits).await
        }
        answer => answer,
    }
}

/// Runs one read-only query under `limits`.
pub async fn query(ctx: &SessionContext, sql: &str, limits: Limits) -> Result<Answer, SqlError> {
    check_read_only(sql)?;
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let run = async {
        let frame = ctx.sql_with_options(sql, options).await.map_err(|e| SqlError::Invalid(e.to_string()))?;
        let frame = frame.limit(0, Some(limits.rows + 1)).map_err(|e| SqlError::Invalid(e.to_string()))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(|e| SqlError::Failed(e.to_string()))?;
        Ok::<_, SqlError>((schema, batches))
    };
    let (schema, mut batches) =
        tokio::time::timeout(limits.time, run).await.map_err(|_| SqlError::TimedOut(limits.time))??;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let truncated = total > limits.rows;
    if truncated {
        let mut keep = limits.rows;
        for batch in &mut batches {
            let n = batch.num_rows().min(keep);
            *batch = batch.slice(0, n);
            keep -= n;
        }
    }
    Ok(Answer { schema, batches, rows: total.min(limits.rows), truncated })
}

/// How `herald sql` prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// The answer as text in `format` (JSON: one array of row objects).
pub fn render(answer: &Answer, format: Format) -> Result<String, SqlError> {
    let failed = |e: arrow::error::ArrowError| SqlError::Failed(e.to_string());
    match format {
        Format::Table => {
            Ok(arrow::util::pretty::pretty_format_batches(&answer.batches).map_err(failed)?.to_string() + "\n")
        }
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                for batch in &answer.batches {
                    writer.write(batch).map_err(failed)?;
                }
            }
            String::from_utf8(out).map_err(|e| SqlError::Failed(e.to_string()))
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            let batches: Vec<&RecordBatch> = answer.batches.iter().collect();
            writer.write_batches(&batches).map_err(failed)?;
            writer.finish().map_err(failed)?;
            let mut text = String::from_utf8(writer.into_inner()).map_err(|e| SqlError::Failed(e.to_string()))?;
            if text.is_empty() {
                text.push_str("[]");
            }
            text.push('\n');
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::sink::AnalyticsSink;
    use crate::runtime::reader::ReadSettings;
    use crate::runtime::requests::event_appends;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::{EventKind, NotificationId};

    /// A data directory with `flushed` events in Parquet files and `tail` more only in the log.
    async fn events(dir: &Path, flushed: usize, tail: usize) -> Arc<dyn TopicLog> {
        let db = Arc::new(EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap());
        db.ensure_topic(topic::EVENTS, 2).await.unwrap();
        let append = |from: usize, n: usize| {
            let events: Vec<DeliveryEvent> = (from..from + n)
                .map(|i| {
                    let id = NotificationId(format!("n-{i}"));
                    DeliveryEvent::new(&id, "c", "u", EventKind::Accepted, None, None, 1_795_737_000_000)
                })
                .collect();
            event_appends(&events, 2)
        };
        db.append(append(0, flushed)).await.unwrap();
        let sink = AnalyticsSink {
            log: db.clone(),
            root: dir.join("events"),
            partitions: std::sync::Arc::from([0, 1]),
            read: ReadSettings {
                batch_size: 1000,
                read_wait: Duration::from_millis(20),
                queue_records: 2000,
                linger: Duration::ZERO,
            },
            flush_rows: 10_000,
            flush_interval: Duration::from_millis(20),
            dedup_window: 1_000,
            compact_interval: None,
            compact_target_bytes: 64 << 20,
        };
        let token = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        sink.start(token.clone(), &mut tasks);
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        db.append(append(flushed, tail)).await.unwrap();
        db
    }

    /// A SQL session over [`events`]`(dir, flushed, tail)`.
    async fn session_over(dir: &Path, flushed: usize, tail: usize) -> SessionContext {
        let log = events(dir, flushed, tail).await;
        let root = dir.join("events");
        session(&EventSource { root: &root, log: &log, partitions: 2 }).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_and_the_unflushed_tail_are_counted_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_over(dir.path(), 300, 45).await;
        let answer =
            query(&ctx, "SELECT count(*) AS n, count(DISTINCT notification_id) AS d FROM events", Limits::default())
                .await
                .unwrap();
        let json = render(&answer, Format::Json).unwrap();
        assert!(json.contains(r#""n":345"#) && json.contains(r#""d":345"#), "{json}");
        let cut =
            query(&ctx, "SELECT * FROM events", Limits { time: Duration::from_secs(30), rows: 10 }).await.unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.rows, 10);
        assert_eq!(cut.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_over_its_time_limit_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_over(dir.path(), 0, 2000).await;
        // 2000³ = 8 × 10⁹ row triples to compare: far more than 200 ms of work (a plain count of a
        // cross join would be answered from the row counts alone).
        let slow = "SELECT count(*) FROM events a, events b, events c \
                    WHERE a.event_id < b.event_id AND b.event_id < c.event_id";
        let error = query(&ctx, slow, Limits { time: Duration::from_millis(200), rows: 10 }).await.unwrap_err();
        assert!(matches!(error, SqlError::TimedOut(_)), "{error}");
        assert!(error.is_client_error());
    }

    #[test]
    fn only_queries_pass() {
        for ok in [
            "SELECT 1",
            "select status, count(*) from events group by status",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "EXPLAIN SELECT * FROM events",
        ] {
            check_read_only(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("DROP TABLE events", "read-only"),
            ("CREATE TABLE t AS SELECT 1", "read-only"),
            ("INSERT INTO events VALUES (1)", "read-only"),
            ("COPY events TO '/tmp/x.parquet'", "read-only"),
            ("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'", "read-only"),
            ("SET datafusion.execution.batch_size = 1", "read-only"),
            ("SELECT 1; SELECT 2", "one statement"),
            ("SELEC 1", "invalid SQL"),
        ] {
            let error = check_read_only(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
