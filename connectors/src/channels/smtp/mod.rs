//! Email over SMTP with `lettre`: a pooled async transport, TLS chosen by the URL.
//!
//! - `url`: `smtp://host:25` is cleartext (loopback tests), `smtp://host:587?tls=required` is
//!   STARTTLS, `smtps://host:465` is implicit TLS (lettre's connection URLs). Credentials are
//!   separate fields, so the URL can be logged.
//! - The message: `multipart/alternative` with the text and the HTML part, `Date`, a
//!   `Message-ID` made from the delivery id (so a re-send is recognisably the same message),
//!   the [`DELIVERY_ID_HEADER`], and for every category but `transactional`, `List-Unsubscribe`
//!   (a signed one-click link, [`crate::unsubscribe`]) with
//!   `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
//! - Results ([`classify_code`]): accepted is delivered; a 4xx reply, a timeout or a broken
//!   connection is retryable; 550/551/553 (mailbox unknown, not local, name not allowed) are a
//!   bad address; any other 5xx is permanent.

pub mod bounce;

use crate::secret::{Secret, SecretError, SecretSource};
use crate::unsubscribe::UnsubscribeLinks;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// `[providers.smtp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:port` (cleartext), `smtp://host:587?tls=required` (STARTTLS) or
    /// `smtps://host:465` (implicit TLS).
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Pooled connections, and messages in flight.
    #[serde(default = "default_connections")]
    pub max_connections: u32,
    /// At most this many messages a second (a GCRA token bucket); none when unset.
    #[serde(default)]
    pub messages_per_second: Option<NonZeroU32>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connections() -> u32 {
    8
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error("providers.smtp.password: {0}")]
    Password(#[from] SecretError),
    #[error("providers.smtp.url {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("providers.smtp.from {from:?}: {detail}")]
    From { from: String, detail: String },
    #[error("providers.smtp: a password needs a username")]
    PasswordWithoutUser,
}

/// The class of an SMTP reply code.
pub fn classify_code(code: &str, reason: String) -> SendOutcome {
    match code.as_bytes().first() {
        Some(b'2') => SendOutcome::Delivered { provider_id: None },
        Some(b'4') => SendOutcome::Retryable { reason, retry_after: None },
        _ if matches!(code, "550" | "551" | "553") => SendOutcome::BadAddress { reason },
        _ => SendOutcome::Permanent { reason },
    }
}

fn outcome_of(error: &lettre::transport::smtp::Error) -> SendOutcome {
    let reason = format!("smtp: {error}");
    match error.status() {
        Some(code) => classify_code(&code.to_string(), reason),
        // Connection refused or reset, TLS failure, timeout: the server may be back soon.
        None => SendOutcome::Retryable { reason, retry_after: None },
    }
}

pub struct Smtp {
    /// Replaced by a fresh pool after a send timed out (see [`Smtp::send_one`]).
    transport: RwLock<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    /// Builds a pool like the first one.
    builder: SmtpTransportBuilder,
    timeout: Duration,
    from: Mailbox,
    domain: String,
    unsubscribe: Option<Arc<UnsubscribeLinks>>,
    max_connections: usize,
}

impl SmtpConfig {
    /// Checks every field without connecting or starting anything (no runtime needed); what
    /// `herald config check` runs.
    pub fn check(&self) -> Result<(), SmtpConfigError> {
        self.parts().map(|_| ())
    }

    /// The transport builder, the credentials and the sender.
    fn parts(&self) -> Result<(SmtpTransportBuilder, Option<Credentials>, Mailbox), SmtpConfigError> {
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.url)
            .map_err(|e| SmtpConfigError::Url { url: self.url.clone(), detail: e.to_string() })?;
        let password: Option<Secret> = self.password.as_ref().map(SecretSource::resolve).transpose()?;
        let credentials = match (&self.username, password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.expose().to_string())),
            (None, Some(_)) => return Err(SmtpConfigError::PasswordWithoutUser),
            _ => None,
        };
        let from: Mailbox = self.from.parse().map_err(|e: lettre::address::AddressError| SmtpConfigError::From {
            from: self.from.clone(),
            detail: e.to_string(),
        })?;
        Ok((builder, credentials, from))
    }
}

type SmtpTransportBuilder = lettre::transport::smtp::AsyncSmtpTransportBuilder;

impl Smtp {
    /// The connector; its connection pool runs on the current Tokio runtime. `unsubscribe` makes
    /// the `List-Unsubscribe` links of non-transactional mail.
    pub fn new(config: &SmtpConfig, unsubscribe: Option<Arc<UnsubscribeLinks>>) -> Result<Smtp, SmtpConfigError> {
        let (mut builder, credentials, from) = config.parts()?;
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        let builder = builder
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.max_connections.max(1)));
        Ok(Smtp {
            domain: from.email.domain().to_string(),
            transport: RwLock::new(Arc::new(builder.clone().build())),
            builder,
            timeout: config.timeout,
            from,
            unsubscribe,
            max_connections: config.max_connections.max(1) as usize,
        })
    }

    /// The message for `job`, or why it cannot be one.
    pub fn message(&self, job: &DeliveryJob) -> Result<Message, String> {
        let (Target::Email { address }, RenderedContent::Email { subject, text, html }) = (&job.target, &job.content)
        else {
            return Err("not an email delivery".into());
        };
        let to: Mailbox = address.parse().map_err(|e| format!("address {address:?}: {e}"))?;
        let mut message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .date_now()
            .message_id(Some(format!("<{}@{}>", job.delivery_id.0, self.domain)))
            .multipart(MultiPart::alternative_plain_html(text.clone(), html.clone()))
            .map_err(|e| e.to_string())?;
        let headers = message.headers_mut();
        headers.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str(DELIVERY_ID_HEADER),
            job.delivery_id.0.clone(),
        ));
        if let Some(link) = self.unsubscribe.as_ref().and_then(|links| links.for_job(job)) {
            headers
                .insert_raw(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{link}>")));
            headers.insert_raw(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
        }
        Ok(message)
    }

    async fn send_one(&self, job: &DeliveryJob) -> SendOutcome {
        let message = match self.message(job) {
            Ok(message) => message,
            Err(reason) => return SendOutcome::Permanent { reason },
        };
        // lettre's own timeout covers connecting only, not the server's replies: the whole send
        // is bounded here. A send cut short leaves its connection mid-transaction, and lettre
        // would return that connection to its pool, so the pool is retired and a fresh one
        // serves later sends (the old one ends when its last send does).
        // On the provider runtime, as every exchange (see `channels::io`).
        let transport = Arc::clone(&self.transport.read().unwrap_or_else(PoisonError::into_inner));
        let sending = Arc::clone(&transport);
        let timeout = self.timeout;
        match super::io::run(async move { tokio::time::timeout(timeout, sending.send(message)).await }).await {
            Ok(Ok(response)) => SendOutcome::Delivered { provider_id: response.message().next().map(str::to_string) },
            Ok(Err(error)) => outcome_of(&error),
            Err(_) => {
                let mut current = self.transport.write().unwrap_or_else(PoisonError::into_inner);
                if Arc::ptr_eq(&current, &transport) {
                    *current = Arc::new(self.builder.clone().build());
                }
                SendOutcome::Retryable {
                    reason: format!("timeout: no answer from the SMTP server within {:?}", self.timeout),
                    retry_after: None,
                }
            }
        }
    }
}

#[async_trait]
impl Channel for Smtp {
    fn name(&self) -> &str {
        "smtp"
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let this = &*self;
        Ok(super::send_each(jobs, this.max_connections, |job| this.send_one(job)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_have_their_class() {
        let r = || "x".to_string();
        assert!(matches!(classify_code("250", r()), SendOutcome::Delivered { .. }));
        assert!(matches!(classify_code("421", r()), SendOutcome::Retryable { .. }));
        assert!(matches!(classify_code("451", r()), SendOutcome::Retryable { .. }));
        for code in ["550", "551", "553"] {
            assert!(matches!(classify_code(code, r()), SendOutcome::BadAddress { .. }), "{code}");
        }
        assert!(matches!(classify_code("552", r()), SendOutcome::Permanent { .. }));
        assert!(matches!(classify_code("554", r()), SendOutcome::Permanent { .. }));
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let config = |url: &str, from: &str| SmtpConfig {
            url: url.into(),
            username: None,
            password: None,
            from: from.into(),
            timeout: default_timeout(),
            max_connections: 2,
            messages_per_second: None,
        };
        // Checked without a runtime: `config check` must not need one.
        let err = config("ftp://mail.example.com", "a@example.com").check().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("providers.smtp.url")));
        let err = config("smtp://127.0.0.1:2525", "not an address").check().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("providers.smtp.from")));
        let mut lone = config("smtp://127.0.0.1:2525", "a@example.com");
        lone.password = Some(SecretSource::Inline("pw".into()));
        assert!(matches!(lone.check(), Err(SmtpConfigError::PasswordWithoutUser)));
        assert!(config("smtps://mail.example.com:465", "Herald <a@example.com>").check().is_ok());
    }
}
