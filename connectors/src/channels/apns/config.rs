//! `[providers.apns]`: what the connector needs, checked by [`ApnsConfig::validate`] before any
//! file, variable or socket is touched.

use super::ApnsConfigError;
use crate::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Apple's production endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";
/// Apple's development endpoint, for apps built with a development provisioning profile.
pub const DEVELOPMENT_BASE_URL: &str = "https://api.sandbox.push.apple.com";

/// The shortest and longest intervals between provider tokens Apple accepts: more often is
/// answered `429 TooManyProviderTokenUpdates`, older is `403 ExpiredProviderToken`.
pub(crate) const TOKEN_REFRESH_RANGE: (Duration, Duration) =
    (Duration::from_secs(20 * 60), Duration::from_secs(60 * 60));

/// `[providers.apns]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// How Herald proves it may push to `topic`: a provider token or a client certificate.
    pub auth: ApnsAuth,
    /// The app's bundle id (`apns-topic`); a token may push to any app of the team, so APNs
    /// needs to be told which.
    pub topic: String,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for development
    /// builds; `http://` speaks cleartext HTTP/2 (the provider sandbox).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Per request, connecting included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight at once, over all connections.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: NonZeroUsize,
    /// HTTP/2 connections to keep; requests go to the one with the fewest in flight.
    #[serde(default = "default_connections")]
    pub connections: NonZeroUsize,
    /// Concurrent streams per connection: APNs advertises a limit (often 1000, lower on a fresh
    /// connection); past it a request would queue inside the connection.
    #[serde(default = "default_streams")]
    pub streams_per_connection: NonZeroUsize,
    /// How long APNs keeps trying an offline device (`apns-expiration` = now + this); 0 means
    /// one attempt only.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// At most this many messages a second (a GCRA token bucket); none when unset.
    #[serde(default)]
    pub messages_per_second: Option<NonZeroU32>,
}

/// `[providers.apns.auth]`, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ApnsAuth {
    /// Token-based: an ES256 JWT signed with the team's `.p8` key, sent as `authorization: bearer`.
    Token {
        /// The `.p8` key (PKCS#8 PEM): inline, `{ env = "…" }` or `{ file = "…" }`.
        key: SecretSource,
        /// The key's 10-character id from the developer account (the JWT's `kid`).
        key_id: String,
        /// The 10-character team id (the JWT's `iss`).
        team_id: String,
        /// How long one token is used; Apple refuses a token older than an hour and new tokens
        /// more often than every 20 minutes, so it must lie in [20m, 60m].
        #[serde(default = "default_token_refresh", with = "humantime_serde")]
        token_refresh: Duration,
    },
    /// Certificate-based: the app's push certificate presented as the TLS client identity.
    Certificate {
        /// The certificate (chain) PEM.
        certificate: SecretSource,
        /// Its private key PEM.
        key: SecretSource,
    },
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}
fn default_connections() -> NonZeroUsize {
    NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN)
}
fn default_streams() -> NonZeroUsize {
    NonZeroUsize::new(500).unwrap_or(NonZeroUsize::MIN)
}
fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_token_refresh() -> Duration {
    Duration::from_secs(50 * 60)
}

impl ApnsConfig {
    /// A configuration with the defaults, for `topic` and `auth`.
    pub fn new(topic: impl Into<String>, auth: ApnsAuth) -> ApnsConfig {
        ApnsConfig {
            auth,
            topic: topic.into(),
            base_url: default_base_url(),
            timeout: default_timeout(),
            max_concurrency: default_max_concurrency(),
            connections: default_connections(),
            streams_per_connection: default_streams(),
            ttl: default_ttl(),
            messages_per_second: None,
        }
    }

    /// Token auth with the default refresh interval.
    pub fn token_auth(key: SecretSource, key_id: impl Into<String>, team_id: impl Into<String>) -> ApnsAuth {
        ApnsAuth::Token { key, key_id: key_id.into(), team_id: team_id.into(), token_refresh: default_token_refresh() }
    }

    /// The checks that need no I/O: the secrets are resolved and parsed by [`super::Apns::new`].
    pub fn validate(&self) -> Result<(), ApnsConfigError> {
        if self.topic.trim().is_empty() {
            return Err(ApnsConfigError::Topic);
        }
        let base = self.base_url.trim_end_matches('/');
        let host = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(ApnsConfigError::BaseUrl(self.base_url.clone()));
        }
        if let ApnsAuth::Token { key_id, team_id, token_refresh, .. } = &self.auth {
            if key_id.trim().is_empty() {
                return Err(ApnsConfigError::Empty { field: "key_id" });
            }
            if team_id.trim().is_empty() {
                return Err(ApnsConfigError::Empty { field: "team_id" });
            }
            let (least, most) = TOKEN_REFRESH_RANGE;
            if *token_refresh < least || *token_refresh > most {
                return Err(ApnsConfigError::TokenRefresh(*token_refresh));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> ApnsConfig {
        let value: toml::Value = toml::from_str(toml_text).unwrap();
        value.try_into().unwrap()
    }

    #[test]
    fn token_auth_parses_with_defaults_and_never_prints_the_key() {
        let config = parse(
            r#"
            topic = "com.example.app"
            [auth]
            kind = "token"
            key = "-----BEGIN PRIVATE KEY-----s3cr3t"
            key_id = "ABC123DEFG"
            team_id = "TEAM123456"
            "#,
        );
        assert_eq!(config.base_url, DEFAULT_BASE_URL);
        assert_eq!(config.connections.get(), 2);
        let ApnsAuth::Token { token_refresh, .. } = &config.auth else { panic!("not token auth: {config:?}") };
        assert_eq!(*token_refresh, Duration::from_secs(3000));
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_refresh_outside_20_to_60_minutes_is_refused_naming_the_field() {
        for (refresh, ok) in [("19m", false), ("20m", true), ("60m", true), ("61m", false), ("2h", false)] {
            let config = parse(&format!(
                "topic = \"t\"\n[auth]\nkind = \"token\"\nkey = \"k\"\nkey_id = \"K\"\nteam_id = \"T\"\ntoken_refresh = \"{refresh}\""
            ));
            match config.validate() {
                Ok(()) => assert!(ok, "{refresh} accepted"),
                Err(error) => {
                    assert!(!ok, "{refresh} refused: {error}");
                    assert!(error.to_string().starts_with("providers.apns.auth.token_refresh"), "{error}");
                }
            }
        }
    }

    #[test]
    fn unknown_fields_a_missing_topic_and_a_bad_url_are_refused() {
        let value: toml::Value = toml::from_str(
            "topic = \"t\"\n[auth]\nkind = \"token\"\nkey = \"k\"\nkey_id = \"K\"\nteam_id = \"T\"\nextra = 1",
        )
        .unwrap();
        assert!(value.try_into::<ApnsConfig>().is_err());
        let auth = ApnsConfig::token_auth(SecretSource::Inline("k".into()), "K", "T");
        let mut config = ApnsConfig::new(" ", auth);
        assert!(matches!(config.validate(), Err(ApnsConfigError::Topic)));
        config.topic = "com.example.app".into();
        config.base_url = "api.push.apple.com".into();
        assert!(matches!(config.validate(), Err(ApnsConfigError::BaseUrl(_))));
        config.base_url = DEVELOPMENT_BASE_URL.into();
        config.validate().unwrap();
    }

    #[test]
    fn certificate_auth_parses() {
        let config = parse(
            "topic = \"t\"\n[auth]\nkind = \"certificate\"\ncertificate = { file = \"/c.pem\" }\nkey = { env = \"K\" }",
        );
        assert!(matches!(config.auth, ApnsAuth::Certificate { .. }));
        config.validate().unwrap();
    }
}
