//! Herald's vocabulary and contracts.
//!
//! This crate has no I/O. It names what flows through Herald and the
//! interfaces every backend and stage implements, so that a stage never knows
//! which store is behind it and a connector never knows about stages.
//!
//! # Layout
//! - [`request`]: what a producer sends (`POST /v1/notifications`, `herald-ingest`).
//! - [`contacts`]: users, devices, preferences.
//! - [`template`]: templates, one part per channel, per locale.
//! - [`work`]: the item that moves through the stages and the rendered targets.
//! - [`job`]: a delivery job, one per target, on `herald-deliveries-<route>`.
//! - [`event`]: delivery events, one for every outcome, on `herald-events`.
//! - [`analytics`]: events as Arrow rows (the schema of the analytics files and SQL tables).
//! - [`topic`]: the topic-log interface and topic names.
//! - [`store`]: the state-store interfaces.
//! - [`channel`]: the channel (provider) interface and its result taxonomy.
//! - [`stage`]: the stage interface and the clock stages use.
//! - [`codec`]: the versioned encoding of records on internal topics.
//! - [`ids`]: notification, delivery and event identifiers.
//! - [`webhook`]: status webhooks: registrations, batches of outcome events, their signature.

pub mod analytics;
pub mod channel;
pub mod codec;
pub mod contacts;
pub mod event;
pub mod ids;
pub mod job;
pub mod request;
pub mod stage;
pub mod store;
pub mod template;
pub mod topic;
pub mod webhook;
pub mod work;

pub use channel::{Channel, SendOutcome};
pub use contacts::{Device, OptOut, Platform, Preferences, User};
pub use event::{DeliveryEvent, EncodedEvent, EventKind};
pub use ids::{DeliveryId, NotificationId};
pub use job::{DeliveryJob, Route, Target};
pub use request::{ChannelKind, NotificationRequest, RequestEnvelope};
pub use stage::{Clock, Stage, StageError, StageOutput, SystemClock};
pub use template::Template;
pub use topic::{Append, Commit, Record, StoredRecord, TopicLog};
pub use work::{RenderedContent, WorkItem};

/// The category that is never capped and ignores category opt-outs.
pub const TRANSACTIONAL: &str = "transactional";
