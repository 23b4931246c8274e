//! Analytics: delivery events into Arrow record batches (the sink's per-event cost), Parquet
//! encoding of a flush, and a `GROUP BY channel, status` with DataFusion over many events, in
//! memory and stored as Parquet files.
//!
//! `cargo bench -p herald-benches --bench analytics`; `HERALD_BENCH_GROUP_BY_ROWS` sets the rows
//! of the group-by table (default 50 million, as issue 5's budget: ≥ 50 million rows/s).

use arrow::array::{ArrayRef, DictionaryArray, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use herald_schemas::analytics::{EventRows, RecipientHasher};
use herald_schemas::{DeliveryEvent, DeliveryId, EventKind, NotificationId, Route};
use std::sync::Arc;

const CHANNELS: [Route; 5] = [Route::Apns, Route::Fcm, Route::Webpush, Route::Sms, Route::Email];
const STATUSES: [EventKind; 4] = [EventKind::Sent, EventKind::Failed, EventKind::Delivered, EventKind::Bounced];

/// Delivery events as the dispatchers emit them: every column filled.
fn events(n: usize) -> Vec<DeliveryEvent> {
    let hasher = RecipientHasher::new("bench");
    (0..n)
        .map(|i| {
            let notification = NotificationId(format!("0194a3c2-7f00-7000-8000-{i:012x}"));
            let delivery = DeliveryId(format!("d-{i:016x}"));
            let route = CHANNELS[i % CHANNELS.len()];
            let mut e = DeliveryEvent::new(
                &notification,
                "shop",
                &format!("user-{}", i % 10_000),
                STATUSES[i % 4],
                None,
                None,
                1_795_737_000_000 + i as u64,
            )
            .for_delivery(&delivery, route, 1);
            e.template = Some(["welcome", "order_shipped", "promo"][i % 3].into());
            e.category = Some(["transactional", "marketing"][i % 2].into());
            e.locale = Some(["en", "ko-KR", "de"][i % 3].into());
            e.requested_at_ms = Some(1_795_737_000_000);
            e.recipient = Some(hasher.hash(&format!("user-{i}@example.org")));
            e
        })
        .collect()
}

fn into_arrow(c: &mut Criterion) {
    let n = 65_536;
    let events = events(n);
    let mut group = c.benchmark_group("analytics");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("events_into_arrow", n), |b| {
        b.iter(|| {
            let mut rows = EventRows::new();
            for e in &events {
                rows.push(e);
            }
            rows.finish().expect("a batch")
        })
    });
    let batch = {
        let mut rows = EventRows::new();
        events.iter().for_each(|e| rows.push(e));
        rows.finish().expect("a batch")
    };
    group.bench_function(BenchmarkId::new("parquet_zstd_encode", n), |b| {
        b.iter(|| herald::analytics::sink::encode_parquet(&batch).expect("encoded"))
    });
    group.finish();
}

/// `rows` events with only the grouped columns, dictionary encoded as in the files.
fn channel_status_table(rows: usize) -> Vec<RecordBatch> {
    let dictionary = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("channel", dictionary(), true),
        Field::new("status", dictionary(), false),
    ]));
    let channels = Arc::new(StringArray::from(vec!["push", "sms", "email"]));
    let statuses = Arc::new(StringArray::from(vec!["sent", "failed", "delivered", "bounced"]));
    let per_batch = 65_536;
    (0..rows.div_ceil(per_batch))
        .map(|b| {
            let len = per_batch.min(rows - b * per_batch);
            let keys = |m: i32| Int32Array::from_iter_values((0..len as i32).map(move |i| (i * 7 + b as i32) % m));
            let channel = DictionaryArray::<Int32Type>::try_new(keys(3), channels.clone()).expect("keys in range");
            let status = DictionaryArray::<Int32Type>::try_new(keys(4), statuses.clone()).expect("keys in range");
            RecordBatch::try_new(schema.clone(), vec![Arc::new(channel) as ArrayRef, Arc::new(status)])
                .expect("a batch")
        })
        .collect()
}

fn group_by(c: &mut Criterion) {
    let rows: usize =
        std::env::var("HERALD_BENCH_GROUP_BY_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000_000);
    let batches = channel_status_table(rows);
    let schema = batches[0].schema();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let ctx = SessionContext::new();
    // Two partitions: one per core.
    let half = batches.len() / 2;
    let parts = vec![batches[..half].to_vec(), batches[half..].to_vec()];
    ctx.register_table("events", Arc::new(MemTable::try_new(schema, parts).expect("a table"))).expect("registered");
    let mut group = c.benchmark_group("analytics");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    bench_group_by(&mut group, "group_by_channel_status", rows, &runtime, &ctx);
    // The same rows stored as the sink stores them (Parquet, zstd, dictionary pages), eight
    // files, read through DataFusion's Parquet scan: the query path of `herald sql`.
    let dir = tempfile::tempdir().expect("a temp dir");
    for (i, part) in batches.chunks(batches.len().div_ceil(8)).enumerate() {
        let file = std::fs::File::create(dir.path().join(format!("part-{i}.parquet"))).expect("a file");
        let props = herald::analytics::sink::writer_properties().expect("writer properties");
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, part[0].schema(), Some(props)).expect("a writer");
        part.iter().for_each(|b| writer.write(b).expect("written"));
        writer.close().expect("closed");
    }
    drop(batches);
    let files = SessionContext::new();
    runtime
        .block_on(files.register_parquet(
            "events",
            dir.path().to_str().expect("a UTF-8 path"),
            datafusion::prelude::ParquetReadOptions::default(),
        ))
        .expect("registered");
    bench_group_by(&mut group, "group_by_channel_status_parquet", rows, &runtime, &files);
    group.finish();
}

/// Times `GROUP BY channel, status` over the `events` table of `ctx`.
fn bench_group_by(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rows: usize,
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
) {
    group.bench_function(BenchmarkId::new(name, rows), |b| {
        b.iter(|| {
            runtime.block_on(async {
                let frame = ctx
                    .sql("SELECT channel, status, count(*) FROM events GROUP BY channel, status")
                    .await
                    .expect("planned");
                frame.collect().await.expect("ran")
            })
        })
    });
}

criterion_group!(benches, into_arrow, group_by);
criterion_main!(benches);
