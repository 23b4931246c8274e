//! The embedded log ([`herald_connectors::embedded::EmbeddedDb`]) through the `TopicLog` interface.
//!
//! - `append`: one append of 1,000 records of 200 bytes, returning once durable.
//! - `append_8_writers`: eight concurrent appends of 125 records each (1,000 in all): what the
//!   group commit buys when partition workers append at the same time.
//! - `read`: 1,000 consecutive records from a partition of 100,000.
//!
//! Run: `cargo bench -p herald-benches --bench log`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald_connectors::embedded::{CommitStats, EmbeddedDb, EmbeddedOptions};
use herald_schemas::topic::{Append, Record, TopicLog};
use std::hint::black_box;
use std::time::Duration;

const BATCH: usize = 1_000;
const VALUE_BYTES: usize = 200;
const PREFILL: u64 = 100_000;

fn records(n: usize) -> Vec<Record> {
    (0..n).map(|i| Record { key: format!("user-{i}").into_bytes(), value: vec![0xA5; VALUE_BYTES] }).collect()
}

fn part(topic: &str, partition: u32, records: Vec<Record>) -> Vec<Append> {
    vec![Append { topic: topic.to_string(), partition, records }]
}

fn bench_log(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // Separate databases, so reads do not pay for the compaction of what the append benches wrote.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = EmbeddedDb::open(&dir.path().join("append"), EmbeddedOptions::default()).expect("open");
    let read_db = EmbeddedDb::open(&dir.path().join("read"), EmbeddedOptions::default()).expect("open");
    runtime.block_on(async {
        db.ensure_topic("bench-append", 8).await.expect("topic");
        read_db.ensure_topic("bench-read", 1).await.expect("topic");
        for _ in 0..PREFILL / BATCH as u64 {
            read_db.append(part("bench-read", 0, records(BATCH))).await.expect("prefill");
        }
    });

    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(BATCH as u64));
    let batch = records(BATCH);
    let before = db.commit_stats();
    group.bench_function("append_1000x200B_durable", |b| {
        b.to_async(&runtime).iter_batched(
            || part("bench-append", 0, batch.clone()),
            |parts| {
                let db = &db;
                async move { db.append(parts).await.expect("append") }
            },
            BatchSize::SmallInput,
        )
    });
    report_sharing("append_1000x200B_durable", &db, before);
    let slice = records(BATCH / 8);
    let before = db.commit_stats();
    group.bench_function("append_8_writers_x125x200B_durable", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..8u32).map(|p| part("bench-append", p, slice.clone())).collect::<Vec<_>>(),
            |parts| {
                let db = db.clone();
                async move {
                    let writers: Vec<_> = parts
                        .into_iter()
                        .map(|parts| {
                            let db = db.clone();
                            tokio::spawn(async move { db.append(parts).await.expect("append") })
                        })
                        .collect();
                    for writer in writers {
                        writer.await.expect("writer");
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    report_sharing("append_8_writers_x125x200B_durable", &db, before);
    let mut from = 0u64;
    group.bench_function("read_1000x200B", |b| {
        b.to_async(&runtime).iter(|| {
            from = (from + BATCH as u64) % PREFILL;
            let db = &read_db;
            let at = from;
            async move {
                let got = db.read("bench-read", 0, at, BATCH, Duration::ZERO).await.expect("read");
                black_box(got.len())
            }
        })
    });
    group.finish();
}

/// How many durable writes each fsync served while `bench` ran (warm-up included).
fn report_sharing(bench: &str, db: &EmbeddedDb, before: CommitStats) {
    let after = db.commit_stats();
    let (syncs, writes) = (after.syncs - before.syncs, after.waiters - before.waiters);
    eprintln!(
        "{bench}: group commit made {writes} writes durable with {syncs} fsyncs ({:.2} per fsync)",
        writes as f64 / syncs.max(1) as f64
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench_log }
criterion_main!(benches);
