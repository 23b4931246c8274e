//! Delivery receipts: what a provider reports after it accepted a message (Twilio status
//! callbacks, Vonage delivery receipts, the SendGrid event webhook, SMTP bounces), in one shape.
//!
//! Each provider module parses and authenticates its own callback into a [`Receipt`]; the API
//! turns receipts into `delivered` / `undelivered` / `bounced` events and deactivates the address
//! of a hard bounce or a permanent undelivered. Every connector sends the delivery id along with
//! the message (a callback URL parameter, Vonage's `client-ref`, SendGrid's `custom_args`, the
//! mail's own headers) so that a receipt names the delivery without a lookup table.

use herald_schemas::DeliveryId;

/// How the message ended, as the provider saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// On the handset or in the mailbox.
    Delivered,
    /// Not delivered; `permanent` when the address will never take one (deactivate it).
    Undelivered { permanent: bool },
    /// Mail bounced; `hard` for a mailbox that does not exist (deactivate it).
    Bounced { hard: bool },
}

impl ReceiptStatus {
    /// Whether the address is dead for good.
    pub fn address_is_dead(self) -> bool {
        matches!(self, ReceiptStatus::Undelivered { permanent: true } | ReceiptStatus::Bounced { hard: true })
    }
}

/// One receipt. `address` is the recipient as the provider names it (a phone number, an email
/// address), used only to deactivate it; the API checks it against the delivery id, which is
/// derived from it, before believing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub provider: &'static str,
    pub delivery_id: DeliveryId,
    pub status: ReceiptStatus,
    pub address: Option<String>,
    pub provider_id: Option<String>,
    /// The provider's error code or text, when it gave one.
    pub reason: Option<String>,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// Missing or wrong signature: the callback did not come from the provider (answer 401/403).
    #[error("the {provider} callback's signature is missing or wrong")]
    Unauthenticated { provider: &'static str },
    /// Unparseable or missing a field (answer 400).
    #[error("the {provider} callback is malformed: {detail}")]
    Malformed { provider: &'static str, detail: String },
}
