//! Web Push (RFC 8030) to browsers: one `POST` to each subscription's endpoint, signed with
//! VAPID (RFC 8292) and with the payload encrypted for the subscription (aes128gcm, RFC 8291),
//! both done by the `web-push` crate; the request is sent with reqwest.
//!
//! - **Address**: the device token is the browser's subscription JSON
//!   `{"endpoint", "keys": {"p256dh", "auth"}}`. One that cannot be parsed or whose keys are not
//!   keys is a bad address: no retry can make it work, and deactivating it stops the waste.
//! - **Results** ([`classify`]): 200/201/202 delivered (the `Location` header kept); 404 and 410
//!   (subscription gone) a bad address; 429, 5xx, timeouts and connection failures retryable
//!   (`Retry-After` honoured); 413 and any other 4xx (a VAPID key the push service refuses)
//!   permanent.
//! - The delivery id travels in the [`DELIVERY_ID_HEADER`](herald_schemas::channel::DELIVERY_ID_HEADER)
//!   header (push services ignore it) and inside the encrypted payload as `delivery_id`.

mod client;
mod config;

pub use client::{WebPush, classify};
pub use config::WebPushConfig;

use crate::secret::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum WebPushConfigError {
    #[error("providers.webpush.vapid_private_key: {0}")]
    Secret(#[from] SecretError),
    #[error("providers.webpush.vapid_private_key: not a P-256 private key (base64url raw, or PEM): {0}")]
    VapidKey(String),
    #[error("providers.webpush.subject {0:?}: use a mailto: or https: URL")]
    Subject(String),
    #[error("providers.webpush: cannot build the HTTP client: {0}")]
    Client(String),
}
