//! Delivery events: one for every outcome, appended to `herald-events`.
//!
//! An event id is derived from what the event says, so a replayed stage emits
//! the same id again and a consumer that keeps ids (the timeline, analytics)
//! stores it once.

use crate::ids::{DeliveryId, NotificationId, hash_hex};
use crate::job::Route;
use crate::request::ChannelKind;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Durably appended to `herald-requests`.
    Accepted,
    /// Held in the schedule index until its `send_at`.
    Scheduled,
    /// Held until the end of the user's quiet hours (`reason`: `quiet_hours`).
    Deferred,
    /// Joined a digest; the digest (`reason`: its notification id) is delivered instead.
    Digested,
    /// Cancelled while it waited (`DELETE /v1/notifications/{id}`).
    Cancelled,
    /// Not sent before its `expires_at` (or `ttl`): dropped.
    Expired,
    /// Failed validation; `reason` names the field.
    Rejected,
    /// Same `(client, idempotency_key)` inside the dedup window.
    Deduplicated,
    /// Over a frequency cap.
    Throttled,
    /// The user refuses this channel or category.
    OptedOut,
    /// Unknown user, or no reachable target on a channel.
    NoTarget,
    /// The template could not be rendered (missing variable, budget, size limit).
    RenderFailed,
    /// Handed to the provider (or written to the outbox).
    Sent,
    /// The provider refused it for good.
    Failed,
    /// The provider reported it on the handset or in the mailbox (a delivery receipt).
    Delivered,
    /// The provider reported it could not be delivered (a delivery receipt).
    Undelivered,
    /// The mail bounced (an event webhook or a bounce message).
    Bounced,
    /// The recipient opened it: the email's tracking pixel was loaded, or the app reported a
    /// push opened (`POST /v1/events`).
    Opened,
    /// The recipient followed a link of it (the email's click redirect), or the app reported a
    /// push's action taken.
    Clicked,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::Accepted,
        EventKind::Scheduled,
        EventKind::Deferred,
        EventKind::Digested,
        EventKind::Cancelled,
        EventKind::Expired,
        EventKind::Rejected,
        EventKind::Deduplicated,
        EventKind::Throttled,
        EventKind::OptedOut,
        EventKind::NoTarget,
        EventKind::RenderFailed,
        EventKind::Sent,
        EventKind::Failed,
        EventKind::Delivered,
        EventKind::Undelivered,
        EventKind::Bounced,
        EventKind::Opened,
        EventKind::Clicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Scheduled => "scheduled",
            EventKind::Deferred => "deferred",
            EventKind::Digested => "digested",
            EventKind::Cancelled => "cancelled",
            EventKind::Expired => "expired",
            EventKind::Rejected => "rejected",
            EventKind::Deduplicated => "deduplicated",
            EventKind::Throttled => "throttled",
            EventKind::OptedOut => "opted_out",
            EventKind::NoTarget => "no_target",
            EventKind::RenderFailed => "render_failed",
            EventKind::Sent => "sent",
            EventKind::Failed => "failed",
            EventKind::Delivered => "delivered",
            EventKind::Undelivered => "undelivered",
            EventKind::Bounced => "bounced",
            EventKind::Opened => "opened",
            EventKind::Clicked => "clicked",
        }
    }
}

impl EventKind {
    /// Whether the event ends the story of a delivery or of a whole notification (what status
    /// webhooks report): a stop in the pipeline, a provider's final answer, or a receipt. Not
    /// the steps on the way (`accepted`, `scheduled`, `deferred`) nor engagement (`opened`,
    /// `clicked`).
    pub fn is_outcome(self) -> bool {
        !matches!(
            self,
            EventKind::Accepted | EventKind::Scheduled | EventKind::Deferred | EventKind::Opened | EventKind::Clicked
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub event_id: String,
    pub notification_id: NotificationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    pub client_id: String,
    pub user_id: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// Machine-readable reason (`invalid_phone`, `unknown_user`, `cap:marketing`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    pub at_ms: u64,
    /// The request's template, category and the rendered locale, when the stage that emits the
    /// event knows them (for analytics; not part of the event id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// When Herald accepted the notification (ms since the Unix epoch), for latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at_ms: Option<u64>,
    /// The address, as a keyed hash ([`crate::analytics::RecipientHasher`]), never in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

impl DeliveryEvent {
    /// An event about a whole notification (or one channel of it).
    pub fn new(
        notification_id: &NotificationId,
        client_id: &str,
        user_id: &str,
        kind: EventKind,
        channel: Option<ChannelKind>,
        reason: Option<String>,
        at_ms: u64,
    ) -> Self {
        let mut e = Self {
            event_id: String::new(),
            notification_id: notification_id.clone(),
            delivery_id: None,
            client_id: client_id.to_string(),
            user_id: user_id.to_string(),
            kind,
            channel,
            route: None,
            reason,
            attempt: 0,
            at_ms,
            template: None,
            category: None,
            locale: None,
            requested_at_ms: None,
            recipient: None,
        };
        e.event_id = e.derive_id();
        e
    }

    /// Sets the delivery this event is about, re-deriving the event id.
    pub fn for_delivery(mut self, delivery_id: &DeliveryId, route: Route, attempt: u32) -> Self {
        self.delivery_id = Some(delivery_id.clone());
        self.route = Some(route);
        self.channel = Some(route.channel());
        self.attempt = attempt;
        self.event_id = self.derive_id();
        self
    }

    fn derive_id(&self) -> String {
        let channel = self.channel.map(|c| c.as_str()).unwrap_or("");
        let delivery = self.delivery_id.as_ref().map(|d| d.0.as_str()).unwrap_or("");
        let attempt = self.attempt.to_le_bytes();
        hash_hex(&[
            self.notification_id.0.as_bytes(),
            self.kind.as_str().as_bytes(),
            channel.as_bytes(),
            delivery.as_bytes(),
            &attempt,
        ])
    }
}

/// An event as it travels on `herald-events`, still encoded: its ids come
/// from the record key, so a consumer that only stores events (the timeline)
/// never decodes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub notification_id: NotificationId,
    pub event_id: String,
    /// [`codec`](crate::codec) bytes of the [`DeliveryEvent`].
    pub bytes: Vec<u8>,
}

impl EncodedEvent {
    pub fn encode(event: &DeliveryEvent) -> Self {
        Self {
            notification_id: event.notification_id.clone(),
            event_id: event.event_id.clone(),
            bytes: crate::codec::encode(event),
        }
    }

    /// The record key: notification id, 0x1f, event id. The partition is
    /// chosen from the notification id alone ([`EncodedEvent::partition`]), so
    /// a notification's events stay in one partition, in order.
    pub fn record_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.notification_id.0.len() + 1 + self.event_id.len());
        key.extend_from_slice(self.notification_id.0.as_bytes());
        key.push(KEY_SEPARATOR);
        key.extend_from_slice(self.event_id.as_bytes());
        key
    }

    pub fn partition(&self, partitions: u32) -> u32 {
        crate::topic::partition_for_key(self.notification_id.0.as_bytes(), partitions)
    }

    /// Rebuilds it from a record of `herald-events`; `None` for a key not made by [`record_key`](Self::record_key).
    pub fn from_record(key: &[u8], value: Vec<u8>) -> Option<Self> {
        let at = key.iter().position(|&b| b == KEY_SEPARATOR)?;
        let notification = std::str::from_utf8(&key[..at]).ok()?;
        let event = std::str::from_utf8(&key[at + 1..]).ok()?;
        Some(Self {
            notification_id: NotificationId(notification.to_string()),
            event_id: event.to_string(),
            bytes: value,
        })
    }

    pub fn decode(&self) -> Result<DeliveryEvent, crate::codec::CodecError> {
        crate::codec::decode(&self.bytes)
    }
}

const KEY_SEPARATOR: u8 = crate::topic::KEY_GROUP_SEPARATOR;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_events_round_trip_through_a_record() {
        let n = NotificationId("n-1".into());
        let e = DeliveryEvent::new(&n, "c", "u", EventKind::Accepted, None, None, 1);
        let enc = EncodedEvent::encode(&e);
        let back = EncodedEvent::from_record(&enc.record_key(), enc.bytes.clone()).unwrap();
        assert_eq!(back, enc);
        assert_eq!(back.decode().unwrap(), e);
        assert_eq!(enc.partition(8), crate::topic::partition_for_key(b"n-1", 8));
        assert!(EncodedEvent::from_record(b"no-separator", vec![]).is_none());
    }

    #[test]
    fn event_ids_follow_content_not_time() {
        let n = NotificationId("n".into());
        let a = DeliveryEvent::new(&n, "c", "u", EventKind::Accepted, None, None, 1);
        let b = DeliveryEvent::new(&n, "c", "u", EventKind::Accepted, None, None, 2);
        assert_eq!(a.event_id, b.event_id);
        let d = DeliveryId("d".into());
        let s = DeliveryEvent::new(&n, "c", "u", EventKind::Sent, None, None, 1).for_delivery(&d, Route::Sms, 1);
        let s2 = DeliveryEvent::new(&n, "c", "u", EventKind::Sent, None, None, 1).for_delivery(&d, Route::Sms, 2);
        assert_ne!(s.event_id, s2.event_id);
        assert_ne!(a.event_id, s.event_id);
    }
}
