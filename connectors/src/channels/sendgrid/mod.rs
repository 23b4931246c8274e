//! SendGrid v3 Mail Send: one `POST {base_url}/v3/mail/send` per message, `Authorization:
//! Bearer <api key>`, the delivery id in `custom_args` (SendGrid echoes it in every event) and in
//! the [`herald_schemas::channel::DELIVERY_ID_HEADER`] header (read by the provider sandbox).
//!
//! - **Pacing**: at most `max_concurrency` requests in flight and `messages_per_second`.
//! - **Results** ([`classify`]): 202 is delivered (the `X-Message-Id` kept); a 400 about a
//!   recipient's address is a bad address; any other 400, 401, 403 and 413 are permanent; 429
//!   (`Retry-After` or `X-RateLimit-Reset`), 5xx, timeouts and connection failures are retryable.
//! - **Receipts** ([`parse_events`]): the Signed Event Webhook, checked with the account's
//!   verification key ([`EventWebhookKey`]).

mod client;
mod config;
mod events;

pub use client::{SendGrid, classify};
pub use config::SendGridConfig;
pub use events::{EventWebhookKey, SIGNATURE_HEADER, TIMESTAMP_HEADER, parse_events};

use crate::secret::SecretError;

/// A `[providers.sendgrid]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SendGridConfigError {
    #[error("providers.sendgrid.api_key: {0}")]
    ApiKey(SecretError),
    #[error("providers.sendgrid.from {0:?}: give an address or `Name <address>`")]
    From(String),
    #[error("providers.sendgrid.base_url {0:?}: use an http:// or https:// URL")]
    BaseUrl(String),
    #[error("providers.sendgrid.event_webhook_key: {0}")]
    EventWebhookKey(String),
    #[error("providers.sendgrid: cannot build the HTTP client: {0}")]
    Client(String),
}
