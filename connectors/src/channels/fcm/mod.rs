//! Firebase Cloud Messaging, HTTP v1: one `POST {base_url}/v1/projects/{project}/messages:send`
//! per Android device, with an OAuth2 access token from the service account ([`auth`]).
//!
//! - **Auth**: a token is fetched with a signed RS256 assertion, shared by every send, and renewed
//!   shortly before it expires by one request however many sends wait for it. FCM's 401
//!   `UNAUTHENTICATED` drops the token the send used and is retryable.
//! - **Results** ([`classify`]): 200 is delivered (FCM's message `name` kept); `UNREGISTERED`,
//!   `SENDER_ID_MISMATCH` and an invalid registration token are a bad address; `QUOTA_EXCEEDED`,
//!   `UNAVAILABLE`, `INTERNAL`, timeouts and connection failures are retryable (`Retry-After`
//!   honoured); any other error (payload too big, `THIRD_PARTY_AUTH_ERROR`) is permanent.
//! - The delivery id travels in the [`DELIVERY_ID_HEADER`](herald_schemas::channel::DELIVERY_ID_HEADER)
//!   header and in the message's `data.delivery_id`.

pub mod auth;
mod client;
mod config;

pub use client::{Fcm, classify};
pub use config::{FcmConfig, ServiceAccount};

use crate::secret::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum FcmConfigError {
    #[error("providers.fcm.service_account: {0}")]
    Secret(#[from] SecretError),
    #[error("providers.fcm.service_account: not a service-account JSON: {0}")]
    ServiceAccount(String),
    #[error("providers.fcm.service_account: private_key is not a usable RSA PEM key: {0}")]
    PrivateKey(String),
    #[error("providers.fcm.{field} {value:?}: use an http:// or https:// URL")]
    Url { field: &'static str, value: String },
    #[error("providers.fcm.project_id: empty, and the service account names none")]
    Project,
    #[error("providers.fcm: cannot build the HTTP client: {0}")]
    Client(String),
}
