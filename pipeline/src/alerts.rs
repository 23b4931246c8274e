//! Alerts: when a provider fails (its circuit breaker opens), dead letters pile up or a status
//! webhook batch is given up, an error log line, a metric, and optionally a JSON POST to a
//! webhook, rate-limited per alert so an outage sends a few alerts, not thousands.
//!
//! The webhook body: `{"alert": "provider_down" | "dead_letters" | "webhook_dropped", "key":
//! "…", "detail": {…}, "at": "RFC 3339"}`. It is sent from a task of its own with a short
//! timeout, never from the pipeline's path, and a failed POST is logged, not retried (the next
//! alert of the key after `min_interval` is the retry).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where alerts are POSTed as JSON (none: log and metric only).
    pub webhook: Option<String>,
    /// An alert of one key is raised at most once per this interval.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Dead letters within a minute, on one channel, that raise a `dead_letters` alert.
    pub dead_letters_per_minute: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { webhook: None, min_interval: Duration::from_secs(300), dead_letters_per_minute: 10 }
    }
}

pub struct Alerts {
    config: AlertsConfig,
    client: reqwest::Client,
    /// Last time each key was raised.
    last: Mutex<HashMap<String, Instant>>,
    /// Per channel: start of the current minute and dead letters in it.
    dead: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Alerts {
    pub fn new(config: AlertsConfig) -> Alerts {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Alerts { config, client, last: Mutex::default(), dead: Mutex::default() }
    }

    /// Raises `alert` under `key` unless that key was raised within `min_interval`.
    pub fn raise(&self, alert: &'static str, key: &str, detail: serde_json::Value) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.get(key).is_some_and(|at| now.duration_since(*at) < self.config.min_interval) {
                crate::telemetry::alert_suppressed(alert);
                return;
            }
            last.insert(key.to_string(), now);
        }
        crate::telemetry::alert_raised(alert, key, &detail);
        let Some(url) = self.config.webhook.clone() else { return };
        let at = humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let body = serde_json::json!({ "alert": alert, "key": key, "detail": detail, "at": at });
        let client = self.client.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            match client.post(&url).json(&body).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(%url, status = %response.status(), "alert webhook refused the alert"),
                Err(error) => tracing::warn!(%url, %error, "alert webhook unreachable"),
            }
        });
    }

    /// A provider's circuit breaker opened.
    pub fn provider_down(&self, provider: &str) {
        self.raise("provider_down", &format!("provider_down:{provider}"), serde_json::json!({ "provider": provider }));
    }

    /// A status webhook batch was given up (not accepted within `webhooks.max_age`).
    pub fn webhook_dropped(&self, client_id: &str, batch_id: &str, events: u32, age: Duration) {
        let detail = serde_json::json!({
            "client_id": client_id, "batch_id": batch_id, "events": events, "age_s": age.as_secs()
        });
        self.raise("webhook_dropped", &format!("webhook_dropped:{client_id}"), detail);
    }

    /// `count` deliveries of `channel` were dead-lettered just now.
    pub fn dead_letters(&self, channel: &str, count: usize) {
        let now = Instant::now();
        let in_minute = {
            let mut dead = self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (start, n) = dead.entry(channel.to_string()).or_insert((now, 0));
            if now.duration_since(*start) >= Duration::from_secs(60) {
                *start = now;
                *n = 0;
            }
            *n += count as u64;
            *n
        };
        if in_minute >= self.config.dead_letters_per_minute {
            let detail = serde_json::json!({ "channel": channel, "dead_letters_last_minute": in_minute });
            self.raise("dead_letters", &format!("dead_letters:{channel}"), detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_raised_once_per_interval_and_dead_letters_need_the_threshold() {
        let alerts = Alerts::new(AlertsConfig { dead_letters_per_minute: 5, ..AlertsConfig::default() });
        let raised = |a: &Alerts| a.last.lock().unwrap().len();
        alerts.provider_down("twilio");
        alerts.provider_down("twilio");
        alerts.provider_down("smtp");
        assert_eq!(raised(&alerts), 2);
        alerts.dead_letters("sms", 3);
        assert_eq!(raised(&alerts), 2, "3 < 5 in the minute");
        alerts.dead_letters("sms", 2);
        assert_eq!(raised(&alerts), 3);
        let first = alerts.last.lock().unwrap()["provider_down:twilio"];
        alerts.provider_down("twilio");
        assert_eq!(alerts.last.lock().unwrap()["provider_down:twilio"], first, "suppressed, not re-stamped");
    }
}
