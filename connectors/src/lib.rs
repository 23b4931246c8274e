//! Herald's outside systems: everything that touches a disk, a network or a provider.
//!
//! # Layout
//! - [`embedded`]: the embedded backend: one data directory, one fjall database holding the topic
//!   log ([`herald_schemas::topic::TopicLog`]) and every state store ([`herald_schemas::store`]),
//!   with group commit. Entry point: [`embedded::EmbeddedDb::open`].
//! - `fluvio` (cargo feature `fluvio`): the topic log on a Fluvio cluster, consumer positions in
//!   the state backend. Entry point: `fluvio::FluvioLog::connect`.
//! - [`channels`]: channel connectors ([`herald_schemas::channel::Channel`]), one module each;
//!   [`channels::outbox`] is the file outbox used when no provider is configured.
//! - `scylla` (cargo feature `scylla`): the state stores on a ScyllaDB cluster, for distributed
//!   mode: one table per store, created by `scylla::migrate`. Entry point: `scylla::ScyllaState::connect`.
//! - [`receipts`]: delivery receipts from the providers' callbacks, in one shape.
//! - [`secret`]: secrets from the configuration (inline, environment, file), never logged.
//! - [`signed`]: signed tokens (HMAC-SHA256) for links Herald reads back.
//! - [`unsubscribe`]: signed one-click unsubscribe links for the email connectors.
//! - [`webhooks`]: status webhooks' HTTP side: a signed POST of one batch, its failure classified.

pub mod channels;
pub mod embedded;
#[cfg(feature = "fluvio")]
pub mod fluvio;
pub mod receipts;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod secret;
pub mod signed;
pub mod unsubscribe;
pub mod webhooks;
