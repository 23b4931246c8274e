//! Status webhooks: every terminal outcome of a client's notifications, POSTed in signed batches
//! to the URL the client registered (`PUT /v1/webhooks`), retried with backoff, never blocking the
//! pipeline.
//!
//! # How an outcome travels
//! 1. The [`collect`] task of each partition of `herald-events` this worker owns (consumer group
//!    [`collect::GROUP`]) keeps the outcome events ([`EventKind::is_outcome`]) of clients with a
//!    webhook, groups them per client into batches of at most `batch_events`, writes the batches
//!    to the webhook outbox of the state store durably, then commits its offset. It never waits
//!    for a receiver: the backlog of a dead receiver waits on disk.
//! 2. One [`deliver`] task per registered client drains the client's outbox, partition by
//!    partition, one batch at a time and in order within a partition: POST, and on a 2xx remove
//!    the batch; on a failure wait (exponential backoff with jitter, `backoff_min` to
//!    `backoff_max`) and POST the same batch again, until it is `max_age` old and is dropped with
//!    an alert. A client's dead receiver holds up only that client's task.
//!
//! # Exactly once, and the one window left
//! - The outbox records, with each write, the partition's *position* (the offset after the last
//!   event it covered). A collector replaying after a crash skips events below it, and drops
//!   batches at or past it that an unfinished write left ([`WebhookStore`]), so an event is put in
//!   one batch, once. An event appended to `herald-events` twice (a stage's replay, same event id)
//!   is dropped by a window of recent ids ([`Recent`](crate::runtime::recent::Recent)), refilled
//!   from the log on start.
//! - Senders read only below the position the collector published after its write returned, so
//!   a batch is never sent before it is durable (a crash cannot rebuild it with other events
//!   under another id).
//! - A batch's body and id are fixed when it is made. Herald removes a batch only after the 2xx;
//!   a crash between the two sends it again, with the same id: receivers dedupe on
//!   `Herald-Webhook-Id`.
//!
//! # Registrations
//! Read from the store every `refresh_interval` ([`refresh_registrations`]) and shared with the
//! collectors and senders; a sender uses the URL and secret current at each attempt.
//!
//! # Layout
//! - [`config`]: the `[webhooks]` section.
//! - [`collect`]: `herald-events` → batches in the outbox.
//! - [`deliver`]: the outbox → signed POSTs, with backoff and the give-up rule.

pub mod collect;
pub mod config;
pub mod deliver;

pub use config::WebhooksConfig;

use crate::app::App;
use crate::runtime::reader::ReadSettings;
use crate::runtime::supervise::supervise;
use herald_connectors::webhooks::WebhookClient;
use herald_schemas::store::WebhookStore;
use herald_schemas::webhook::WebhookRegistration;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The registrations as last read: client id → registration. `None` until the first read.
pub type Snapshot = Option<Arc<HashMap<String, WebhookRegistration>>>;

/// What the collectors and the senders of one runtime share.
pub struct Shared {
    /// Per partition number: batches with a `first_offset` below this are durable and may be sent
    /// (0 until the partition's collector has resumed).
    sendable: Vec<AtomicU64>,
    /// Wakes a client's sender when batches were enqueued for it.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Batches waiting in the owned partitions (recounted when the set of clients changes).
    pending: AtomicI64,
}

impl Shared {
    pub fn new(partitions: u32) -> Self {
        Shared {
            sendable: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            wakers: Mutex::default(),
            pending: AtomicI64::new(0),
        }
    }

    pub fn sendable(&self, partition: u32) -> u64 {
        self.sendable.get(partition as usize).map_or(0, |s| s.load(Ordering::Acquire))
    }

    fn set_sendable(&self, partition: u32, position: u64) {
        if let Some(s) = self.sendable.get(partition as usize) {
            s.store(position, Ordering::Release);
        }
    }

    /// The client's wake-up signal (one permit is kept if the sender is busy).
    pub fn waker(&self, client_id: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        wakers.entry(client_id.to_string()).or_default().clone()
    }

    fn wake(&self, client_id: &str) {
        self.waker(client_id).notify_one();
    }

    fn wake_all(&self) {
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        for waker in wakers.values() {
            waker.notify_one();
        }
    }

    fn add_pending(&self, delta: i64) {
        let now = self.pending.fetch_add(delta, Ordering::Relaxed) + delta;
        crate::telemetry::webhook_pending(now);
    }

    fn set_pending(&self, count: i64) {
        self.pending.store(count, Ordering::Relaxed);
        crate::telemetry::webhook_pending(count);
    }
}

/// Reads every registration each `interval` and publishes them when they changed. A failed read
/// is logged and the last good snapshot stays in force.
pub async fn refresh_registrations(
    store: Arc<dyn WebhookStore>,
    interval: Duration,
    tx: watch::Sender<Snapshot>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        match store.list_webhooks().await {
            Ok(list) => {
                failing = false;
                let fresh: HashMap<String, WebhookRegistration> =
                    list.into_iter().map(|r| (r.client_id.clone(), r)).collect();
                tx.send_if_modified(|current| {
                    if current.as_deref() == Some(&fresh) {
                        return false;
                    }
                    tracing::info!(webhooks = fresh.len(), "webhook registrations changed");
                    *current = Some(Arc::new(fresh));
                    true
                });
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read webhook registrations; keeping the last ones read");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits for the first snapshot (or `token`); `None` when cancelled first.
async fn first_snapshot(
    registrations: &mut watch::Receiver<Snapshot>,
    token: &CancellationToken,
) -> Option<Arc<HashMap<String, WebhookRegistration>>> {
    tokio::select! {
        _ = token.cancelled() => None,
        loaded = registrations.wait_for(Option::is_some) => loaded.ok().and_then(|s| s.clone()),
    }
}

/// Starts the webhook tasks of a runtime over the partitions `owned`: the registrations' refresh,
/// the collectors (a chain under supervision) and the senders (another).
pub fn start(
    app: &App,
    owned: Arc<[u32]>,
    read: &ReadSettings,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> Vec<JoinHandle<()>> {
    let config = app.config.webhooks.clone();
    let store = app.backends.webhooks.clone();
    let shared = Arc::new(Shared::new(app.partitions()));
    let (tx, registrations) = watch::channel(None);
    let mut tasks =
        vec![runtime.spawn(refresh_registrations(store.clone(), config.refresh_interval, tx, shutdown.clone()))];

    let collector = collect::Collector {
        log: app.backends.log.clone(),
        store: store.clone(),
        registrations: registrations.clone(),
        shared: shared.clone(),
        partitions: owned.clone(),
        read: read.clone(),
        batch_events: config.batch_events.get() as usize,
        linger: config.linger,
        dedup_window: config.dedup_window.get() as usize,
        clock: app.clock.clone(),
    };
    tasks.push(runtime.spawn(supervise("webhooks", shutdown.clone(), move |t, set| collector.start(t, set))));

    let client = match WebhookClient::new(config.request_timeout, config.destinations()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhook senders not started");
            return tasks;
        }
    };
    let senders = deliver::Senders {
        store,
        client,
        registrations,
        shared,
        partitions: owned,
        config,
        alerts: app.alerts.clone(),
        clock: app.clock.clone(),
    };
    tasks.push(runtime.spawn(supervise("webhook-senders", shutdown.clone(), move |t, set| senders.start(t, set))));
    tasks
}
