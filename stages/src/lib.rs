//! Herald's pipeline stages: validate → enrich → dedup → digest → throttle → quiet hours → render →
//! fan-out.
//!
//! Every stage is a plain type over a batch of [`WorkItem`](herald_schemas::WorkItem)s. It
//! passes on the items that continue and emits one
//! [`DeliveryEvent`](herald_schemas::DeliveryEvent) for every item (or channel of an item)
//! that stops, so every stop is visible. Stages open no connections: state is reached
//! through the store traits of `herald-schemas`, time through an injected
//! [`Clock`](herald_schemas::Clock). A stage that fails returns an error and passes
//! nothing of the batch on, so the batch can be processed again as a whole.
//!
//! # Layout
//! - [`validate`]: schema and semantic checks of requests and users ([`Rejection`] codes); drops
//!   what expired on the way.
//! - [`timing`]: `send_at`, `expires_at`/`ttl` and digest windows, checked and resolved.
//! - [`enrich`]: the recipient's contacts (through a bounded TTL [`ContactCache`]) expanded into targets.
//! - [`dedup`]: drops a repeated `(client, idempotency_key)` inside a window.
//! - [`digest`]: folds notifications of one user and key into a digest (through the schedule index).
//! - [`throttle`]: opt-outs, then per-category frequency caps.
//! - [`quiet`]: quiet hours in the user's time zone (DST-correct): defers into the schedule index.
//! - [`render`]: minijinja rendering with strict variables, a fuel budget and size limits.
//! - [`fanout`]: one delivery job per target.
//! - [`cache`]: the bounded TTL cache behind contacts and compiled templates.
//! - [`retry`]: backoff with full jitter and when to give up on a delivery.

pub mod cache;
pub mod dedup;
pub mod digest;
pub mod enrich;
pub mod fanout;
pub mod quiet;
pub mod render;
pub mod retry;
pub mod throttle;
pub mod timing;
pub mod validate;

#[cfg(test)]
mod fakes;

pub use dedup::DedupStage;
pub use enrich::{ContactCache, ContactCacheConfig, EnrichStage};
pub use fanout::fan_out;
pub use render::{RenderLimits, RenderStage, TemplateCache, check_template};
pub use throttle::{CategoryCap, ThrottleConfig, ThrottleStage};
pub use validate::{Rejection, ValidateLimits, ValidateStage, Validator, validate_user};

use herald_schemas::StageError;
use herald_schemas::store::StoreError;

/// Wraps a store failure for the stage that met it.
fn store_error(stage: &'static str, source: StoreError) -> StageError {
    StageError::Store { stage, source }
}

/// A store that answered with the wrong number of results: ours, not retryable.
fn short_answer(stage: &'static str, store: &'static str, asked: usize, got: usize) -> StageError {
    store_error(stage, StoreError::Corrupt { store, detail: format!("asked for {asked} entries, got {got}") })
}
