//! `[providers.fcm]` and its check, done without I/O beyond reading the secret.

use super::FcmConfigError;
use super::auth::Assertion;
use crate::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// `[providers.fcm]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service-account JSON as Google's console downloads it (inline, `{ env }` or `{ file }`):
    /// its `project_id`, `client_email`, `private_key` and `token_uri` are used.
    pub service_account: SecretSource,
    /// The Firebase project to send through, when not the service account's own.
    #[serde(default)]
    pub project_id: Option<String>,
    /// `https://fcm.googleapis.com`; point it at the sandbox for tests (`http://` is cleartext).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The OAuth2 token endpoint, when not the service account's `token_uri`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Per request, to FCM and to the token endpoint.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// How long FCM keeps a message for an offline device (`android.ttl`).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// At most this many messages a second: FCM allows 600,000 a minute per project.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: Option<NonZeroU32>,
}

fn default_messages_per_second() -> Option<NonZeroU32> {
    NonZeroU32::new(10_000)
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
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

impl FcmConfig {
    /// A config with every default, for `service_account`.
    pub fn new(service_account: SecretSource) -> FcmConfig {
        FcmConfig {
            service_account,
            project_id: None,
            base_url: default_base_url(),
            token_url: None,
            timeout: default_timeout(),
            max_concurrency: default_concurrency(),
            ttl: default_ttl(),
            messages_per_second: default_messages_per_second(),
        }
    }
}

/// The fields of a service-account JSON that FCM needs. The file has more; they are ignored.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"***")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

/// A checked configuration: what [`super::Fcm::new`] builds from.
#[derive(Debug)]
pub(super) struct Checked {
    pub send_url: String,
    pub assertion: Assertion,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub ttl: Duration,
}

fn http_url(field: &'static str, value: &str) -> Result<String, FcmConfigError> {
    let url = value.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_string())
    } else {
        Err(FcmConfigError::Url { field, value: value.to_string() })
    }
}

impl FcmConfig {
    /// Reads the secret and checks the service account and its key (by signing a test
    /// assertion); opens no socket.
    pub(super) fn check(&self) -> Result<Checked, FcmConfigError> {
        let secret = self.service_account.resolve()?;
        let account: ServiceAccount =
            serde_json::from_str(secret.expose()).map_err(|e| FcmConfigError::ServiceAccount(e.to_string()))?;
        let project = self.project_id.clone().unwrap_or_else(|| account.project_id.clone());
        if project.is_empty() {
            return Err(FcmConfigError::Project);
        }
        let base = http_url("base_url", &self.base_url)?;
        let token_url = match &self.token_url {
            Some(url) => http_url("token_url", url)?,
            None => http_url("service_account.token_uri", &account.token_uri)?,
        };
        let assertion = Assertion::new(&account, token_url)?;
        Ok(Checked {
            send_url: format!("{base}/v1/projects/{project}/messages:send"),
            assertion,
            timeout: self.timeout,
            max_concurrency: self.max_concurrency.max(1),
            ttl: self.ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_service_account_is_required_and_unknown_fields_are_refused() {
        let config: FcmConfig = serde_json::from_str(r#"{"service_account": {"env": "FCM_SA"}}"#).unwrap();
        assert_eq!(config, FcmConfig::new(SecretSource::Env { env: "FCM_SA".into() }));
        assert_eq!((config.base_url.as_str(), config.ttl), ("https://fcm.googleapis.com", Duration::from_secs(86_400)));
        let typo = serde_json::from_str::<FcmConfig>(r#"{"service_account": "x", "base_ur": "http://h"}"#);
        assert!(typo.unwrap_err().to_string().contains("base_ur"));
    }
}
