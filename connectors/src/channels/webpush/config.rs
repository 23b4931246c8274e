//! `[providers.webpush]` and its check, done without I/O beyond reading the secret.

use super::WebPushConfigError;
use crate::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;
use web_push::{PartialVapidSignatureBuilder, VapidSignatureBuilder};

/// `[providers.webpush]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The application server's P-256 private key, whose public half the browsers subscribed
    /// with: base64url of the raw 32 bytes (as `web-push generate-vapid-keys` prints it), or PEM.
    pub vapid_private_key: SecretSource,
    /// Who push services contact about this sender: a `mailto:` or `https:` URL.
    pub subject: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// How long the push service keeps a message for an offline browser (`TTL`).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// At most this many messages a second (a GCRA token bucket); none when unset.
    #[serde(default)]
    pub messages_per_second: Option<NonZeroU32>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    64
}
fn default_ttl() -> Duration {
    Duration::from_secs(86_400)
}

impl WebPushConfig {
    /// A config with every default.
    pub fn new(vapid_private_key: SecretSource, subject: impl Into<String>) -> WebPushConfig {
        WebPushConfig {
            vapid_private_key,
            subject: subject.into(),
            timeout: default_timeout(),
            max_concurrency: default_concurrency(),
            ttl: default_ttl(),
            messages_per_second: None,
        }
    }

    /// Reads the secret and parses the key; opens no socket.
    pub(super) fn vapid_signer(&self) -> Result<PartialVapidSignatureBuilder, WebPushConfigError> {
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https:")) {
            return Err(WebPushConfigError::Subject(self.subject.clone()));
        }
        let secret = self.vapid_private_key.resolve()?;
        let key = secret.expose().trim();
        let signer = if key.starts_with("-----BEGIN") {
            VapidSignatureBuilder::from_pem_no_sub(key.as_bytes())
        } else {
            VapidSignatureBuilder::from_base64_no_sub(key)
        };
        signer.map_err(|e| WebPushConfigError::VapidKey(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_subject_are_required_and_unknown_fields_are_refused() {
        let config: WebPushConfig =
            serde_json::from_str(r#"{"vapid_private_key": {"file": "/k"}, "subject": "mailto:a@b.c"}"#).unwrap();
        assert_eq!(config, WebPushConfig::new(SecretSource::File { file: "/k".into() }, "mailto:a@b.c"));
        assert!(serde_json::from_str::<WebPushConfig>(r#"{"vapid_private_key": "k"}"#).is_err());
        let typo = serde_json::from_str::<WebPushConfig>(r#"{"vapid_private_key": "k", "subject": "x", "tll": "1h"}"#);
        assert!(typo.unwrap_err().to_string().contains("tll"));
    }
}
