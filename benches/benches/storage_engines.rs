//! fjall against redb on the embedded log's workload, to pick the engine by measurement.
//!
//! - `append`: a batch of 1,000 records of 200 bytes under consecutive big-endian offsets, made
//!   durable once per batch (fjall: one write batch then `persist(SyncData)`; redb: one write
//!   transaction committed with its default durability, `Immediate`).
//! - `read`: 1,000 consecutive records by range scan from a log of 100,000.
//!
//! Run: `cargo bench -p herald-benches --bench storage_engines`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fjall::{KeyspaceCreateOptions, PersistMode};
use redb::{ReadableDatabase, TableDefinition};
use std::hint::black_box;
use std::time::Duration;

const BATCH: u64 = 1_000;
const VALUE_BYTES: usize = 200;
const PREFILL: u64 = 100_000;
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");

struct Fjall {
    _dir: tempfile::TempDir,
    db: fjall::Database,
    records: fjall::Keyspace,
    next: u64,
}

impl Fjall {
    fn new() -> Fjall {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open fjall");
        let records = db.keyspace("records", KeyspaceCreateOptions::default).expect("keyspace");
        Fjall { _dir: dir, db, records, next: 0 }
    }

    fn append_batch(&mut self, value: &[u8]) {
        let mut batch = self.db.batch();
        for _ in 0..BATCH {
            batch.insert(&self.records, self.next.to_be_bytes(), value);
            self.next += 1;
        }
        batch.commit().expect("fjall commit");
        self.db.persist(PersistMode::SyncData).expect("fjall persist");
    }

    fn read_batch(&self, from: u64) -> usize {
        let mut bytes = 0;
        for guard in self.records.range(from.to_be_bytes()..(from + BATCH).to_be_bytes()) {
            let (_, value) = guard.into_inner().expect("fjall read");
            bytes += value.len();
        }
        bytes
    }
}

struct Redb {
    _dir: tempfile::TempDir,
    db: redb::Database,
    next: u64,
}

impl Redb {
    fn new() -> Redb {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = redb::Database::create(dir.path().join("bench.redb")).expect("open redb");
        Redb { _dir: dir, db, next: 0 }
    }

    fn append_batch(&mut self, value: &[u8]) {
        let tx = self.db.begin_write().expect("redb begin");
        {
            let mut table = tx.open_table(RECORDS).expect("redb table");
            for _ in 0..BATCH {
                table.insert(self.next, value).expect("redb insert");
                self.next += 1;
            }
        }
        tx.commit().expect("redb commit");
    }

    fn read_batch(&self, from: u64) -> usize {
        let tx = self.db.begin_read().expect("redb read");
        let table = tx.open_table(RECORDS).expect("redb table");
        let mut bytes = 0;
        for entry in table.range(from..from + BATCH).expect("redb range") {
            let (_, value) = entry.expect("redb read");
            bytes += value.value().len();
        }
        bytes
    }
}

fn append(c: &mut Criterion) {
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut group = c.benchmark_group("storage_engines/append_1000x200B_durable");
    group.throughput(Throughput::Elements(BATCH));
    let mut fjall = Fjall::new();
    group.bench_function("fjall", |b| b.iter(|| fjall.append_batch(black_box(&value))));
    let mut redb = Redb::new();
    group.bench_function("redb", |b| b.iter(|| redb.append_batch(black_box(&value))));
    group.finish();
}

fn read(c: &mut Criterion) {
    let value = vec![0x5Au8; VALUE_BYTES];
    let mut fjall = Fjall::new();
    let mut redb = Redb::new();
    while fjall.next < PREFILL {
        fjall.append_batch(&value);
        redb.append_batch(&value);
    }
    let mut group = c.benchmark_group("storage_engines/read_1000x200B");
    group.throughput(Throughput::Elements(BATCH));
    let mut from = 0;
    group.bench_function("fjall", |b| {
        b.iter(|| {
            from = (from + BATCH) % PREFILL;
            black_box(fjall.read_batch(from))
        })
    });
    group.bench_function("redb", |b| {
        b.iter(|| {
            from = (from + BATCH) % PREFILL;
            black_box(redb.read_batch(from))
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = append, read }
criterion_main!(benches);
