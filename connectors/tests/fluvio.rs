//! The Fluvio topic log against a live cluster: runs when `HERALD_FLUVIO_ENDPOINT` (`host:port`)
//! is set, and says it was skipped otherwise. Each run uses its own topic-name prefix.
#![cfg(feature = "fluvio")]

use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
use herald_connectors::fluvio::{FluvioLog, FluvioOptions};
use herald_schemas::topic::{Append, LogError, Record, TopicLog};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn connect() -> Option<(tempfile::TempDir, FluvioLog)> {
    let Ok(endpoint) = std::env::var("HERALD_FLUVIO_ENDPOINT") else {
        eprintln!("skipped: HERALD_FLUVIO_ENDPOINT is not set (host:port of a Fluvio cluster's SC)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let offsets = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let prefix = format!("t{:08x}-", rand_u32());
    let options = FluvioOptions { endpoint, prefix, ..FluvioOptions::default() };
    let log = FluvioLog::connect(options, Arc::new(offsets)).await.unwrap();
    Some((dir, log))
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

fn records(range: std::ops::Range<u32>) -> Vec<Record> {
    range.map(|i| Record { key: format!("k{i}").into_bytes(), value: i.to_be_bytes().to_vec() }).collect()
}

#[tokio::test]
async fn the_topic_log_contract_holds_on_fluvio() {
    let Some((_dir, log)) = connect().await else { return };
    assert_eq!(log.ensure_topic("herald-contract", 2).await.unwrap(), 2);
    // Idempotent; another count is refused; 0 takes it as it is.
    assert_eq!(log.ensure_topic("herald-contract", 2).await.unwrap(), 2);
    assert_eq!(log.ensure_topic("herald-contract", 0).await.unwrap(), 2);
    assert!(matches!(log.ensure_topic("herald-contract", 3).await, Err(LogError::PartitionMismatch { .. })));
    assert!(matches!(log.partition_count("herald-nothing").await, Err(LogError::UnknownTopic(_))));
    assert!(matches!(log.end_offset("herald-contract", 2).await, Err(LogError::NoSuchPartition { .. })));

    assert_eq!(log.end_offset("herald-contract", 0).await.unwrap(), 0);
    let part = |partition, range| Append { topic: "herald-contract".into(), partition, records: records(range) };
    let firsts = log.append(vec![part(0, 0..100), part(1, 0..3)]).await.unwrap();
    assert_eq!(firsts, vec![0, 0]);
    assert_eq!(log.append(vec![part(0, 100..150)]).await.unwrap(), vec![100]);
    assert_eq!(log.end_offset("herald-contract", 0).await.unwrap(), 150);
    assert_eq!(log.end_offset("herald-contract", 1).await.unwrap(), 3);

    // Everything back, in order, with keys, across reads that continue one stream.
    let mut from = 0;
    let mut values = Vec::new();
    while from < 150 {
        let got = log.read("herald-contract", 0, from, 40, Duration::from_secs(5)).await.unwrap();
        assert!(!got.is_empty() && got.len() <= 40, "{} records", got.len());
        for r in &got {
            assert_eq!(r.offset, from);
            assert_eq!(r.key, format!("k{}", r.offset).into_bytes());
            values.push(u32::from_be_bytes(r.value.clone().try_into().unwrap()));
            from += 1;
        }
    }
    assert_eq!(values, (0..150).collect::<Vec<_>>());
    // A read from the middle starts exactly there.
    let got = log.read("herald-contract", 0, 77, 5, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![77, 78, 79, 80, 81]);
    // At the end a read waits, then returns nothing.
    let started = Instant::now();
    assert!(log.read("herald-contract", 1, 3, 10, Duration::from_millis(300)).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    // ... and wakes for a record appended while it waits.
    let waiting = {
        let log = log.clone();
        tokio::spawn(async move { log.read("herald-contract", 1, 3, 10, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.append(vec![part(1, 3..4)]).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3]);

    // Positions live in the offset store.
    assert_eq!(log.committed("g", "herald-contract", 0).await.unwrap(), 0);
    log.commit("g", "herald-contract", 0, 120).await.unwrap();
    assert_eq!(log.committed("g", "herald-contract", 0).await.unwrap(), 120);
    assert_eq!(log.committed("other", "herald-contract", 0).await.unwrap(), 0);
}
