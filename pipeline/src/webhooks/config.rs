//! `[webhooks]`: how outcome events are collected into batches and POSTed to clients' URLs.

use herald_connectors::webhooks::Destinations;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// The most events a batch may carry (a receiver's body limit, and ScyllaDB's row size, set it).
pub const MAX_BATCH_EVENTS: u32 = 1000;

/// `[webhooks]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Collect and send outcome events on this worker. Off: registrations are still accepted, but
    /// no outcome is collected or sent (nothing is queued for later either).
    pub enabled: bool,
    /// Most events in one batch (one POST); at most 1000.
    pub batch_events: NonZeroU32,
    /// How long the collector waits to fill batches from a partition: fewer, larger POSTs at the
    /// price of this much latency when traffic is light.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// One POST's time limit (connecting included); past it the attempt failed and is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The first retry's delay ceiling; each failure in a row doubles it, up to `backoff_max`
    /// (the delay is random below the ceiling, never below `backoff_min`, never below the
    /// receiver's `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A batch still not accepted this long after it was made is dropped, with an error log, the
    /// `herald_webhook_batches_dropped_total` metric and a `webhook_dropped` alert.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often registrations are read again: a new, changed or removed webhook takes effect
    /// within this time (outcomes recorded before a registration is seen are not sent).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How many of each partition's latest event ids the collector remembers, to drop an event a
    /// replaying stage appended to `herald-events` twice (16 bytes and a set entry each).
    pub dedup_window: NonZeroU32,
    /// Let webhooks go to addresses that are not public: loopback, private networks (10/8,
    /// 172.16/12, 192.168/16), link-local (169.254/16, where clouds serve instance credentials),
    /// unique-local IPv6 and the like. Off by default: clients choose the URLs, and a URL aimed at
    /// the operator's own network would make Herald a way in (SSRF). Turn it on only when every
    /// client with a `send` key is trusted, e.g. for receivers inside your network. Behind an
    /// egress proxy (`HTTPS_PROXY`) the proxy resolves the receivers' names: filter there too.
    pub allow_private_addresses: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_events: NonZeroU32::new(100).expect("> 0"),
            linger: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(3 * 24 * 3600),
            refresh_interval: Duration::from_secs(1),
            dedup_window: NonZeroU32::new(32_768).expect("> 0"),
            allow_private_addresses: false,
        }
    }
}

impl WebhooksConfig {
    /// Where webhook requests may go.
    pub fn destinations(&self) -> Destinations {
        if self.allow_private_addresses { Destinations::Any } else { Destinations::Public }
    }

    /// Limits serde cannot express. Pure.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_events.get() > MAX_BATCH_EVENTS {
            return Err(format!("webhooks.batch_events must be at most {MAX_BATCH_EVENTS}"));
        }
        if self.request_timeout.is_zero() {
            return Err("webhooks.request_timeout must be positive".into());
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err("webhooks.backoff_min must be positive and at most webhooks.backoff_max".into());
        }
        if self.max_age < self.backoff_max {
            return Err("webhooks.max_age must be at least webhooks.backoff_max".into());
        }
        if self.refresh_interval.is_zero() || self.refresh_interval > Duration::from_secs(60) {
            return Err("webhooks.refresh_interval must be between 1ms and 60s".into());
        }
        if self.linger > Duration::from_secs(60) {
            return Err("webhooks.linger must be at most 60s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_are_refused() {
        WebhooksConfig::default().validate().unwrap();
        let refused = |c: WebhooksConfig| c.validate().unwrap_err();
        let d = WebhooksConfig::default;
        assert!(
            refused(WebhooksConfig { batch_events: NonZeroU32::new(1001).unwrap(), ..d() }).contains("batch_events")
        );
        assert!(refused(WebhooksConfig { request_timeout: Duration::ZERO, ..d() }).contains("request_timeout"));
        assert!(refused(WebhooksConfig { backoff_min: Duration::from_secs(600), ..d() }).contains("backoff_min"));
        assert!(refused(WebhooksConfig { max_age: Duration::from_secs(60), ..d() }).contains("max_age"));
        assert!(refused(WebhooksConfig { refresh_interval: Duration::ZERO, ..d() }).contains("refresh_interval"));
        let c: WebhooksConfig = toml::from_str("max_age = \"1h\"\nbackoff_max = \"1m\"").unwrap();
        assert_eq!((c.max_age, c.backoff_max), (Duration::from_secs(3600), Duration::from_secs(60)));
        assert!(toml::from_str::<WebhooksConfig>("retries = 3").is_err());
    }
}
