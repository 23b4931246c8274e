//! What a producer sends.
//!
//! The same JSON object is an item of `POST /v1/notifications` and a record of
//! `herald-ingest` (the public contract for bulk producers).

use crate::ids::NotificationId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A user-facing channel a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Push,
    Sms,
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Push => "push",
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification as a producer asks for it (after validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    /// The recipient; also the partitioning key of `herald-requests`.
    pub user_id: String,
    /// Template id; the locale variant is chosen from the user's locale.
    pub template: String,
    /// Variables for the template. Always an object.
    #[serde(default = "empty_object")]
    pub data: serde_json::Value,
    /// Channels to deliver on; each expands to the user's targets on it.
    pub channels: Vec<ChannelKind>,
    /// Channels to deliver on instead when no push target can be reached: the user has no
    /// active device, or every device's delivery failed for good. Only with `push` in
    /// `channels`; the fallback goes out once, subject to its channel's opt-outs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<ChannelKind>,
    /// Category for caps and opt-outs; `transactional` is never capped.
    #[serde(default = "default_category")]
    pub category: String,
    /// Producer-chosen key; a repeat inside the dedup window is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Overrides the user's locale for this notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

pub fn default_category() -> String {
    "general".to_string()
}

/// An accepted request as it is stored on `herald-requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub id: NotificationId,
    /// The authenticated client that sent it.
    pub client_id: String,
    /// When Herald accepted it (ms since the Unix epoch).
    pub received_at_ms: u64,
    pub request: NotificationRequest,
}
