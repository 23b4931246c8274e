//! `[providers.sendgrid]`.

use crate::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// `[providers.sendgrid]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    /// An API key with the Mail Send permission.
    pub api_key: SecretSource,
    /// The sender, `Name <address>` or an address (a verified sender of the account).
    pub from: String,
    /// `https://api.sendgrid.com`; point it at the sandbox for tests (`http://` is cleartext).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Messages a second at most, to stay under the account's limit rather than meet its 429s.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: NonZeroU32,
    /// The Signed Event Webhook's verification key, base64 as the SendGrid dashboard shows it
    /// (public, so not a secret); without it event webhooks are refused.
    #[serde(default)]
    pub event_webhook_key: Option<String>,
}

fn default_base_url() -> String {
    "https://api.sendgrid.com".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    32
}
fn default_messages_per_second() -> NonZeroU32 {
    NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN)
}

impl SendGridConfig {
    /// A configuration with every default, for tests and the sandbox's printed config.
    pub fn new(api_key: SecretSource, from: &str) -> SendGridConfig {
        SendGridConfig {
            api_key,
            from: from.into(),
            base_url: default_base_url(),
            timeout: default_timeout(),
            max_concurrency: default_concurrency(),
            messages_per_second: default_messages_per_second(),
            event_webhook_key: None,
        }
    }
}
