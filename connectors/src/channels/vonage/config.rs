//! `[providers.vonage]`.

use crate::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// `[providers.vonage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VonageConfig {
    /// The account's API key (not secret: it names the account).
    pub api_key: String,
    pub api_secret: SecretSource,
    /// The sender: a number (E.164, with or without `+`) or an alphanumeric sender id.
    pub from: String,
    /// `https://rest.nexmo.com`; point it at the sandbox for tests (`http://` is cleartext).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// The sender's rate, in segments per second (Vonage's default account throughput is 30
    /// API requests a second; a long number is about 1 segment a second in many countries).
    #[serde(default = "default_segments_per_second")]
    pub segments_per_second: NonZeroU32,
    /// Where Vonage sends delivery receipts (Herald's receipt endpoint), if anywhere; without it
    /// the account's default DLR webhook is used.
    #[serde(default)]
    pub callback: Option<String>,
    /// The account's signature secret: when set, delivery receipts must be signed with it.
    #[serde(default)]
    pub signature_secret: Option<SecretSource>,
    /// How the account signs webhooks (the dashboard's "signature method").
    #[serde(default)]
    pub signature_method: SignatureMethod,
}

/// The signature methods of Vonage's signed webhooks that Herald checks. (Vonage also offers
/// MD5 HMAC; it is not supported: pick one of these in the dashboard.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMethod {
    /// MD5 of the parameter string with the secret appended (Vonage's legacy default).
    Md5hash,
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

fn default_base_url() -> String {
    "https://rest.nexmo.com".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    30
}
fn default_segments_per_second() -> NonZeroU32 {
    NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN)
}

impl VonageConfig {
    /// A configuration with every default, for tests and the sandbox's printed config.
    pub fn new(api_key: &str, api_secret: SecretSource, from: &str) -> VonageConfig {
        VonageConfig {
            api_key: api_key.into(),
            api_secret,
            from: from.into(),
            base_url: default_base_url(),
            timeout: default_timeout(),
            max_concurrency: default_concurrency(),
            segments_per_second: default_segments_per_second(),
            callback: None,
            signature_secret: None,
            signature_method: SignatureMethod::default(),
        }
    }
}
