//! Vonage SMS API: one `POST {base_url}/sms/json` per message (form fields `api_key`,
//! `api_secret`, `from`, `to`, `text`, `type=unicode` for UCS-2 text, `client-ref` = the delivery
//! id, and `callback` when configured), paced per sender in segments ([`super::sms::SegmentPacer`]).
//! Vonage keeps at most 100 characters of `client-ref`; a delivery id is about 55.
//!
//! - **Results** ([`classify`]): Vonage answers HTTP 200 with a `status` per message part; see
//!   [`classify`] for which status is which class. HTTP 429, 5xx, timeouts and connection
//!   failures are retryable (`Retry-After` honoured).
//! - **Delivery receipts** ([`parse_receipt`]): Vonage's DLR names the delivery by `client-ref`;
//!   with a `signature_secret` configured, an unsigned or wrongly signed DLR is refused.
//! - The delivery id also travels in the [`herald_schemas::channel::DELIVERY_ID_HEADER`] header,
//!   which the provider sandbox reads to count duplicates (Vonage ignores it).

mod client;
mod config;
mod receipt;

pub use client::{Vonage, classify};
pub use config::{SignatureMethod, VonageConfig};
pub use receipt::{DlrVerifier, PERMANENT_DLR_ERRORS, parse_receipt, receipt_params};

use crate::secret::SecretError;

/// A `[providers.vonage]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum VonageConfigError {
    #[error("providers.vonage.api_secret: {0}")]
    ApiSecret(SecretError),
    #[error("providers.vonage.signature_secret: {0}")]
    SignatureSecret(SecretError),
    #[error("providers.vonage.api_key: must not be empty")]
    ApiKey,
    #[error("providers.vonage.base_url {0:?}: use an http:// or https:// URL")]
    BaseUrl(String),
    #[error("providers.vonage: cannot build the HTTP client: {0}")]
    Client(String),
}
