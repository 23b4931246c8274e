//! The accept path shared by `POST /v1/notifications`, `herald send`,
//! `herald bench` and the `herald-ingest` consumer.
//!
//! Each item is validated; accepted ones are wrapped in an envelope with
//! their notification id and appended to `herald-requests` (keyed by user
//! id), together with an `accepted` or `rejected` event for every item, in
//! one durable append. [`Ingestor::submit`] returns only after that append,
//! so an id handed to a client is never lost.
//!
//! A request whose `send_at` is ahead goes into the schedule index instead of
//! `herald-requests` (with a `scheduled` event), before the append that
//! carries its events, so it can be cancelled as soon as its id is known; the
//! scheduler appends it to `herald-requests` when it is due. Its times
//! (`send_at`, `expires_at` / `ttl`) are resolved here, once.

use crate::runtime::requests::{event_appends, request_appends};
use herald_schemas::codec;
use herald_schemas::stage::Clock;
use herald_schemas::store::{Hold, HoldReason, ScheduleStore, StoreError};
use herald_schemas::topic::{self, Append, Commit, LogError, TopicLog};
use herald_schemas::{DeliveryEvent, EventKind, NotificationId, RequestEnvelope};
use herald_stages::timing;
use herald_stages::validate::{Rejection, Validator};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The append failed (disk, cluster); nothing of the batch was accepted.
    #[error("cannot store the requests: {0}")]
    Log(#[from] LogError),
    /// A store validation needs was unavailable; nothing of the batch was accepted.
    #[error("cannot validate now: {0}")]
    Unavailable(Rejection),
    /// The schedule index could not take the scheduled requests; nothing of the batch was accepted.
    #[error("cannot schedule the requests: {0}")]
    Schedule(#[from] StoreError),
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Log(e) => e.is_retryable(),
            IngestError::Unavailable(_) => true,
            IngestError::Schedule(e) => e.is_retryable(),
        }
    }
}

/// One item to accept: its JSON (or why it could not be parsed) and, for
/// replayable sources, the id it must get.
pub struct Submission {
    /// A fixed id makes re-submission of the same source record idempotent
    /// (the `herald-ingest` consumer derives it from the record's offset).
    pub id: Option<NotificationId>,
    pub raw: Result<serde_json::Value, String>,
}

impl Submission {
    pub fn json(value: serde_json::Value) -> Self {
        Self { id: None, raw: Ok(value) }
    }
}

/// What happened to one item.
///
/// A rejection the client can fix; a failure that is ours or a store's
/// fails the whole call instead (see [`IngestError`]) so the client retries.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Accepted(NotificationId),
    Rejected(NotificationId, Rejection),
}

pub struct Ingestor {
    pub log: Arc<dyn TopicLog>,
    /// Where requests with a `send_at` ahead wait.
    pub schedule: Arc<dyn ScheduleStore>,
    pub validator: Arc<Validator>,
    pub request_partitions: u32,
    pub event_partitions: u32,
    pub clock: Arc<dyn Clock>,
}

impl Ingestor {
    /// Validates and durably appends; one outcome per item, in order.
    pub async fn submit(&self, client_id: &str, items: Vec<Submission>) -> Result<Vec<ItemOutcome>, IngestError> {
        let (outcomes, parts) = self.prepare(client_id, items).await?;
        self.log.append_and_commit(parts, Vec::new()).await?;
        Ok(outcomes)
    }

    /// Validates and appends with `commits` in the same write, ordered rather
    /// than waited for: for the `herald-ingest` consumer, whose source is
    /// durable and whose replay derives the same notification ids.
    pub async fn submit_and_commit(
        &self,
        client_id: &str,
        items: Vec<Submission>,
        commits: Vec<Commit>,
    ) -> Result<Vec<ItemOutcome>, IngestError> {
        let (outcomes, parts) = self.prepare(client_id, items).await?;
        self.log.append_and_commit_ordered(parts, commits).await?;
        Ok(outcomes)
    }

    /// Validates every item: the outcomes, and the appends that carry them.
    async fn prepare(
        &self,
        client_id: &str,
        items: Vec<Submission>,
    ) -> Result<(Vec<ItemOutcome>, Vec<Append>), IngestError> {
        let now = self.clock.now_ms();
        let mut outcomes = Vec::with_capacity(items.len());
        let mut records = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        let mut holds = Vec::new();
        for item in items {
            let id = item.id.unwrap_or_else(NotificationId::generate);
            let checked = match &item.raw {
                Ok(value) => self.validator.check(value).await,
                Err(message) => Err(Rejection { code: "invalid_json", message: message.clone() }),
            };
            let checked = checked.and_then(|request| Ok((timing::resolve(&request, now)?, request)));
            match checked {
                Ok((timing, request)) => {
                    let user_id = request.user_id.clone();
                    events.push(DeliveryEvent::new(&id, client_id, &user_id, EventKind::Accepted, None, None, now));
                    let mut envelope = RequestEnvelope::new(id.clone(), client_id.to_string(), now, request);
                    envelope.send_at_ms = timing.send_at_ms;
                    envelope.expires_at_ms = timing.expires_at_ms;
                    match timing.send_at_ms {
                        Some(due_at_ms) => {
                            events.push(DeliveryEvent::new(
                                &id,
                                client_id,
                                &user_id,
                                EventKind::Scheduled,
                                None,
                                None,
                                now,
                            ));
                            holds.push(Hold {
                                id: id.clone(),
                                reason: HoldReason::SendAt,
                                partition: topic::partition_for_key(
                                    // A broadcast's partition follows its id, like its record.
                                    if envelope.request.topic.is_some() { id.0.as_bytes() } else { user_id.as_bytes() },
                                    self.request_partitions,
                                ),
                                due_at_ms,
                                client_id: client_id.to_string(),
                                envelope: codec::encode(&envelope),
                            });
                        }
                        None => records.push(envelope),
                    }
                    outcomes.push(ItemOutcome::Accepted(id));
                }
                Err(rejection) if rejection.is_retryable() => return Err(IngestError::Unavailable(rejection)),
                Err(rejection) => {
                    let user_id = item
                        .raw
                        .as_ref()
                        .ok()
                        .and_then(|v| v.get("user_id"))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    events.push(DeliveryEvent::new(
                        &id,
                        client_id,
                        user_id,
                        EventKind::Rejected,
                        None,
                        Some(rejection.code.to_string()),
                        now,
                    ));
                    outcomes.push(ItemOutcome::Rejected(id, rejection));
                }
            }
        }
        if !holds.is_empty() {
            // Ordered: durable with the append of their events, which the caller makes next. A
            // hold already there (a replayed `herald-ingest` record) stays as it is.
            self.schedule.hold(&holds).await?;
        }
        let mut parts = request_appends(&records, self.request_partitions);
        parts.extend(event_appends(&events, self.event_partitions));
        Ok((outcomes, parts))
    }
}
