//! Apple Push Notification service: one `POST {base_url}/3/device/{token}` per notification over
//! HTTP/2, signed with a cached ES256 provider token ([`token`]) or a client certificate.
//! Results are sorted by [`classify`]; the delivery id travels in the `X-Herald-Delivery-Id` header.

mod client;
mod config;
pub mod token;

pub use client::{Apns, ApnsRequest, apns_id, classify};
pub use config::{ApnsAuth, ApnsConfig, DEFAULT_BASE_URL, DEVELOPMENT_BASE_URL};

use crate::secret::SecretError;

/// Why an APNs configuration cannot be used; each names the field at fault (the operator's).
#[derive(Debug, thiserror::Error)]
pub enum ApnsConfigError {
    #[error("providers.apns.topic: the app's bundle id must not be empty")]
    Topic,
    #[error("providers.apns.base_url {0:?}: use an http:// (cleartext HTTP/2) or https:// URL")]
    BaseUrl(String),
    #[error("providers.apns.auth.token_refresh {0:?}: Apple wants a new token every 20 to 60 minutes")]
    TokenRefresh(std::time::Duration),
    #[error("providers.apns.auth.{field}: {source}")]
    Secret { field: &'static str, source: SecretError },
    #[error("providers.apns.auth.{field}: must not be empty")]
    Empty { field: &'static str },
    #[error("providers.apns.auth.key: not a PKCS#8 EC P-256 private key in PEM (an AuthKey_*.p8 file): {0}")]
    SigningKey(String),
    #[error("providers.apns.auth: the certificate and key PEM do not make a client identity: {0}")]
    Identity(String),
    #[error("providers.apns: cannot build the HTTP client: {0}")]
    Client(String),
}

/// A delivery that cannot become an APNs request: never worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ApnsRequestError {
    /// A routing bug upstream: only pushes to iOS devices reach this channel.
    #[error("not a push to a device")]
    NotAPush,
    /// The sender's: APNs allows 64 bytes.
    #[error("apns-collapse-id longer than 64 bytes")]
    CollapseId,
    /// Ours: the payload did not serialize.
    #[error("cannot build the payload: {0}")]
    Payload(String),
}

/// A provider token could not be signed (ours: the key was checked at start, so this is a bug
/// or a broken crypto library).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the APNs provider token: {0}")]
pub struct TokenError(pub String);
