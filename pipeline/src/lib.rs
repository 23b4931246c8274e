//! Herald: a durable, exactly-once notification pipeline.
//!
//! # Layout
//! - [`alerts`]: alerts on provider failure and dead letters: log, metric, webhook.
//! - [`config`]: the TOML configuration, validated before any I/O.
//! - [`app`]: backends chosen by configuration, shared caches, the accept path.
//! - [`dlq`]: the dead-letter queue (`herald-dead`): listing and replay.
//! - [`ingest`]: validation and the durable append to `herald-requests`.
//! - [`runtime`]: partition readers, stage chain, dispatchers, sinks, monitor.
//! - [`api`]: the HTTP API (axum).
//! - [`commands`]: the CLI's commands (`serve`, `send`, `contacts import`, …).
//! - [`keys`]: API key creation and hashing.
//! - [`telemetry`]: metric names and named events, logging set-up.
//! - [`tracking`]: email open and click tracking, and the engagement events apps report.
//! - [`webhooks`]: status webhooks: outcome events collected into a durable outbox, POSTed signed.

pub mod alerts;
pub mod analytics;
pub mod api;
pub mod app;
pub mod commands;
pub mod config;
pub mod dlq;
pub mod ingest;
pub mod keys;
pub mod runtime;
pub mod telemetry;
pub mod tracking;
pub mod webhooks;
