//! The scheduler: what waits in the schedule index (a `send_at` ahead, quiet hours, a digest
//! collecting) goes back into `herald-requests` when it is due.
//!
//! Every `poll_interval`, for each partition this worker owns, it reads a page of due holds
//! (soonest first, at most `page`: all it ever holds in memory), takes them for release (from
//! then on a cancel is refused), appends them to `herald-requests` in one durable append, and
//! marks them released. A crash between the take and the mark releases them again on restart:
//! the same notification id reaches the pipeline twice, and the dedup claims, throttle hits and
//! derived delivery ids absorb it, so it is still sent once.
//!
//! A due hold found cancelling is a cancel interrupted between its two steps (the process stopped
//! after taking the hold, before the `cancelled` event was appended, and the client did not repeat
//! its `DELETE`): the scheduler appends the event with the page's records and finishes the cancel.
//! Such an event is recorded at the hold's due time at the latest; the notification is never sent.
//!
//! What is appended:
//! - `send_at`: the request as accepted, with `send_at_ms` cleared.
//! - quiet hours: the request as deferred (`quiet_released` set, so it is not deferred again).
//! - a digest: a new notification (the digest's id) for the first member's user, channels and
//!   category, rendered from the digest template with `data = {key, count, items}`: `items` are
//!   the members' `data` in arrival order, at most `digest_items` of them and within the request
//!   data limit; `count` is how many joined. It gets an `accepted` event of its own.
//!
//! Expiry is not checked here: the validate stage drops what expired while it waited.

use super::requests::{event_appends, request_appends};
use super::supervise::{TaskFailed, TaskResult};
use herald_schemas::codec;
use herald_schemas::stage::Clock;
use herald_schemas::store::{Hold, HoldKey, HoldReason, HoldState, ScheduleStore};
use herald_schemas::topic::TopicLog;
use herald_schemas::{DeliveryEvent, EventKind, NotificationRequest, RequestEnvelope};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Scheduler {
    pub log: Arc<dyn TopicLog>,
    pub store: Arc<dyn ScheduleStore>,
    /// The partitions of `herald-requests` whose holds this worker releases.
    pub owned: Arc<[u32]>,
    pub partitions: u32,
    pub clock: Arc<dyn Clock>,
    pub poll_interval: Duration,
    pub page: usize,
    pub digest_items: usize,
    /// The request data limit a digest's `data` is kept within.
    pub max_data_bytes: usize,
}

impl Scheduler {
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        tasks.spawn(self.clone().run(token));
    }

    async fn run(self, token: CancellationToken) -> TaskResult {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            for &partition in self.owned.iter() {
                // A full page means more may be due: go on before the next tick.
                while self.release_due(partition).await? == self.page {
                    if token.is_cancelled() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Releases one page of what is due in `partition` (and finishes the interrupted cancels in
    /// it); returns how many holds were due.
    async fn release_due(&self, partition: u32) -> Result<usize, TaskFailed> {
        let failed = |e| TaskFailed::new("schedule", e);
        let now = self.clock.now_ms();
        let page = self.store.due(partition, now, self.page).await.map_err(failed)?;
        let count = page.len();
        if count == 0 {
            return Ok(0);
        }
        let (cancelling, due): (Vec<_>, Vec<_>) =
            page.into_iter().partition(|(_, state)| *state == HoldState::Cancelling);
        let mut events: Vec<DeliveryEvent> = cancelling.iter().map(|(hold, _)| hold.cancelled_event(now)).collect();
        let cancelled: Vec<HoldKey> = cancelling.iter().map(|(h, _)| (h.id.clone(), h.reason)).collect();
        let due: Vec<Hold> = due.into_iter().map(|(hold, _)| hold).collect();
        let keys: Vec<HoldKey> = due.iter().map(|h| (h.id.clone(), h.reason)).collect();
        let taken = if keys.is_empty() { Vec::new() } else { self.store.begin_release(&keys).await.map_err(failed)? };
        let mut records = Vec::with_capacity(due.len());
        let mut released: Vec<HoldKey> = Vec::with_capacity(due.len());
        for ((hold, key), taken) in due.iter().zip(keys).zip(taken) {
            if !taken {
                continue;
            }
            match self.envelope_of(hold).await.map_err(failed)? {
                Some(envelope) => {
                    if hold.reason == HoldReason::Digest {
                        events.push(DeliveryEvent::new(
                            &envelope.id,
                            &envelope.client_id,
                            &envelope.request.user_id,
                            EventKind::Accepted,
                            None,
                            Some("digest".into()),
                            now,
                        ));
                    }
                    crate::telemetry::schedule_released(hold.reason.as_str(), now.saturating_sub(hold.due_at_ms));
                    records.push(envelope);
                }
                None => crate::telemetry::schedule_unreadable(hold.reason.as_str()),
            }
            released.push(key);
        }
        let mut parts = request_appends(&records, self.partitions);
        parts.extend(event_appends(&events, self.partitions));
        if !parts.is_empty() {
            self.log.append_and_commit(parts, Vec::new()).await.map_err(|e| TaskFailed::new("schedule", e))?;
        }
        if !released.is_empty() {
            self.store.finish_release(&released).await.map_err(failed)?;
        }
        if !cancelled.is_empty() {
            self.store.finish_cancel(&cancelled).await.map_err(failed)?;
            crate::telemetry::schedule_cancels_finished(cancelled.len());
        }
        Ok(count)
    }

    /// What a due hold puts on `herald-requests`; `None` when its stored envelope cannot be read
    /// (logged and counted; the hold is dropped rather than retried for ever).
    async fn envelope_of(&self, hold: &Hold) -> Result<Option<RequestEnvelope>, herald_schemas::store::StoreError> {
        let mut envelope: RequestEnvelope = match codec::decode(&hold.envelope) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, id = %hold.id, reason = hold.reason.as_str(), "unreadable hold dropped");
                return Ok(None);
            }
        };
        match hold.reason {
            HoldReason::SendAt => envelope.send_at_ms = None,
            HoldReason::QuietHours => envelope.quiet_released = true,
            HoldReason::Digest => {
                let (members, count) = self.store.digest_members(&hold.id, self.digest_items).await?;
                return Ok(Some(self.digest_envelope(hold, envelope, &members, count)));
            }
        }
        Ok(Some(envelope))
    }

    /// The digest as a notification of its own (see the module doc).
    fn digest_envelope(&self, hold: &Hold, first: RequestEnvelope, members: &[Vec<u8>], count: u64) -> RequestEnvelope {
        let spec = first.request.digest.clone();
        let key = spec.as_ref().map(|s| s.key.clone()).unwrap_or_default();
        // The items, kept within the data limit with room for the rest of the object.
        let budget = self.max_data_bytes.saturating_sub(1024);
        let mut items = Vec::with_capacity(members.len());
        let mut used = 0;
        for bytes in members {
            let Ok(member) = codec::decode::<RequestEnvelope>(bytes) else { continue };
            let size = serde_json::to_vec(&member.request.data).map(|v| v.len()).unwrap_or(usize::MAX);
            if used + size > budget {
                break;
            }
            used += size;
            items.push(member.request.data);
        }
        let request = NotificationRequest {
            user_id: first.request.user_id.clone(),
            topic: None,
            template: spec.map(|s| s.template).unwrap_or(first.request.template.clone()),
            data: json!({ "key": key, "count": count, "items": Value::Array(items) }),
            channels: first.request.channels.clone(),
            fallback: first.request.fallback.clone(),
            category: first.request.category.clone(),
            idempotency_key: None,
            locale: first.request.locale.clone(),
            send_at: None,
            expires_at: None,
            ttl: None,
            digest: None,
        };
        let mut envelope = RequestEnvelope::new(hold.id.clone(), first.client_id, first.received_at_ms, request);
        envelope.digest_of = Some(u32::try_from(count).unwrap_or(u32::MAX));
        envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::Config;
    use herald_schemas::NotificationId;
    use herald_schemas::stage::ManualClock;
    use herald_schemas::topic::{REQUESTS, REQUESTS_PRIORITY};

    async fn records_in(app: &App, topics: &[&str]) -> u64 {
        let mut total = 0;
        for topic in topics {
            for partition in 0..app.partitions() {
                total += app.backends.log.end_offset(topic, partition).await.unwrap();
            }
        }
        total
    }

    fn hold(id: &str, due_at_ms: u64) -> Hold {
        let request =
            serde_json::from_value(json!({ "user_id": "u1", "template": "welcome", "channels": ["email"] })).unwrap();
        let envelope = RequestEnvelope::new(NotificationId(id.into()), "acme".into(), 0, request);
        Hold {
            id: envelope.id.clone(),
            reason: HoldReason::SendAt,
            partition: 0,
            due_at_ms,
            client_id: "acme".into(),
            envelope: codec::encode(&envelope),
        }
    }

    /// A cancel interrupted after its first step (the hold taken, no event appended) and never
    /// repeated by its client: once due, the scheduler appends the `cancelled` event and finishes
    /// the cancel, and releases only the hold beside it that still waited.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_due_hold_left_cancelling_gets_its_event_and_is_never_released() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(Config::default(), dir.path().to_path_buf()).await.unwrap();
        let clock = ManualClock::new(1_000_000);
        let scheduler = Scheduler {
            log: app.backends.log.clone(),
            store: app.backends.schedule.clone(),
            owned: (0..app.partitions()).collect(),
            partitions: app.partitions(),
            clock: Arc::new(clock.clone()),
            poll_interval: Duration::from_millis(10),
            page: 10,
            digest_items: 10,
            max_data_bytes: 65_536,
        };
        let store = &app.backends.schedule;
        store.hold(&[hold("left-cancelling", 1_000_500), hold("waits", 1_000_500)]).await.unwrap();
        let cancelling = NotificationId("left-cancelling".into());
        let taken = store.cancel(&cancelling, Some("acme")).await.unwrap();
        assert_eq!(taken[0].1, HoldState::Waiting);
        assert_eq!(scheduler.release_due(0).await.unwrap(), 0, "not due yet");

        clock.advance_ms(1_000);
        let requests_before = records_in(&app, &[REQUESTS, REQUESTS_PRIORITY]).await;
        assert_eq!(scheduler.release_due(0).await.unwrap(), 2);
        assert_eq!(records_in(&app, &[REQUESTS, REQUESTS_PRIORITY]).await, requests_before + 1, "only one released");
        let timeline = app.backends.timeline.timeline(&cancelling).await.unwrap();
        let kinds: Vec<EventKind> = timeline.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Cancelled]);
        assert_eq!((timeline[0].client_id.as_str(), timeline[0].user_id.as_str()), ("acme", "u1"));
        let found = store.cancel(&cancelling, None).await.unwrap();
        assert_eq!(found[0].1, HoldState::Cancelled, "the cancel is finished");
        assert_eq!(scheduler.release_due(0).await.unwrap(), 0, "nothing left due");
    }
}
