//! Offsets, lag and housekeeping.
//!
//! Every `monitor_interval` the end offset and each consumer group's
//! committed offset of every partition become gauges, and so does the embedded
//! store's flush and compaction backlog; the lag of the request
//! chain (summed over `herald-requests`) is also published to the API, which
//! answers 503 above its high-water mark. Every `retention_interval` the
//! embedded log deletes records that every group has consumed.

use crate::telemetry::{PartitionOffsets, retention_deleted, store_health};
use herald_connectors::embedded::EmbeddedDb;
use herald_schemas::topic::{self, TopicLog};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A consumer group's view of one topic.
#[derive(Debug, Clone)]
pub struct Watch {
    pub group: String,
    pub topic: String,
    /// The partitions this worker processes.
    pub partitions: std::sync::Arc<[u32]>,
}

pub struct Monitor {
    pub log: Arc<dyn TopicLog>,
    pub watches: Vec<Watch>,
    pub request_lag: Arc<AtomicU64>,
    pub interval: Duration,
    /// The embedded store, whose health is sampled with the offsets and whose retention runs
    /// every `retention_every`.
    pub store: Option<EmbeddedDb>,
    pub retention_every: Duration,
}

impl Monitor {
    pub async fn run(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sample().await;
            let Some(db) = &self.store else { continue };
            // Off this runtime's thread, which serves the priority lane: reading a keyspace's
            // shape takes the lock the storage engine holds while it registers a flush.
            let sampled = db.clone();
            match tokio::task::spawn_blocking(move || sampled.health()).await {
                Ok(health) => store_health(&health),
                Err(error) => tracing::warn!(%error, "store health task failed"),
            }
            if last_retention.elapsed() >= self.retention_every {
                last_retention = tokio::time::Instant::now();
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.apply_retention()).await {
                    Ok(Ok(deleted)) => retention_deleted(deleted),
                    Ok(Err(error)) => tracing::warn!(%error, "retention failed"),
                    Err(error) => tracing::warn!(%error, "retention task failed"),
                }
            }
        }
    }

    async fn sample(&self) {
        // Several groups read `herald-events`: each partition's end is asked for once per sample
        // (on Fluvio, each ask opens a stream).
        let mut ends: std::collections::HashMap<(&str, u32), u64> = std::collections::HashMap::new();
        for watch in &self.watches {
            let mut lag = 0u64;
            for &partition in watch.partitions.iter() {
                let end = match ends.get(&(watch.topic.as_str(), partition)) {
                    Some(&end) => Ok(end),
                    None => self.log.end_offset(&watch.topic, partition).await.inspect(|&end| {
                        ends.insert((watch.topic.as_str(), partition), end);
                    }),
                };
                let (end, committed) = match (end, self.log.committed(&watch.group, &watch.topic, partition).await) {
                    (Ok(end), Ok(committed)) => (end, committed),
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::debug!(%error, topic = %watch.topic, "offsets unavailable");
                        continue;
                    }
                };
                lag += end.saturating_sub(committed);
                PartitionOffsets { topic: &watch.topic, group: &watch.group, partition, end, committed }.emit();
            }
            if watch.topic == topic::REQUESTS {
                self.request_lag.store(lag, Ordering::Relaxed);
            }
        }
    }
}
