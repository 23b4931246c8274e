//! Dispatchers: delivery topics → ledger check → channel → events → commit.
//!
//! A dispatcher consumes every partition of its routes' topics and sends
//! through one [`Channel`]. Each route has a priority topic (transactional
//! jobs) beside its normal one. With providers, the priority topics have a
//! dispatcher of their own ([`Lane`]), with its own connections and pacing,
//! so a transactional job never waits for a marketing batch (one paced at a
//! provider's rate can take seconds), and runs on the worker's main runtime
//! while the normal lane's runs on the bulk one (see `runtime::pools`); with
//! a file outbox (one writer), one dispatcher takes the priority topics'
//! batches first. For each batch, in order:
//! 1. deliveries the ledger has as finished are not sent again (a replay),
//!    and a delivery id met twice in the batch is taken once; a finished
//!    delivery's event is emitted again, with the same event id, since it may
//!    not have reached the log before the crash;
//! 2. the rest go to the channel;
//! 3. the ledger records the finished deliveries, atomically with the
//!    channel's sink position when the channel is a sink Herald owns;
//! 4. `sent` / `failed` events and the batch's offset are appended and
//!    committed in one write, after step 3 in the journal (ordered
//!    durability, see `herald_schemas::store`): a crash loses a suffix of
//!    these writes, never step 3's alone without what came before it.
//!
//! A push delivery that fails for good (bad address, permanent, given up) whose job carries a
//! fallback looks at its siblings: when every push delivery of the notification has failed for
//! good (this batch's outcomes, then the ledger), the fallback jobs are appended to their
//! delivery topics in the write that commits the batch.
//!
//! On start the channel is told the position last committed with the
//! ledger, so a file outbox cuts whatever it wrote after it (a torn line, or
//! lines whose ledger entries were not recorded and will be written again).
//! A reader following the outbox while Herald runs can therefore see a line
//! twice across a crash; after a restart the file holds each delivery once.
//! Event ids are derived, so events appended twice across a crash are kept
//! once by their consumers.
//!
//! A delivery past its `expires_at_ms` is not sent: it gets an `expired`
//! event and is finished (failed) in the ledger; so does a retryable one whose
//! next attempt would come after it.
//!
//! A retryable outcome goes to `herald-retry` with the time of its next
//! attempt (see [`herald_stages::retry`]), or, out of attempts or time, to
//! `herald-dead`; a permanent one goes to `herald-dead`. Both are appended in
//! the write that commits the batch, so a crash before it sends them again
//! (they failed: nothing was delivered twice) and a crash after it finds them
//! committed. A dead-lettered delivery is recorded as failed in the ledger
//! only after that write, so the dead letter is never lost to a replay that
//! finds the ledger entry.

use super::queue::QueueRx;
use super::reader::{ReadSettings, spawn_readers};
use super::requests::{event_appends, job_appends, keyed_jobs};
use super::supervise::{TaskFailed, TaskResult};
use crate::alerts::Alerts;
use crate::telemetry::ChannelBatchSent;
use herald_schemas::analytics::RecipientHasher;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use herald_schemas::codec::{self, CodecError};
use herald_schemas::job::{DeadLetter, RetryJob, Route};
use herald_schemas::store::{ContactStore, LedgerState, LedgerStore, SinkPosition, StoreError};
use herald_schemas::topic::{self, StoredRecord, TopicLog};
use herald_schemas::{DeliveryEvent, DeliveryId, DeliveryJob, EventKind, stage::now_ms};
use herald_stages::enrich::ContactCache;
use herald_stages::retry::{RetryDecision, RetryPolicy};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Opens the channel for each (re)start of the dispatcher.
pub type ChannelFactory = Arc<dyn Fn() -> Result<Box<dyn Channel>, ChannelError> + Send + Sync>;

#[derive(Clone)]
pub struct Dispatcher {
    /// Names the consumer group (`herald-dispatch-<name>`) and the sink position.
    pub name: &'static str,
    pub routes: Vec<Route>,
    /// Which of the routes' topics it reads.
    pub lane: Lane,
    pub log: Arc<dyn TopicLog>,
    pub ledger: Arc<dyn LedgerStore>,
    /// Where a dead address is recorded, and the enrich stage's cache of it to drop.
    pub contacts: Arc<dyn ContactStore>,
    pub contact_cache: Arc<ContactCache>,
    /// Told of dead letters (an alert once they pile up).
    pub alerts: Arc<Alerts>,
    pub channel: ChannelFactory,
    pub route_partitions: u32,
    pub event_partitions: u32,
    /// The partitions of the route topics this worker processes.
    pub owned: Arc<[u32]>,
    pub read: ReadSettings,
    /// When to try a refused delivery again, and when to give up.
    pub retry: RetryPolicy,
    /// Hashes the address each delivery event names.
    pub recipients: Arc<RecipientHasher>,
    /// Rewrites email for open and click tracking before it is sent, when on.
    pub tracking: Option<Arc<crate::tracking::Tracking>>,
}

/// Which delivery topics a dispatcher reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Both, the priority topics first, through one channel (a file outbox has one writer).
    Both,
    /// The normal topics only; a dispatcher of its own, with its own channel, takes the priority
    /// topics, so a transactional job never waits behind a paced marketing batch.
    Normal,
    Priority,
}

fn decode_job(record: &StoredRecord) -> Result<DeliveryJob, CodecError> {
    codec::decode(&record.value)
}

/// The queue name (for metrics) of a dispatcher's priority topics.
fn priority_queue_name(name: &'static str) -> &'static str {
    match name {
        "push" => "push-priority",
        "sms" => "sms-priority",
        "email" => "email-priority",
        _ => "priority",
    }
}

impl Dispatcher {
    pub fn group(&self) -> String {
        format!("herald-dispatch-{}", self.name)
    }

    /// Readers of the routes' topics of its lane, into one queue, or two (priority first) for
    /// [`Lane::Both`].
    pub fn start(&self, token: CancellationToken, tasks: &mut JoinSet<TaskResult>) {
        let sources = |topic: fn(Route) -> &'static str| -> Vec<(String, u32)> {
            self.routes.iter().flat_map(|r| self.owned.iter().map(move |&p| (topic(*r).to_string(), p))).collect()
        };
        let group = self.group();
        let (read, name, priority_name) = (&self.read, self.name, priority_queue_name(self.name));
        let mut readers = |name: &'static str, topic: fn(Route) -> &'static str| {
            spawn_readers(name, &self.log, sources(topic), &group, read, decode_job, &token, tasks)
        };
        let (first, second) = match self.lane {
            Lane::Both => (Some(readers(priority_name, Route::priority_topic)), readers(name, Route::topic)),
            Lane::Normal => (None, readers(name, Route::topic)),
            Lane::Priority => (None, readers(priority_name, Route::priority_topic)),
        };
        tasks.spawn(self.clone().run(first, second));
    }

    /// The topics it reads, for the monitor.
    pub fn topics(&self) -> Vec<&'static str> {
        let lanes: &[fn(Route) -> &'static str] = match self.lane {
            Lane::Both => &[Route::topic, Route::priority_topic],
            Lane::Normal => &[Route::topic],
            Lane::Priority => &[Route::priority_topic],
        };
        self.routes.iter().flat_map(|r| lanes.iter().map(|topic| topic(*r))).collect()
    }

    async fn run(self, mut first: Option<QueueRx<DeliveryJob>>, mut second: QueueRx<DeliveryJob>) -> TaskResult {
        let name = self.name;
        let mut channel = (self.channel)().map_err(|e| TaskFailed::new(name, e))?;
        let committed = self.ledger.sink_position(name).await.map_err(|e| TaskFailed::new(name, e))?;
        channel.recover(committed).await.map_err(|e| TaskFailed::new(name, e))?;
        let group = self.group();
        let (size, linger) = (self.read.batch_size, self.read.linger);
        loop {
            let next = match first.as_mut() {
                Some(first) => QueueRx::recv_either(first, &mut second, size, linger).await,
                None => second.recv_merged(size, linger).await,
            };
            let Some(batch) = next else { break };
            let started = Instant::now();
            let commits = batch.commits(&group);
            let ids: Vec<_> = batch.items.iter().map(|j| j.delivery_id.clone()).collect();
            let states = self.ledger.states(&ids).await.map_err(|e| TaskFailed::new(name, e))?;
            let now = now_ms();
            let mut events = Vec::with_capacity(ids.len());
            let mut fresh = Vec::with_capacity(ids.len());
            let mut stale = Vec::new();
            // A job can be in a topic twice (a producer's replay on a backend whose append and
            // commit are two steps); both copies can land in one batch, before either is in the ledger.
            let mut seen = HashSet::with_capacity(ids.len());
            for (job, state) in batch.items.into_iter().zip(states) {
                if !seen.insert(job.delivery_id.clone()) {
                    continue;
                }
                let expired = job.expires_at_ms.is_some_and(|at| at <= now);
                match state {
                    Some(LedgerState::Sent) => {
                        events.push(job_event(&job, EventKind::Sent, None, now, &self.recipients))
                    }
                    Some(LedgerState::Failed) => {
                        let kind = if expired { EventKind::Expired } else { EventKind::Failed };
                        events.push(job_event(&job, kind, None, now, &self.recipients))
                    }
                    Some(LedgerState::InFlight) | None if expired => stale.push(job),
                    Some(LedgerState::InFlight) | None => fresh.push(job),
                }
            }
            let skipped = seen.len() - fresh.len() - stale.len();
            // Stale before it could go: never sent, and finished in the ledger so a replay does
            // not send it either.
            let mut done = Vec::with_capacity(fresh.len() + stale.len());
            for job in &stale {
                events.push(job_event(job, EventKind::Expired, None, now, &self.recipients));
                done.push((job.delivery_id.clone(), LedgerState::Failed));
            }
            if let Some(tracking) = &self.tracking {
                fresh.iter_mut().for_each(|job| tracking.apply(job));
            }
            let outcomes = if fresh.is_empty() {
                Vec::new()
            } else {
                channel.send(&fresh).await.map_err(|e| TaskFailed::new(name, e))?
            };
            let (mut retries, mut dead, mut dead_addresses) = (Vec::new(), Vec::new(), Vec::new());
            // Push deliveries that failed for good in this batch (for their fallbacks).
            let mut failed_for_good = HashSet::new();
            let (mut delivered, mut failed) = (0, 0);
            for (job, outcome) in fresh.iter().zip(&outcomes) {
                let (kind, reason) = match outcome {
                    SendOutcome::Delivered { .. } => {
                        delivered += 1;
                        done.push((job.delivery_id.clone(), LedgerState::Sent));
                        (EventKind::Sent, None)
                    }
                    SendOutcome::BadAddress { reason } => {
                        failed += 1;
                        dead_addresses.push(job);
                        done.push((job.delivery_id.clone(), LedgerState::Failed));
                        (EventKind::Failed, Some(format!("bad_address:{reason}")))
                    }
                    SendOutcome::Permanent { reason } => {
                        failed += 1;
                        dead_letter(&mut dead, job, format!("permanent:{reason}"), reason, now)
                    }
                    SendOutcome::Retryable { reason, retry_after } => {
                        match self.retry.decide(job.attempt, job.requested_at_ms, now, *retry_after, rand::random()) {
                            RetryDecision::Retry { due_at_ms, .. }
                                if job.expires_at_ms.is_some_and(|at| at <= due_at_ms) =>
                            {
                                done.push((job.delivery_id.clone(), LedgerState::Failed));
                                (EventKind::Expired, Some(format!("before retry: {reason}")))
                            }
                            RetryDecision::Retry { attempt, due_at_ms } => {
                                let next = DeliveryJob { attempt, ..job.clone() };
                                retries.push(RetryJob { job: next, due_at_ms, last_error: reason.clone() });
                                continue;
                            }
                            RetryDecision::GiveUp { reason: why } => {
                                failed += 1;
                                dead_letter(&mut dead, job, format!("dead:{why}"), reason, now)
                            }
                        }
                    }
                };
                if kind == EventKind::Failed {
                    failed_for_good.insert(job.delivery_id.clone());
                }
                events.push(job_event(job, kind, reason, now, &self.recipients));
            }
            let fallbacks = self.due_fallbacks(&fresh, &failed_for_good).await.map_err(|e| TaskFailed::new(name, e))?;
            // Dead addresses are recorded before the ledger: a replay after a crash between the
            // two sends to the provider again, which refuses again, and records it then.
            for job in dead_addresses {
                let address = job.target.address();
                if self.contacts.mark_unreachable(&job.user_id, address).await.map_err(|e| TaskFailed::new(name, e))? {
                    self.contact_cache.invalidate(&job.user_id);
                    tracing::info!(channel = name, target = %job.target.redacted(), "address reported dead; not tried again");
                }
            }
            // The ledger (with the sink position) is written before the durable append that
            // commits the batch, so it is durable no later than the commit; should it be
            // durable without the commit, the replay finds the deliveries finished.
            let sink = channel.position().map(|position| SinkPosition { sink: name.to_string(), position });
            if !done.is_empty() {
                self.ledger.record_deliveries(&done, sink).await.map_err(|e| TaskFailed::new(name, e))?;
            }
            ChannelBatchSent {
                channel: channel.name(),
                delivered,
                failed,
                retryable: retries.len(),
                skipped,
                elapsed: started.elapsed(),
            }
            .emit();
            let mut parts = event_appends(&events, self.event_partitions);
            parts.extend(keyed_jobs(
                topic::RETRY,
                self.route_partitions,
                retries.iter().map(|r| (&r.job, codec::encode(r))),
            ));
            parts.extend(keyed_jobs(
                topic::DEAD,
                self.route_partitions,
                dead.iter().map(|d| (&d.job, codec::encode(d))),
            ));
            if !fallbacks.is_empty() {
                tracing::info!(channel = name, count = fallbacks.len(), "every push delivery failed; fallback sent");
                parts.extend(job_appends(&fallbacks, self.route_partitions));
            }
            self.log.append_and_commit_ordered(parts, commits).await.map_err(|e| TaskFailed::new(name, e))?;
            if !dead.is_empty() {
                let failed: Vec<_> = dead.iter().map(|d| (d.job.delivery_id.clone(), LedgerState::Failed)).collect();
                self.ledger.record_deliveries(&failed, None).await.map_err(|e| TaskFailed::new(name, e))?;
                tracing::warn!(channel = name, count = dead.len(), "deliveries dead-lettered");
                self.alerts.dead_letters(name, dead.len());
            }
        }
        Ok(())
    }
}

impl Dispatcher {
    /// The fallback jobs to append now: those of each notification whose push deliveries have
    /// all failed for good, the last of them in this batch (`failed_now`). Appended with the
    /// batch's commit; a replay appends them again, and their derived delivery ids keep the
    /// second copy from being sent.
    async fn due_fallbacks(
        &self,
        fresh: &[DeliveryJob],
        failed_now: &HashSet<DeliveryId>,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let mut notifications = HashSet::new();
        let mut due = Vec::new();
        for job in fresh.iter().filter(|j| failed_now.contains(&j.delivery_id)) {
            let Some(fallback) = job.fallback.as_deref() else { continue };
            if !notifications.insert(&job.notification_id) {
                continue;
            }
            let others: Vec<DeliveryId> =
                fallback.siblings.iter().filter(|id| !failed_now.contains(*id)).cloned().collect();
            let states = if others.is_empty() { Vec::new() } else { self.ledger.states(&others).await? };
            if states.iter().all(|s| *s == Some(LedgerState::Failed)) {
                due.extend(fallback.jobs.iter().cloned());
            }
        }
        Ok(due)
    }
}

/// Adds `job`'s dead letter; the `failed` event it gets.
fn dead_letter(
    dead: &mut Vec<DeadLetter>,
    job: &DeliveryJob,
    why: String,
    last_error: &str,
    now: u64,
) -> (EventKind, Option<String>) {
    let letter =
        DeadLetter { job: job.clone(), reason: why.clone(), last_error: last_error.to_string(), dead_at_ms: now };
    dead.push(letter);
    (EventKind::Failed, Some(why))
}

/// An event about a delivery, with what analytics groups by: the request's template, category
/// and locale, when it was accepted, and the address as a keyed hash.
fn job_event(
    job: &DeliveryJob,
    kind: EventKind,
    reason: Option<String>,
    at_ms: u64,
    recipients: &RecipientHasher,
) -> DeliveryEvent {
    let mut event = DeliveryEvent::new(&job.notification_id, &job.client_id, &job.user_id, kind, None, reason, at_ms)
        .for_delivery(&job.delivery_id, job.target.route(), job.attempt);
    event.template = Some(job.template.clone());
    event.category = Some(job.category.clone());
    event.locale = Some(job.locale.clone());
    event.requested_at_ms = Some(job.requested_at_ms);
    event.recipient = Some(recipients.hash(job.target.address()));
    event
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::supervise::supervise;
    use herald_connectors::channels::outbox::FileOutbox;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::contacts::{Device, Platform, User};
    use herald_schemas::topic::{Append, Record};
    use herald_schemas::{DeliveryId, NotificationId, RenderedContent, Target, topic};
    use std::time::Duration;

    /// An iOS delivery whose body is `n` (used by the retry scheduler's tests too).
    pub(crate) fn job(n: &str) -> DeliveryJob {
        let target = Target::Device { device_id: "d".into(), platform: Platform::Ios, token: format!("tok-{n}") };
        let notification_id = NotificationId(n.into());
        DeliveryJob {
            delivery_id: DeliveryId::derive(&notification_id, "apns", target.address()),
            notification_id,
            client_id: "c".into(),
            user_id: "u".into(),
            category: "transactional".into(),
            template: "t".into(),
            locale: "en".into(),
            target,
            content: RenderedContent::Push { title: "t".into(), body: n.into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        }
    }

    /// A one-partition push dispatcher over `db` sending through `channel`.
    fn dispatcher(db: &Arc<EmbeddedDb>, channel: ChannelFactory) -> Dispatcher {
        Dispatcher {
            name: "push",
            routes: vec![Route::Apns],
            lane: Lane::Both,
            log: db.clone(),
            ledger: db.clone(),
            contacts: db.clone(),
            alerts: Arc::new(Alerts::new(Default::default())),
            contact_cache: Arc::new(
                herald_stages::enrich::ContactCacheConfig::default()
                    .build(Arc::new(herald_schemas::stage::SystemClock)),
            ),
            channel,
            route_partitions: 1,
            event_partitions: 1,
            owned: Arc::from([0]),
            read: ReadSettings {
                batch_size: 100,
                read_wait: Duration::from_millis(20),
                queue_records: 100,
                linger: Duration::ZERO,
            },
            retry: RetryPolicy::default(),
            recipients: Arc::new(RecipientHasher::new("test")),
            tracking: None,
        }
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
    }

    /// A job present twice in a topic (even in one batch) and a replay of a
    /// whole batch reach the outbox once.
    #[tokio::test]
    async fn each_delivery_reaches_the_outbox_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("db"), EmbeddedOptions::default()).unwrap());
        for route in Route::ALL {
            db.ensure_topic(route.topic(), 1).await.unwrap();
            db.ensure_topic(route.priority_topic(), 1).await.unwrap();
        }
        db.ensure_topic(topic::EVENTS, 1).await.unwrap();
        let record = |j: &DeliveryJob| Record { key: b"u".to_vec(), value: codec::encode(j) };
        let (a, b) = (job("a"), job("b"));
        let records = vec![record(&a), record(&a), record(&b)];
        db.append(vec![Append { topic: Route::Apns.topic().into(), partition: 0, records }]).await.unwrap();

        let path = dir.path().join("push.jsonl");
        let outbox = path.clone();
        let dispatcher = dispatcher(
            &db,
            Arc::new(move || {
                FileOutbox::open(outbox.clone(), "outbox-push")
                    .map(|o| Box::new(o) as Box<dyn Channel>)
                    .map_err(|e| ChannelError::Unavailable { channel: "outbox-push".into(), detail: e.to_string() })
            }),
        );
        let run = |d: Dispatcher| async move {
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let task = tokio::spawn(supervise("push", shutdown, move |t, set| d.start(t, set)));
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
            task.await.unwrap();
        };
        run(dispatcher.clone()).await;
        assert_eq!(lines(&path).len(), 2, "{:?}", lines(&path));

        // The same job appended again (a producer's replay) is not written again.
        db.append(vec![Append { topic: Route::Apns.topic().into(), partition: 0, records: vec![record(&b)] }])
            .await
            .unwrap();
        run(dispatcher).await;
        assert_eq!(lines(&path).len(), 2);
        let sent = db.end_offset(topic::EVENTS, 0).await.unwrap();
        // One `sent` per first send, and one re-emitted for the replayed copy of b.
        assert_eq!(sent, 3);
    }

    /// Answers by the job's body: `ok` delivered, `later` refused for now, `never` refused for good.
    struct Scripted;

    #[async_trait::async_trait]
    impl Channel for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            Ok(jobs
                .iter()
                .map(|j| match &j.content {
                    RenderedContent::Push { body, .. } if body == "later" => {
                        SendOutcome::Retryable { reason: "http 503".into(), retry_after: Some(Duration::from_secs(30)) }
                    }
                    RenderedContent::Push { body, .. } if body == "never" => {
                        SendOutcome::Permanent { reason: "http 400 PayloadTooLarge".into() }
                    }
                    RenderedContent::Push { body, .. } if body == "dead" => {
                        SendOutcome::BadAddress { reason: "http 410 Unregistered".into() }
                    }
                    _ => SendOutcome::Delivered { provider_id: None },
                })
                .collect())
        }
    }

    /// Runs a push dispatcher over [`Scripted`] until it has taken what is in its topic.
    async fn run_scripted(db: &Arc<EmbeddedDb>) {
        let dispatcher = dispatcher(db, Arc::new(|| Ok(Box::new(Scripted) as Box<dyn Channel>)));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(supervise("push", shutdown.clone(), move |t, set| dispatcher.start(t, set)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        task.await.unwrap();
        // The dispatcher's writes are ordered, not waited for: any durable write publishes them.
        db.commit("test", topic::EVENTS, 0, 0).await.unwrap();
    }

    #[tokio::test]
    async fn refused_deliveries_go_to_retry_or_dead_letter_and_the_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("db"), EmbeddedOptions::default()).unwrap());
        for name in [Route::Apns.topic(), Route::Apns.priority_topic(), topic::EVENTS, topic::RETRY, topic::DEAD] {
            db.ensure_topic(name, 1).await.unwrap();
        }
        // Requested now: max_age counts from the request.
        let fresh = |n: &str| DeliveryJob { requested_at_ms: now_ms(), ..job(n) };
        let (ok, later, never, gone) = (fresh("ok"), fresh("later"), fresh("never"), fresh("dead"));
        let records = [&ok, &later, &never, &gone].map(|j| Record { key: b"u".to_vec(), value: codec::encode(j) });
        let devices = [&ok, &gone].map(|j| Device {
            id: j.target.address().into(),
            platform: Platform::Ios,
            token: j.target.address().into(),
            active: true,
        });
        db.put_users(&[User { id: "u".into(), devices: devices.to_vec(), ..User::default() }]).await.unwrap();
        db.append(vec![Append { topic: Route::Apns.topic().into(), partition: 0, records: records.to_vec() }])
            .await
            .unwrap();
        let before = now_ms();
        run_scripted(&db).await;

        let retry = db.read(topic::RETRY, 0, 0, 10, Duration::ZERO).await.unwrap();
        assert_eq!(retry.len(), 1);
        let retry: RetryJob = codec::decode(&retry[0].value).unwrap();
        assert_eq!((retry.job.delivery_id.clone(), retry.job.attempt), (later.delivery_id.clone(), 2));
        assert!(retry.due_at_ms >= before + 30_000, "Retry-After is a floor");
        assert_eq!(retry.last_error, "http 503");
        let dead = db.read(topic::DEAD, 0, 0, 10, Duration::ZERO).await.unwrap();
        assert_eq!(dead.len(), 1);
        let dead: DeadLetter = codec::decode(&dead[0].value).unwrap();
        assert_eq!(dead.job.delivery_id, never.delivery_id);
        assert_eq!(dead.reason, "permanent:http 400 PayloadTooLarge");
        let states = db.states(&[ok.delivery_id, later.delivery_id, never.delivery_id]).await.unwrap();
        assert_eq!(states, [Some(LedgerState::Sent), None, Some(LedgerState::Failed)]);
        // The batch is committed: nothing is sent again.
        assert_eq!(db.committed("herald-dispatch-push", Route::Apns.topic(), 0).await.unwrap(), 4);
        // The dead token is recorded on the user, and only it.
        let user = db.get_users(&["u".into()]).await.unwrap()[0].clone().unwrap();
        assert_eq!(user.unreachable, [gone.target.address()]);
    }

    #[tokio::test]
    async fn stale_deliveries_and_retries_that_would_come_too_late_expire_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("db"), EmbeddedOptions::default()).unwrap());
        for name in [Route::Apns.topic(), Route::Apns.priority_topic(), topic::EVENTS, topic::RETRY, topic::DEAD] {
            db.ensure_topic(name, 1).await.unwrap();
        }
        let now = now_ms();
        let expiring = |n: &str, at: u64| DeliveryJob { requested_at_ms: now, expires_at_ms: Some(at), ..job(n) };
        // Stale already; refused for now with its next try (Retry-After 30 s) past its expiry; in time.
        let (stale, later, ok) =
            (expiring("stale", now - 1), expiring("later", now + 10_000), expiring("ok", now + 60_000));
        let records = [&stale, &later, &ok].map(|j| Record { key: b"u".to_vec(), value: codec::encode(j) });
        db.append(vec![Append { topic: Route::Apns.topic().into(), partition: 0, records: records.to_vec() }])
            .await
            .unwrap();
        run_scripted(&db).await;

        assert!(db.read(topic::RETRY, 0, 0, 10, Duration::ZERO).await.unwrap().is_empty(), "no retry past the expiry");
        assert!(db.read(topic::DEAD, 0, 0, 10, Duration::ZERO).await.unwrap().is_empty());
        let events: Vec<DeliveryEvent> = db
            .read(topic::EVENTS, 0, 0, 10, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|r| codec::decode(&r.value).unwrap())
            .collect();
        let kinds: Vec<(&str, EventKind)> = events.iter().map(|e| (e.notification_id.0.as_str(), e.kind)).collect();
        assert_eq!(kinds, [("stale", EventKind::Expired), ("later", EventKind::Expired), ("ok", EventKind::Sent)]);
        let states = db.states(&[stale.delivery_id, later.delivery_id, ok.delivery_id]).await.unwrap();
        assert_eq!(states, [Some(LedgerState::Failed), Some(LedgerState::Failed), Some(LedgerState::Sent)]);
    }

    /// A push delivery of notification `n` to `token` whose body tells [`Scripted`] its fate.
    fn push_to(n: &str, token: &str, body: &str) -> DeliveryJob {
        let target = Target::Device { device_id: token.into(), platform: Platform::Ios, token: token.into() };
        let notification_id = NotificationId(n.into());
        DeliveryJob {
            delivery_id: DeliveryId::derive(&notification_id, "apns", token),
            notification_id,
            target,
            content: RenderedContent::Push { title: "t".into(), body: body.into() },
            requested_at_ms: now_ms(),
            expires_at_ms: None,
            ..job(n)
        }
    }

    /// Gives each push job of one notification the same fallback: an SMS to `+1555<n>`.
    fn with_fallback(mut jobs: Vec<DeliveryJob>) -> Vec<DeliveryJob> {
        let n = jobs[0].notification_id.clone();
        let phone = Target::Phone { number: format!("+1555{}", n.0) };
        let sms = DeliveryJob {
            delivery_id: DeliveryId::derive(&n, "sms", phone.address()),
            target: phone,
            content: RenderedContent::Sms { text: "fallback".into() },
            ..jobs[0].clone()
        };
        let siblings = jobs.iter().map(|j| j.delivery_id.clone()).collect();
        let fallback = Box::new(herald_schemas::job::Fallback { siblings, jobs: vec![sms] });
        jobs.iter_mut().for_each(|j| j.fallback = Some(fallback.clone()));
        jobs
    }

    #[tokio::test]
    async fn the_fallback_goes_out_once_every_push_sibling_failed_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("db"), EmbeddedOptions::default()).unwrap());
        let routes = Route::ALL.into_iter().flat_map(|r| [r.topic(), r.priority_topic()]);
        for name in routes.chain([topic::EVENTS, topic::RETRY, topic::DEAD]) {
            db.ensure_topic(name, 1).await.unwrap();
        }
        // a: both devices dead now; b: one delivered; c: one dead now, its sibling failed before;
        // d: one dead now, its sibling still waiting for a retry.
        let a = with_fallback(vec![push_to("a", "a1", "dead"), push_to("a", "a2", "never")]);
        let b = with_fallback(vec![push_to("b", "b1", "dead"), push_to("b", "b2", "ok")]);
        let c = with_fallback(vec![push_to("c", "c1", "dead"), push_to("c", "c2", "dead")]);
        let d = with_fallback(vec![push_to("d", "d1", "dead"), push_to("d", "d2", "later")]);
        db.record_deliveries(&[(c[1].delivery_id.clone(), LedgerState::Failed)], None).await.unwrap();
        let batch = [&a[0], &a[1], &b[0], &b[1], &c[0], &d[0]];
        let records = batch.map(|j| Record { key: b"u".to_vec(), value: codec::encode(j) }).to_vec();
        db.append(vec![Append { topic: Route::Apns.topic().into(), partition: 0, records }]).await.unwrap();
        run_scripted(&db).await;

        // The jobs are transactional: their fallback goes to the SMS priority lane.
        let sms = db.read(Route::Sms.priority_topic(), 0, 0, 10, Duration::ZERO).await.unwrap();
        let mut to: Vec<String> =
            sms.iter().map(|r| codec::decode::<DeliveryJob>(&r.value).unwrap().target.address().to_string()).collect();
        to.sort();
        assert_eq!(to, ["+1555a", "+1555c"], "once for a and c; never for b (delivered) or d (still trying)");
    }
}
