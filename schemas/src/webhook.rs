//! Status webhooks: a client's registered URL, the batches of outcome events Herald POSTs there,
//! and how each POST is signed. This is a public contract: receivers verify what is written here.
//!
//! # What a receiver gets
//! A `POST` to the registered URL with `Content-Type: application/json` and the body
//! `{"id": "<batch id>", "client_id": "…", "events": [<DeliveryEvent>, …]}`, where every event is
//! a terminal outcome ([`EventKind::is_outcome`](crate::event::EventKind::is_outcome)) of one of
//! the client's notifications. Headers:
//! - `Herald-Webhook-Id: <batch id>` (the body's `id`);
//! - `Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC keyed with the secret
//!   (its UTF-8 bytes, `whsec_` prefix included) over `"<t>.<raw body>"`. `t` is the time of that
//!   attempt, so a retry carries a fresh signature over the same body.
//!
//! # Promises
//! - A batch's body is fixed when the batch is made: a retry sends the same bytes under the same
//!   id. A receiver that stores the ids it has processed and ignores a repeat sees every event once,
//!   even in the one case Herald cannot rule out (a crash after the receiver's 2xx and before Herald
//!   recorded it, which resends the batch).
//! - A batch id is a function of the client, its registration and the position of the batch's
//!   first event in `herald-events`, so no two batches share an id.
//! - The events of one notification are in one partition of `herald-events`; the batches of one
//!   (client, partition) are sent one at a time, in order, so a receiver sees a notification's
//!   outcomes in the order Herald recorded them.

use crate::event::DeliveryEvent;
use crate::ids::hash_hex;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The header carrying the batch id.
pub const ID_HEADER: &str = "Herald-Webhook-Id";
/// The header carrying the timestamp and the signature.
pub const SIGNATURE_HEADER: &str = "Herald-Signature";
/// What a generated secret starts with (so a leaked one is recognisable in a scan).
pub const SECRET_PREFIX: &str = "whsec_";

/// A client's webhook: where its outcomes go and the key that signs them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRegistration {
    /// The API key's client identity: whose outcome events go here.
    pub client_id: String,
    /// Absolute `http` or `https` URL, checked by the API.
    pub url: String,
    /// The HMAC key (its UTF-8 bytes). Never returned by a read API, never logged.
    pub secret: String,
    /// When the client first registered; kept when the registration is replaced. Part of every
    /// batch id, so a data directory started afresh never repeats an id a receiver has seen.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl fmt::Debug for WebhookRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRegistration")
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("secret", &"***")
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// How delivery to a client's URL is going, for `GET /v1/webhooks`. Written by the senders after
/// every attempt (the last writer wins: a worker's view of its own partitions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at_ms: Option<u64>,
    /// The last failure, classified and short (`HTTP 503`, `timed out after 10s`); never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// One batch of a client's outcome events, as it waits in the webhook outbox.
///
/// Keyed by `(client_id, partition, first_offset)`: the partition of `herald-events` the events
/// came from and the offset of the first of them. Batches of one (client, partition) are sent in
/// key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookBatch {
    pub client_id: String,
    pub partition: u32,
    pub first_offset: u64,
    /// When the batch was made: it is given up `max_age` after this.
    pub created_at_ms: u64,
    /// Events in the body.
    pub events: u32,
    /// The exact body every attempt POSTs.
    pub body: Vec<u8>,
}

impl WebhookBatch {
    /// The batch of `events` (in order, at least one) of `registration`'s client, whose first event
    /// is at `first_offset` of `herald-events` partition `partition`.
    pub fn new(
        registration: &WebhookRegistration,
        partition: u32,
        first_offset: u64,
        created_at_ms: u64,
        events: &[DeliveryEvent],
    ) -> Self {
        let id = batch_id(&registration.client_id, registration.created_at_ms, partition, first_offset);
        let body = BatchBody { id: &id, client_id: &registration.client_id, events };
        // Plain data into a Vec: serializing cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Self {
            client_id: registration.client_id.clone(),
            partition,
            first_offset,
            created_at_ms,
            events: events.len() as u32,
            body,
        }
    }

    /// The batch id, read back from the body (it was derived when the batch was made).
    pub fn id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        serde_json::from_slice::<Id>(&self.body).ok().map(|b| b.id)
    }
}

#[derive(Serialize)]
struct BatchBody<'a> {
    id: &'a str,
    client_id: &'a str,
    events: &'a [DeliveryEvent],
}

/// `whb_` and a 128-bit hash of what makes the batch unique.
pub fn batch_id(client_id: &str, registered_at_ms: u64, partition: u32, first_offset: u64) -> String {
    let hash = hash_hex(&[
        client_id.as_bytes(),
        &registered_at_ms.to_be_bytes(),
        &partition.to_be_bytes(),
        &first_offset.to_be_bytes(),
    ]);
    format!("whb_{hash}")
}

/// The `Herald-Signature` value of `body` sent at `unix_seconds` under `secret`.
pub fn signature_header(secret: &str, unix_seconds: u64, body: &[u8]) -> String {
    format!("t={unix_seconds},v1={}", signature_hex(secret, unix_seconds, body))
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` keyed with the secret's bytes.
pub fn signature_hex(secret: &str, unix_seconds: u64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(unix_seconds.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a receiver refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no or malformed Herald-Signature header")]
    Malformed,
    #[error("the signature's timestamp is {0} s away from now")]
    Stale(u64),
    #[error("the signature does not match the body")]
    Mismatch,
}

/// What a receiver does, in Rust: parses `header`, refuses a timestamp more than `tolerance_secs`
/// away from `now_unix_seconds`, and compares the HMAC in constant time.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix_seconds: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1.push(value),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now_unix_seconds.abs_diff(t);
    if skew > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = Vec::with_capacity(body.len() + 12);
    message.extend_from_slice(t.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    let matches =
        v1.iter().any(|hex| decode_hex(hex).is_some_and(|tag| aws_lc_rs::hmac::verify(&key, &message, &tag).is_ok()));
    if matches { Ok(()) } else { Err(SignatureError::Mismatch) }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::ids::NotificationId;

    fn registration() -> WebhookRegistration {
        WebhookRegistration {
            client_id: "acme".into(),
            url: "https://hooks.example/herald".into(),
            secret: "whsec_test".into(),
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
        }
    }

    fn event(n: &str) -> DeliveryEvent {
        DeliveryEvent::new(&NotificationId(n.into()), "acme", "u1", EventKind::Sent, None, None, 5)
    }

    #[test]
    fn batch_ids_are_stable_and_distinct() {
        let id = batch_id("acme", 1, 2, 3);
        assert_eq!(id, batch_id("acme", 1, 2, 3));
        assert!(id.starts_with("whb_") && id.len() == 4 + 32);
        for other in [batch_id("acme", 1, 2, 4), batch_id("acme", 1, 3, 3), batch_id("acme", 2, 2, 3)] {
            assert_ne!(id, other);
        }
        assert_ne!(batch_id("acm", 1, 2, 3), batch_id("acme", 1, 2, 3));
    }

    #[test]
    fn a_batch_body_holds_its_id_client_and_events_in_order() {
        let events = [event("n1"), event("n2")];
        let batch = WebhookBatch::new(&registration(), 3, 42, 7, &events);
        let id = batch.id().unwrap();
        assert_eq!(id, batch_id("acme", 1_000, 3, 42));
        let body: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["client_id"], "acme");
        let back: Vec<DeliveryEvent> = serde_json::from_value(body["events"].clone()).unwrap();
        assert_eq!(back, events);
        assert_eq!((batch.events, batch.partition, batch.first_offset, batch.created_at_ms), (2, 3, 42, 7));
    }

    #[test]
    fn a_signature_verifies_and_a_tampered_stale_or_foreign_one_does_not() {
        let body = br#"{"id":"whb_1","client_id":"acme","events":[]}"#;
        let header = signature_header("whsec_a", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify_signature("whsec_a", &header, body, 1_700_000_100, 300), Ok(()));
        // Another body, another secret, a replay later than the tolerance.
        let tampered = br#"{"id":"whb_1","client_id":"acme","events":[{}]}"#;
        assert_eq!(verify_signature("whsec_a", &header, tampered, 1_700_000_000, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature("whsec_b", &header, body, 1_700_000_000, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature("whsec_a", &header, body, 1_700_000_301, 300), Err(SignatureError::Stale(301)));
        // A replayed body with its timestamp changed to look fresh no longer matches.
        let moved = header.replace("t=1700000000", "t=1700009999");
        assert_eq!(verify_signature("whsec_a", &moved, body, 1_700_009_999, 300), Err(SignatureError::Mismatch));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1700000000,v1=zz"] {
            assert!(verify_signature("whsec_a", bad, body, 1_700_000_000, 300).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c 'import hmac, hashlib; print(hmac.new(b"whsec_k",
        // b"1700000000.{\"id\":\"whb_1\"}", hashlib.sha256).hexdigest())'
        let expected = "962b3e3aa61de900dff4e6ba3ba38b5eb99040323431ad2e06584a66c4ba45aa";
        assert_eq!(signature_hex("whsec_k", 1_700_000_000, br#"{"id":"whb_1"}"#), expected);
        assert_eq!(
            signature_header("whsec_k", 1_700_000_000, br#"{"id":"whb_1"}"#),
            format!("t=1700000000,v1={expected}")
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let printed = format!("{:?}", registration());
        assert!(!printed.contains("whsec_test") && printed.contains("***"), "{printed}");
    }
}
