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
    /// The recipient; also the partitioning key of `herald-requests`. Empty for a broadcast
    /// (`topic`), which becomes one notification per subscriber, each with its user id.
    #[serde(default)]
    pub user_id: String,
    /// A broadcast: every subscriber of this topic, instead of `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
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
    /// When to send it (RFC 3339, `2026-12-24T18:00:00+09:00`); absent or past: now. It waits in
    /// the durable schedule index, not in memory, and can be cancelled until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// When it goes stale (RFC 3339): not sent after this, dropped with an `expired` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Or how long after acceptance it stays worth sending (`"15m"`, `"2h"`); not with `expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Folds this notification into a digest with the user's others of the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestSpec>,
}

/// How notifications are folded into a digest: those for one user with the same `key` that
/// arrive within `window` of the first are delivered as one message, rendered from `template`
/// with `items` (each notification's `data`, in arrival order) and `count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSpec {
    /// Which notifications fold together (with the user id), e.g. `"comments"`.
    pub key: String,
    /// How long the digest collects after its first notification (`"10m"`).
    pub window: String,
    /// The template of the digest message.
    pub template: String,
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
    /// `request.send_at` resolved (ms); `None` once the scheduler released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at_ms: Option<u64>,
    /// `request.expires_at`, or acceptance + `request.ttl` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Released at the end of the user's quiet hours: not deferred again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet_released: bool,
    /// A digest: how many notifications it folds (its `data.items` may list fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_of: Option<u32>,
}

impl RequestEnvelope {
    /// An envelope for a request accepted at `received_at_ms`, with nothing resolved yet.
    pub fn new(id: NotificationId, client_id: String, received_at_ms: u64, request: NotificationRequest) -> Self {
        Self {
            id,
            client_id,
            received_at_ms,
            request,
            send_at_ms: None,
            expires_at_ms: None,
            quiet_released: false,
            digest_of: None,
        }
    }

    /// Whether it is stale at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}
