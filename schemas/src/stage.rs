//! The stage interface.
//!
//! A stage takes a batch of [`WorkItem`]s and returns, through
//! [`StageOutput`], the items that go on and an event for every item (or
//! channel of an item) that stops there. Stages hold no network connections;
//! stateful stages reach their state through the store interfaces and read
//! time from a [`Clock`] that tests replace.

use crate::event::DeliveryEvent;
use crate::store::StoreError;
use crate::work::WorkItem;
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a stage passes on.
#[derive(Debug, Default)]
pub struct StageOutput {
    pub items: Vec<WorkItem>,
    pub events: Vec<DeliveryEvent>,
}

impl StageOutput {
    pub fn with_capacity(n: usize) -> Self {
        Self { items: Vec::with_capacity(n), events: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Its state could not be read or written; the batch is retried as a whole.
    #[error("stage {stage}: {source}")]
    Store {
        stage: &'static str,
        #[source]
        source: StoreError,
    },
}

impl StageError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StageError::Store { source, .. } => source.is_retryable(),
        }
    }
}

#[async_trait]
pub trait Stage: Send + 'static {
    /// Name for metrics and spans (`validate`, `dedup`, …).
    fn name(&self) -> &'static str;

    /// Processes one batch. On error nothing of the batch was passed on, and
    /// processing it again is safe (state writes are idempotent).
    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError>;
}

/// Wall-clock time in ms since the Unix epoch; replaced by [`ManualClock`] in tests.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
