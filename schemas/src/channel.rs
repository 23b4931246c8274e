//! Channels: one per provider (or the file outbox).
//!
//! A channel sends a batch of rendered jobs and classifies each result. It
//! does not keep a ledger: the dispatcher does, and never hands a delivery
//! id to a channel twice.

use crate::job::DeliveryJob;
use async_trait::async_trait;
use std::time::Duration;

/// The HTTP header (and mail header) carrying the delivery id to a provider. Providers ignore
/// it; the provider sandbox reads it to count a delivery id seen twice.
pub const DELIVERY_ID_HEADER: &str = "X-Herald-Delivery-Id";

/// How one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted by the provider (its message id when it gives one).
    Delivered { provider_id: Option<String> },
    /// Worth retrying: 5xx, 429, timeouts, resets.
    Retryable { reason: String, retry_after: Option<Duration> },
    /// Never worth retrying: payload too large, invalid request.
    Permanent { reason: String },
    /// The device or address is dead: deactivate it.
    BadAddress { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// An outside system's (disk, network) failure of the whole batch; retry it.
    #[error("channel {channel} failed: {detail}")]
    Unavailable { channel: String, detail: String },
}

#[async_trait]
pub trait Channel: Send + 'static {
    /// Short name for metrics and logs (`outbox-push`, `apns`).
    fn name(&self) -> &str;

    /// Sends every job; one outcome per job, in order.
    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError>;

    /// For a sink Herald owns: its position after the last `send`, to be
    /// committed with the ledger. `None` for a remote provider.
    fn position(&self) -> Option<u64> {
        None
    }

    /// Called once before the first send with the position last committed
    /// with the ledger, so a sink can cut what it wrote after it.
    async fn recover(&mut self, _committed: Option<u64>) -> Result<(), ChannelError> {
        Ok(())
    }
}
