//! Delivery jobs: one per target, on one topic per route.

use crate::contacts::Platform;
use crate::ids::{DeliveryId, NotificationId};
use crate::request::ChannelKind;
use crate::work::RenderedContent;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A provider family with its own topic, so one provider's outage never stalls another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Apns,
    Fcm,
    Webpush,
    Sms,
    Email,
}

impl Route {
    pub const ALL: [Route; 5] = [Route::Apns, Route::Fcm, Route::Webpush, Route::Sms, Route::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Apns => "apns",
            Route::Fcm => "fcm",
            Route::Webpush => "webpush",
            Route::Sms => "sms",
            Route::Email => "email",
        }
    }

    /// The topic its jobs are appended to: `herald-deliveries-<route>`.
    pub fn topic(self) -> &'static str {
        match self {
            Route::Apns => "herald-deliveries-apns",
            Route::Fcm => "herald-deliveries-fcm",
            Route::Webpush => "herald-deliveries-webpush",
            Route::Sms => "herald-deliveries-sms",
            Route::Email => "herald-deliveries-email",
        }
    }

    /// The topic of its priority lane: `transactional` jobs, which a dispatcher takes before the
    /// others, so a marketing backlog never delays them.
    pub fn priority_topic(self) -> &'static str {
        match self {
            Route::Apns => "herald-deliveries-apns-priority",
            Route::Fcm => "herald-deliveries-fcm-priority",
            Route::Webpush => "herald-deliveries-webpush-priority",
            Route::Sms => "herald-deliveries-sms-priority",
            Route::Email => "herald-deliveries-email-priority",
        }
    }

    /// The topic a job of `category` goes to.
    pub fn topic_for(self, category: &str) -> &'static str {
        if category == crate::TRANSACTIONAL { self.priority_topic() } else { self.topic() }
    }

    pub fn channel(self) -> ChannelKind {
        match self {
            Route::Apns | Route::Fcm | Route::Webpush => ChannelKind::Push,
            Route::Sms => ChannelKind::Sms,
            Route::Email => ChannelKind::Email,
        }
    }

    pub fn routes_of(channel: ChannelKind) -> &'static [Route] {
        match channel {
            ChannelKind::Push => &[Route::Apns, Route::Fcm, Route::Webpush],
            ChannelKind::Sms => &[Route::Sms],
            ChannelKind::Email => &[Route::Email],
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A concrete address on one channel.
///
/// Externally tagged (`{"device": {…}}`): an internally tagged enum makes
/// serde buffer every value before decoding it, which cost several
/// microseconds per delivery job on the dispatchers' hot path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Device { device_id: String, platform: Platform, token: String },
    Phone { number: String },
    Email { address: String },
}

impl Target {
    pub fn route(&self) -> Route {
        match self {
            Target::Device { platform: Platform::Ios, .. } => Route::Apns,
            Target::Device { platform: Platform::Android, .. } => Route::Fcm,
            Target::Device { platform: Platform::Web, .. } => Route::Webpush,
            Target::Phone { .. } => Route::Sms,
            Target::Email { .. } => Route::Email,
        }
    }

    pub fn channel(&self) -> ChannelKind {
        self.route().channel()
    }

    /// The provider-facing address (token, number or email address). Never log it.
    pub fn address(&self) -> &str {
        match self {
            Target::Device { token, .. } => token,
            Target::Phone { number } => number,
            Target::Email { address } => address,
        }
    }

    /// A form safe for logs: the kind and a short hash, never the address.
    pub fn redacted(&self) -> String {
        let h = crate::ids::hash_hex(&[self.address().as_bytes()]);
        format!("{}:{}", self.route(), &h[..8])
    }
}

/// One message to one target, ready for a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub delivery_id: DeliveryId,
    pub notification_id: NotificationId,
    pub client_id: String,
    pub user_id: String,
    pub category: String,
    pub template: String,
    pub locale: String,
    pub target: Target,
    pub content: RenderedContent,
    /// 1 for the first try.
    pub attempt: u32,
    pub requested_at_ms: u64,
    /// When it goes stale (ms): not sent after this (an `expired` event instead); providers are
    /// told too (APNs expiration, FCM and Web Push TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// On a push delivery whose request named fallback channels: what to send once every push
    /// delivery of the notification has failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Box<Fallback>>,
}

impl DeliveryJob {
    /// How long a provider should keep it for an offline device: `configured`, shortened to what
    /// is left before `expires_at_ms` (never below a second, so a provider does not read 0 as
    /// "now or never" for a delivery that still has time).
    pub fn provider_ttl(&self, now_ms: u64, configured: std::time::Duration) -> std::time::Duration {
        match self.expires_at_ms {
            Some(at) => {
                let left = std::time::Duration::from_millis(at.saturating_sub(now_ms));
                configured.min(left.max(std::time::Duration::from_secs(1)))
            }
            None => configured,
        }
    }
}

/// The fallback of a notification's push deliveries. Every push job of the notification
/// carries the same one; the dispatcher that sees the last of them fail appends `jobs`. Their
/// delivery ids are derived like any other, so appending them twice (two dispatchers, or a
/// replay) still sends each once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    /// The notification's push deliveries, this one included.
    pub siblings: Vec<DeliveryId>,
    /// The fallback deliveries, rendered, first attempt.
    pub jobs: Vec<DeliveryJob>,
}

/// A delivery a provider refused for now, on `herald-retry` until `due_at_ms`; `job.attempt` is
/// the attempt it will be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryJob {
    pub job: DeliveryJob,
    pub due_at_ms: u64,
    /// Why the previous attempt failed.
    pub last_error: String,
}

/// A delivery given up, on `herald-dead`: out of attempts or time, or refused for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// As last tried (`job.attempt` is the last attempt made).
    pub job: DeliveryJob,
    /// Why it was given up (`permanent:…`, `gave up after 12 attempts`, …).
    pub reason: String,
    /// The provider's answer to the last attempt.
    pub last_error: String,
    pub dead_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_provider_ttl_never_outlives_the_expiry() {
        let mut job = DeliveryJob {
            delivery_id: DeliveryId("d".into()),
            notification_id: NotificationId("n".into()),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "general".into(),
            template: "t".into(),
            locale: "en".into(),
            target: Target::Phone { number: "+15550000000".into() },
            content: RenderedContent::Sms { text: "x".into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(job.provider_ttl(1_000, day), day);
        job.expires_at_ms = Some(1_000 + 90_000);
        assert_eq!(job.provider_ttl(1_000, day), Duration::from_secs(90));
        assert_eq!(job.provider_ttl(1_000, Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(job.provider_ttl(500_000, day), Duration::from_secs(1), "at least a second");
    }
}
