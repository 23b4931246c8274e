//! The runtime: the long-running tasks of a Herald worker.
//!
//! - the request chains ([`requests`]), one per lane, over the worker's partitions of `herald-requests`,
//!   and the priority lane's over `herald-requests-priority` (transactional);
//! - one dispatcher per channel ([`dispatch`]) over the delivery topics;
//! - the retry scheduler ([`retry`]): `herald-retry` back onto the delivery topics when due;
//! - the scheduler ([`schedule`]): the schedule index (`send_at`, quiet hours, digests) back into
//!   `herald-requests` when due;
//! - the broadcast expander ([`broadcast`]): `herald-broadcasts`, a page of subscribers at a time,
//!   into one request per subscriber;
//! - the timeline sink ([`timeline`]) over `herald-events`, when the timeline store needs a feed;
//! - the `herald-ingest` consumer ([`ingest_topic`]);
//! - the analytics sink ([`crate::analytics::sink`]): `herald-events` as Parquet files;
//! - the status webhooks ([`crate::webhooks`]): outcome events into the webhook outbox, and its
//!   senders;
//! - the monitor ([`monitor`]): offsets, lag, retention.
//!
//! The priority lane's chain and dispatchers and the monitor run on the caller's runtime; the rest
//! on the bulk runtime ([`pools`]), at a lower OS priority.
//!
//! Each chain runs under [`supervise`](supervise::supervise): a failure
//! replays from the last commit. [`Runtime::stop`] stops the readers and
//! lets every chain drain and commit what it holds before returning.

pub mod broadcast;
pub mod dispatch;
pub mod ingest_topic;
pub mod monitor;
pub mod pools;
pub mod queue;
pub mod reader;
pub mod recent;
pub mod requests;
pub mod retry;
pub mod schedule;
pub mod supervise;
pub mod timeline;
pub mod workers;

use crate::alerts::Alerts;
use crate::app::App;
use crate::config::{Config, ProviderKind};
use dispatch::{ChannelFactory, Dispatcher, Lane};
use herald_connectors::channels::apns::Apns;
use herald_connectors::channels::breaker::{BreakerConfig, BreakerState, Guarded};
use herald_connectors::channels::failover::Failover;
use herald_connectors::channels::fcm::Fcm;
use herald_connectors::channels::outbox::FileOutbox;
use herald_connectors::channels::pace::Paced;
use herald_connectors::channels::routed::Routed;
use herald_connectors::channels::sendgrid::SendGrid;
use herald_connectors::channels::smtp::Smtp;
use herald_connectors::channels::twilio::Twilio;
use herald_connectors::channels::vonage::Vonage;
use herald_connectors::channels::webpush::WebPush;
use herald_connectors::unsubscribe::UnsubscribeLinks;
use herald_schemas::channel::{Channel, ChannelError};
use herald_schemas::job::Route;
use herald_schemas::topic;
use herald_schemas::{Stage, request::ChannelKind};
use herald_stages::dedup::DedupStage;
use herald_stages::digest::DigestStage;
use herald_stages::enrich::EnrichStage;
use herald_stages::quiet::QuietHoursStage;
use herald_stages::render::RenderStage;
use herald_stages::throttle::ThrottleStage;
use herald_stages::validate::ValidateStage;
use monitor::{Monitor, Watch};
use pools::BulkPool;
use reader::ReadSettings;
use requests::{RequestChain, StageFactory};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use supervise::supervise;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Runtime {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Where everything but the priority lane and the monitor runs ([`pools`]); dropped after
    /// the tasks ended.
    bulk: BulkPool,
    /// Requests appended but not yet through the chain (for the API's 503).
    pub request_lag: Arc<AtomicU64>,
}

impl Runtime {
    /// Starts every task of a worker that owns all partitions.
    pub fn start(app: &App) -> Runtime {
        Self::start_owning(app, (0..app.partitions()).collect())
    }

    /// Starts every task of a worker over the partitions it owns (`owned`, partition numbers of
    /// every topic: a user's records are in the same partition of each).
    pub fn start_owning(app: &App, owned: Arc<[u32]>) -> Runtime {
        let shutdown = CancellationToken::new();
        let request_lag = Arc::new(AtomicU64::new(0));
        let cfg = &app.config.pipeline;
        let partitions = app.partitions();
        let read = ReadSettings {
            batch_size: cfg.batch_size.get() as usize,
            read_wait: cfg.read_wait,
            queue_records: cfg.queue_records.get() as usize,
            linger: cfg.linger,
        };
        let log = app.backends.log.clone();
        let mut tasks = Vec::new();
        // The priority lane's provider runtime takes this thread's priority, not the bulk's.
        herald_connectors::channels::io::start();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let bulk = BulkPool::start(cfg.bulk_nice, threads).unwrap_or_else(|error| {
            tracing::error!(%error, "no runtime of its own for the bulk work: it shares the priority lane's");
            BulkPool::start(0, threads).expect("sharing the current runtime cannot fail")
        });

        // Lanes: independent request chains, each over its share of the partitions. A user's
        // partition belongs to one lane, so per-user order and state stay in one chain.
        let lanes = cfg.lanes.get().min(partitions);
        for lane in 0..lanes {
            let lane_partitions: Vec<u32> = owned.iter().copied().filter(|p| p % lanes == lane).collect();
            if lane_partitions.is_empty() {
                continue;
            }
            let chain = RequestChain {
                log: log.clone(),
                topic: topic::REQUESTS,
                stages: stage_factory(app),
                partitions: lane_partitions,
                route_partitions: partitions,
                event_partitions: partitions,
                read: read.clone(),
            };
            tasks.push(bulk.spawn(supervise("requests", shutdown.clone(), move |t, set| chain.start(t, set))));
        }
        // The priority lane: transactional requests in a chain of their own, over every owned
        // partition of their topic, so a marketing backlog in the others never delays them.
        let chain = RequestChain {
            log: log.clone(),
            topic: topic::REQUESTS_PRIORITY,
            stages: stage_factory(app),
            partitions: owned.to_vec(),
            route_partitions: partitions,
            event_partitions: partitions,
            read: read.clone(),
        };
        tasks.push(tokio::spawn(supervise("requests-priority", shutdown.clone(), move |t, set| chain.start(t, set))));

        let mut watches = [topic::REQUESTS, topic::REQUESTS_PRIORITY]
            .map(|t| Watch { group: requests::GROUP.into(), topic: t.into(), partitions: owned.clone() })
            .to_vec();
        for (name, channel) in [("push", ChannelKind::Push), ("sms", ChannelKind::Sms), ("email", ChannelKind::Email)] {
            let factory = channel_factory(app, name, channel);
            let routes = Route::routes_of(channel);
            // One dispatcher takes both lanes, priority first, where two channels would clash: a
            // file outbox has one writer. (APNs connectors of one key share its provider token.)
            let kinds = |r: &Route| app.config.channels.for_route(*r).0.clone();
            let shared = routes.iter().flat_map(kinds).any(|k| k == ProviderKind::Outbox);
            let lanes: &[Lane] = if shared { &[Lane::Both] } else { &[Lane::Normal, Lane::Priority] };
            for &lane in lanes {
                let dispatcher = Dispatcher {
                    name,
                    routes: routes.to_vec(),
                    lane,
                    log: log.clone(),
                    ledger: app.backends.ledger.clone(),
                    contacts: app.backends.contacts.clone(),
                    contact_cache: app.contact_cache.clone(),
                    alerts: app.alerts.clone(),
                    channel: factory.clone(),
                    route_partitions: partitions,
                    event_partitions: partitions,
                    owned: owned.clone(),
                    read: read.clone(),
                    retry: app.config.retry.policy(channel).clone(),
                    recipients: app.recipients.clone(),
                    tracking: app.tracking.clone(),
                };
                for topic in dispatcher.topics() {
                    watches.push(Watch { group: dispatcher.group(), topic: topic.into(), partitions: owned.clone() });
                }
                let task = supervise(name, shutdown.clone(), move |t, set| dispatcher.start(t, set));
                tasks.push(if lane == Lane::Normal { bulk.spawn(task) } else { tokio::spawn(task) });
            }
        }

        let scheduler = retry::RetryScheduler {
            log: log.clone(),
            partitions,
            owned: owned.clone(),
            read: read.clone(),
            max_waiting: app.config.retry.max_waiting,
        };
        tasks.push(bulk.spawn(supervise("retry", shutdown.clone(), move |t, set| scheduler.start(t, set))));

        let scheduler = schedule::Scheduler {
            log: log.clone(),
            store: app.backends.schedule.clone(),
            owned: owned.clone(),
            partitions,
            clock: app.clock.clone(),
            poll_interval: app.config.schedule.poll_interval,
            page: app.config.schedule.page.get() as usize,
            digest_items: app.config.schedule.digest_items.get() as usize,
            max_data_bytes: app.validator.limits().max_data_bytes,
        };
        tasks.push(bulk.spawn(supervise("schedule", shutdown.clone(), move |t, set| scheduler.start(t, set))));

        let expander = broadcast::BroadcastExpander {
            log: log.clone(),
            store: app.backends.subscriptions.clone(),
            owned: owned.clone(),
            partitions,
            read: read.clone(),
            clock: app.clock.clone(),
            page: app.config.schedule.broadcast_page.get() as usize,
            request_lag: request_lag.clone(),
            lag_high_water: app.config.api.lag_high_water,
        };
        watches.push(Watch {
            group: broadcast::GROUP.into(),
            topic: topic::BROADCASTS.into(),
            partitions: owned.clone(),
        });
        tasks.push(bulk.spawn(supervise("broadcast", shutdown.clone(), move |t, set| expander.start(t, set))));

        if let Some(store) = app.backends.timeline_feed.clone() {
            let sink =
                timeline::TimelineSink { log: log.clone(), store, partitions: owned.clone(), read: read.clone() };
            watches.push(Watch {
                group: timeline::GROUP.into(),
                topic: topic::EVENTS.into(),
                partitions: owned.clone(),
            });
            tasks.push(bulk.spawn(supervise("timeline", shutdown.clone(), move |t, set| sink.start(t, set))));
        }

        if app.config.analytics.enabled {
            let sink = crate::analytics::sink::AnalyticsSink {
                log: log.clone(),
                root: app.events_dir(),
                partitions: owned.clone(),
                read: read.clone(),
                flush_rows: app.config.analytics.flush_rows.get() as usize,
                flush_interval: app.config.analytics.flush_interval,
                dedup_window: app.config.analytics.dedup_window.get() as usize,
                compact_interval: Some(app.config.analytics.compact_interval).filter(|i| !i.is_zero()),
                compact_target_bytes: app.config.analytics.compact_target_mib.get() as u64 * 1024 * 1024,
            };
            watches.push(Watch {
                group: crate::analytics::sink::GROUP.into(),
                topic: topic::EVENTS.into(),
                partitions: owned.clone(),
            });
            tasks.push(bulk.spawn(supervise("analytics", shutdown.clone(), move |t, set| sink.start(t, set))));
        }

        if app.config.webhooks.enabled {
            watches.push(Watch {
                group: crate::webhooks::collect::GROUP.into(),
                topic: topic::EVENTS.into(),
                partitions: owned.clone(),
            });
            tasks.extend(crate::webhooks::start(app, owned.clone(), &read, &shutdown, bulk.handle()));
        }

        if app.config.ingest.enabled {
            let consumer = ingest_topic::IngestConsumer {
                log: log.clone(),
                ingestor: app.ingestor.clone(),
                client_id: app.config.ingest.client_id.clone(),
                partitions: owned.clone(),
                read: read.clone(),
            };
            watches.push(Watch {
                group: ingest_topic::GROUP.into(),
                topic: topic::INGEST.into(),
                partitions: owned.clone(),
            });
            tasks.push(bulk.spawn(supervise("ingest", shutdown.clone(), move |t, set| consumer.start(t, set))));
        }

        let monitor = Monitor {
            log,
            watches,
            request_lag: request_lag.clone(),
            interval: cfg.monitor_interval,
            store: app.backends.embedded.clone(),
            retention_every: cfg.retention_interval,
        };
        tasks.push(tokio::spawn(monitor.run(shutdown.clone())));
        if cfg.realtime_priority > 0 {
            enter_realtime(cfg.realtime_priority);
        }
        tracing::info!(partitions, owned = ?owned, bulk_nice = cfg.bulk_nice, separate = bulk.is_separate(), "runtime started");
        Runtime { shutdown, tasks, bulk, request_lag }
    }

    /// The bulk runtime's handle, for other bulk work of the process (the API's non-transactional
    /// batches). Its tasks are dropped when the runtime stops.
    pub fn bulk_handle(&self) -> tokio::runtime::Handle {
        self.bulk.handle().clone()
    }

    /// Stops reading, drains every chain, commits, and returns when all tasks ended.
    pub async fn stop(self) {
        let Runtime { shutdown, tasks, bulk, .. } = self;
        shutdown.cancel();
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "runtime task ended abnormally");
            }
        }
        drop(bulk);
        tracing::info!("runtime stopped");
    }
}

/// The stages of the request chain, in order, built fresh for each (re)start.
fn stage_factory(app: &App) -> StageFactory {
    let b = app.backends.clone();
    let validator = app.validator.clone();
    let cache = app.contact_cache.clone();
    let clock = app.clock.clone();
    let window = app.config.dedup.window;
    let throttle = app.config.throttle.clone();
    let quiet = app.quiet_hours.clone();
    let partitions = app.partitions();
    let limits = app.config.render_limits();
    let templates = app.template_cache.clone();
    Arc::new(move || {
        vec![
            Box::new(ValidateStage::with_clock(validator.clone(), clock.clone())) as Box<dyn Stage>,
            Box::new(EnrichStage::new(b.contacts.clone(), cache.clone(), clock.clone())),
            Box::new(DedupStage::new(b.dedup.clone(), window, clock.clone())),
            Box::new(DigestStage::new(b.schedule.clone(), partitions, clock.clone())),
            Box::new(ThrottleStage::new(b.throttle.clone(), throttle.clone(), clock.clone())),
            Box::new(QuietHoursStage::new(b.schedule.clone(), quiet.clone(), partitions, clock.clone())),
            Box::new(RenderStage::with_cache(b.templates.clone(), limits.clone(), templates.clone())),
        ]
    })
}

/// The connector a channel's dispatcher sends through, from `[channels]`: the file outbox when
/// every route of the channel uses it; otherwise each route's providers (in failover order, each
/// behind its breaker), with the outbox for the routes that name it. Called again on each
/// restart of the dispatcher.
fn channel_factory(app: &App, name: &'static str, channel: ChannelKind) -> ChannelFactory {
    let routes = Route::routes_of(channel);
    let config = app.config.clone();
    let outbox_path = app.outbox_dir().join(format!("{name}.jsonl"));
    let (alerts, links) = (app.alerts.clone(), app.unsubscribe.clone());
    Arc::new(move || {
        let outbox = || {
            FileOutbox::open(outbox_path.clone(), format!("outbox-{name}"))
                .map(|o| Box::new(o) as Box<dyn Channel>)
                .map_err(|e| unavailable(&format!("outbox-{name}"), e))
        };
        if routes.iter().all(|r| config.channels.for_route(*r).is_outbox()) {
            return outbox();
        }
        let mut channels: Vec<Box<dyn Channel>> = Vec::new();
        let mut by_route = Vec::new();
        let mut outbox_at = None;
        for route in routes {
            let kinds = &config.channels.for_route(*route).0;
            let index = if kinds == &[ProviderKind::Outbox] {
                match outbox_at {
                    Some(i) => i,
                    None => {
                        channels.push(outbox()?);
                        *outbox_at.insert(channels.len() - 1)
                    }
                }
            } else {
                let providers = kinds
                    .iter()
                    .map(|kind| provider(&config, *kind, links.clone()).map(|c| guarded(c, &config.breaker, &alerts)))
                    .collect::<Result<Vec<_>, _>>()?;
                channels.push(Box::new(Failover::new(providers)));
                channels.len() - 1
            };
            by_route.push((*route, index));
        }
        if channels.len() == 1 {
            return Ok(channels.remove(0));
        }
        Routed::new(name, channels, by_route).map(|r| Box::new(r) as Box<dyn Channel>).map_err(|e| unavailable(name, e))
    })
}

/// One provider's connector, built from its `[providers.<name>]` (checked by `Config::validate`).
fn provider(
    config: &Config,
    kind: ProviderKind,
    links: Option<Arc<UnsubscribeLinks>>,
) -> Result<Box<dyn Channel>, ChannelError> {
    let name = kind.as_str();
    let missing = || unavailable(name, format!("no [providers.{name}] section"));
    let providers = &config.providers;
    let failed = |e: &dyn std::fmt::Display| unavailable(name, e);
    // The connector, and the rate limit it does not apply itself.
    let (channel, per_second): (Box<dyn Channel>, _) = match kind {
        ProviderKind::Apns => {
            let config = providers.apns.as_ref().ok_or_else(missing)?;
            (Box::new(Apns::new(config).map_err(|e| failed(&e))?), config.messages_per_second)
        }
        ProviderKind::Fcm => {
            let config = providers.fcm.as_ref().ok_or_else(missing)?;
            (Box::new(Fcm::new(config).map_err(|e| failed(&e))?), config.messages_per_second)
        }
        ProviderKind::Webpush => {
            let config = providers.webpush.as_ref().ok_or_else(missing)?;
            (Box::new(WebPush::new(config).map_err(|e| failed(&e))?), config.messages_per_second)
        }
        ProviderKind::Smtp => {
            let config = providers.smtp.as_ref().ok_or_else(missing)?;
            (Box::new(Smtp::new(config, links).map_err(|e| failed(&e))?), config.messages_per_second)
        }
        // These pace themselves: SMS in segments, SendGrid per request.
        ProviderKind::Twilio => {
            (Box::new(Twilio::new(providers.twilio.as_ref().ok_or_else(missing)?).map_err(|e| failed(&e))?), None)
        }
        ProviderKind::Vonage => {
            (Box::new(Vonage::new(providers.vonage.as_ref().ok_or_else(missing)?).map_err(|e| failed(&e))?), None)
        }
        ProviderKind::Sendgrid => {
            let config = providers.sendgrid.as_ref().ok_or_else(missing)?;
            (Box::new(SendGrid::new(config, links).map_err(|e| failed(&e))?), None)
        }
        ProviderKind::Outbox => return Err(missing()),
    };
    Ok(match per_second {
        Some(rate) => Box::new(Paced::new(channel, rate)),
        None => channel,
    })
}

fn unavailable(channel: &str, detail: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable { channel: channel.into(), detail: detail.to_string() }
}

/// A provider's channel behind its circuit breaker, whose state is exported as a metric; an
/// opening raises a `provider_down` alert.
fn guarded(channel: Box<dyn Channel>, breaker: &BreakerConfig, alerts: &Arc<Alerts>) -> Guarded {
    let alerts = Arc::clone(alerts);
    let on_change = Box::new(move |provider: &str, state: BreakerState| {
        crate::telemetry::breaker_state(provider, state);
        if state == BreakerState::Open {
            alerts.provider_down(provider);
        }
    });
    Guarded::new(channel, breaker.clone(), on_change)
}

/// Moves the priority threads, all started by now, to the real-time class (`[pipeline]
/// realtime_priority`); a refusal is a warning, and they stay where they were.
fn enter_realtime(priority: u8) {
    use herald_connectors::channels::io::{REALTIME_THREADS, enter_realtime};
    match enter_realtime(priority, &REALTIME_THREADS) {
        Ok(threads) => tracing::info!(priority, threads, "priority threads run in the real-time class (SCHED_FIFO)"),
        Err(error) => tracing::warn!(
            %error,
            priority,
            "the priority threads stay in the normal class (grant CAP_SYS_NICE or LimitRTPRIO): \
             transactional work may wait behind bulk work on a saturated CPU"
        ),
    }
}
