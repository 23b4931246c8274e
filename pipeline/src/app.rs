//! The assembled application: backends chosen by configuration, the caches
//! the API and the stages share, and the accept path.
//!
//! Everything above [`Backends`] sees only the interfaces of
//! `herald_schemas::{topic, store}`; which implementation is behind them is
//! decided here and nowhere else.

use crate::alerts::Alerts;
use crate::config::{Config, StateBackend, TopicsBackend};
use crate::ingest::Ingestor;
use herald_connectors::embedded::{EmbeddedDb, EmbeddedError, EmbeddedOptions};
use herald_connectors::unsubscribe::UnsubscribeLinks;
use herald_schemas::analytics::RecipientHasher;
use herald_schemas::job::Route;
use herald_schemas::stage::{Clock, SystemClock};
use herald_schemas::store::{
    ContactStore, DedupStore, KeyStore, LedgerStore, Membership, OffsetStore, ScheduleStore, SubscriptionStore,
    TemplateStore, ThrottleStore, TimelineFeed, TimelineStore, WebhookStore,
};
use herald_schemas::topic::{self, LogError, TopicLog};
use herald_stages::enrich::{ContactCache, ContactCacheConfig};
use herald_stages::render::TemplateCache;
use herald_stages::validate::Validator;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The topic log and every state store, as interfaces.
#[derive(Clone)]
pub struct Backends {
    pub log: Arc<dyn TopicLog>,
    pub contacts: Arc<dyn ContactStore>,
    pub templates: Arc<dyn TemplateStore>,
    pub dedup: Arc<dyn DedupStore>,
    pub throttle: Arc<dyn ThrottleStore>,
    pub ledger: Arc<dyn LedgerStore>,
    pub keys: Arc<dyn KeyStore>,
    pub timeline: Arc<dyn TimelineStore>,
    /// The schedule index (`send_at`, quiet hours) and the digests collecting.
    pub schedule: Arc<dyn ScheduleStore>,
    /// Users' topic subscriptions, for broadcasts.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// Where the timeline sink writes `herald-events`; `None` when the timeline store reads the
    /// events log itself (embedded), and then no sink runs.
    pub timeline_feed: Option<Arc<dyn TimelineFeed>>,
    /// The embedded database when it is a backend, of topics or state (for retention and flush).
    pub embedded: Option<EmbeddedDb>,
    /// Workers sharing the partitions, when the state backend can coordinate them (ScyllaDB);
    /// `None`: this process is the only worker and owns every partition.
    pub membership: Option<Arc<dyn Membership>>,
    /// Status webhook registrations and the webhook outbox.
    pub webhooks: Arc<dyn WebhookStore>,
}

/// Every state store of one backend, as interfaces.
struct StateStores {
    contacts: Arc<dyn ContactStore>,
    templates: Arc<dyn TemplateStore>,
    dedup: Arc<dyn DedupStore>,
    throttle: Arc<dyn ThrottleStore>,
    ledger: Arc<dyn LedgerStore>,
    keys: Arc<dyn KeyStore>,
    timeline: Arc<dyn TimelineStore>,
    feed: Arc<dyn TimelineFeed>,
    offsets: Arc<dyn OffsetStore>,
    membership: Option<Arc<dyn Membership>>,
    webhooks: Arc<dyn WebhookStore>,
}

impl StateStores {
    fn of<S>(store: Arc<S>, membership: Option<Arc<dyn Membership>>) -> StateStores
    where
        S: ContactStore
            + TemplateStore
            + DedupStore
            + ThrottleStore
            + LedgerStore
            + KeyStore
            + TimelineStore
            + TimelineFeed
            + OffsetStore
            + WebhookStore,
    {
        StateStores {
            contacts: store.clone(),
            templates: store.clone(),
            dedup: store.clone(),
            throttle: store.clone(),
            ledger: store.clone(),
            keys: store.clone(),
            timeline: store.clone(),
            feed: store.clone(),
            webhooks: store.clone(),
            offsets: store,
            membership,
        }
    }
}

impl Backends {
    /// Opens the backends `[backends]` names: the embedded database in `dir` (locked) when
    /// either is embedded, and connections to the clusters otherwise.
    pub async fn open(dir: &Path, config: &Config) -> Result<Backends, OpenError> {
        let topics = config.backends.topics()?;
        let state = config.backends.state()?;
        let embedded = if topics == TopicsBackend::Embedded || state == StateBackend::Embedded {
            let options = EmbeddedOptions {
                default_partitions: config.pipeline.partitions.get(),
                retention: config.pipeline.retention,
                indexed_retention: config.pipeline.timeline_retention,
                ..EmbeddedOptions::default()
            };
            Some(EmbeddedDb::open(dir, options)?)
        } else {
            None
        };
        let (stores, schedule, subscriptions) = match &state {
            StateBackend::Embedded => {
                let db = embedded.clone().ok_or_else(|| OpenError::State("embedded database not open".into()))?;
                let db = Arc::new(db);
                (
                    StateStores::of(db.clone(), None),
                    db.clone() as Arc<dyn ScheduleStore>,
                    db as Arc<dyn SubscriptionStore>,
                )
            }
            #[cfg(feature = "scylla")]
            StateBackend::Scylla(options) => {
                let scylla = herald_connectors::scylla::ScyllaState::connect(options.clone())
                    .await
                    .map_err(|e| OpenError::State(e.to_string()))?;
                let scylla = Arc::new(scylla);
                let stores = StateStores::of(scylla.clone(), Some(scylla.clone()));
                (stores, scylla.clone() as Arc<dyn ScheduleStore>, scylla as Arc<dyn SubscriptionStore>)
            }
        };
        let log: Arc<dyn TopicLog> = match &topics {
            TopicsBackend::Embedded => {
                Arc::new(embedded.clone().ok_or_else(|| OpenError::State("embedded database not open".into()))?)
            }
            #[cfg(feature = "fluvio")]
            TopicsBackend::Fluvio(options) => Arc::new(
                herald_connectors::fluvio::FluvioLog::connect(options.clone(), stores.offsets.clone())
                    .await
                    .map_err(OpenError::TopicBackend)?,
            ),
        };
        // The embedded state reads the timeline from the embedded log itself; any other pair
        // needs the timeline sink to copy `herald-events` into the state store.
        let fed = !(topics == TopicsBackend::Embedded && state == StateBackend::Embedded);
        Ok(Backends {
            log,
            contacts: stores.contacts,
            templates: stores.templates,
            dedup: stores.dedup,
            throttle: stores.throttle,
            ledger: stores.ledger,
            keys: stores.keys,
            timeline: stores.timeline,
            schedule,
            subscriptions,
            timeline_feed: fed.then_some(stores.feed),
            embedded,
            membership: stores.membership,
            webhooks: stores.webhooks,
        })
    }

    /// Creates every topic Herald uses (idempotent; a different partition count is refused).
    pub async fn ensure_topics(&self, partitions: u32) -> Result<(), LogError> {
        let mut names = vec![
            topic::INGEST,
            topic::REQUESTS,
            topic::REQUESTS_PRIORITY,
            topic::BROADCASTS,
            topic::EVENTS,
            topic::RETRY,
            topic::DEAD,
        ];
        names.extend(Route::ALL.iter().flat_map(|r| [r.topic(), r.priority_topic()]));
        for name in names {
            self.log.ensure_topic(name, partitions).await?;
        }
        Ok(())
    }
}

/// Everything a running Herald (or a CLI command on its data directory) uses.
pub struct App {
    pub config: Config,
    pub data_dir: PathBuf,
    pub backends: Backends,
    pub clock: Arc<dyn Clock>,
    pub validator: Arc<Validator>,
    pub contact_cache: Arc<ContactCache>,
    /// Compiled templates of the render stage; the API invalidates on update.
    pub template_cache: Arc<TemplateCache>,
    pub ingestor: Arc<Ingestor>,
    pub alerts: Arc<Alerts>,
    /// Signed one-click unsubscribe links, when `[unsubscribe]` is on.
    pub unsubscribe: Option<Arc<UnsubscribeLinks>>,
    /// Hashes addresses for delivery events and analytics, with this data directory's key.
    pub recipients: Arc<RecipientHasher>,
    /// Email open and click tracking, when `[tracking]` is on.
    pub tracking: Option<Arc<crate::tracking::Tracking>>,
    /// `[quiet_hours]`, parsed.
    pub quiet_hours: herald_stages::quiet::QuietHours,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("cannot create topics: {0}")]
    Topics(#[from] LogError),
    #[error("cannot connect to the topic backend: {0}")]
    TopicBackend(LogError),
    #[error("cannot open the state backend: {0}")]
    State(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("quiet_hours: {0}")]
    QuietHours(#[from] herald_stages::quiet::QuietHoursConfigError),
    #[error("cannot read or create the recipient hash key {path}: {source}")]
    RecipientKey { path: PathBuf, source: std::io::Error },
}

impl App {
    /// Opens the backends and creates the topics. No socket is opened.
    pub async fn open(config: Config, data_dir: PathBuf) -> Result<App, OpenError> {
        let backends = Backends::open(&data_dir, &config).await?;
        let partitions = config.pipeline.partitions.get();
        backends.ensure_topics(partitions).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let validator = Arc::new(Validator::new(backends.templates.clone(), Default::default()));
        let ingestor = Arc::new(Ingestor {
            log: backends.log.clone(),
            schedule: backends.schedule.clone(),
            validator: validator.clone(),
            request_partitions: partitions,
            event_partitions: partitions,
            clock: clock.clone(),
        });
        let limits = config.render_limits();
        let alerts = Arc::new(Alerts::new(config.alerts.clone()));
        let unsubscribe = config.unsubscribe.links()?.map(Arc::new);
        let tracking = config.tracking.tracking()?.map(Arc::new);
        let recipients = Arc::new(recipient_hasher(&data_dir)?);
        let quiet_hours = config.quiet_hours.compile()?;
        Ok(App {
            quiet_hours,
            unsubscribe,
            tracking,
            recipients,
            alerts,
            config,
            data_dir,
            backends,
            contact_cache: Arc::new(ContactCacheConfig::default().build(clock.clone())),
            template_cache: Arc::new(TemplateCache::new(limits.cache_capacity, limits.cache_ttl, clock.clone())),
            clock,
            validator,
            ingestor,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.config.pipeline.partitions.get()
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// Where the analytics sink writes Parquet (`events/date=YYYY-MM-DD/…`).
    pub fn events_dir(&self) -> PathBuf {
        self.data_dir.join("events")
    }
}

/// The data directory's key for hashing recipient addresses: 32 random bytes made on first open
/// and kept in `recipient-hash.key` (readable by the owner only), so one address hashes the same
/// way for the life of the data directory, and differently in any other.
fn recipient_hasher(data_dir: &Path) -> Result<RecipientHasher, OpenError> {
    let path = data_dir.join("recipient-hash.key");
    let failed = |source| OpenError::RecipientKey { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(RecipientHasher::new(key)),
        Ok(_) => return Err(failed(std::io::Error::other("shorter than 32 bytes"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let key: [u8; 32] = rand::random();
    let temp = data_dir.join("recipient-hash.key.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(failed)?;
        file.write_all(&key).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&temp, &path).map_err(failed)?;
    Ok(RecipientHasher::new(key))
}
