//! SendGrid's Signed Event Webhook: a batch of events, signed by SendGrid with ECDSA P-256.
//!
//! The signature (header [`SIGNATURE_HEADER`], base64 of an ASN.1 DER ECDSA signature) is over
//! the timestamp (header [`TIMESTAMP_HEADER`]) followed by the raw body, hashed with SHA-256. The
//! verification key is the base64 SubjectPublicKeyInfo DER the dashboard shows.
//!
//! Events: `delivered` is delivered; `bounce` of type `bounce` with a 5.x.x status is a hard
//! bounce, of type `blocked` (or a 4.x.x status) a soft one; `dropped` is undelivered, for good
//! when SendGrid dropped it for the address (`Bounced Address`, `Invalid`); `processed`,
//! `deferred`, `open`, `click` and the rest report nothing final and give no receipt. An event
//! without Herald's `delivery_id` custom argument was not sent by Herald and is skipped.

use super::SendGridConfigError;
use crate::receipts::{Receipt, ReceiptError, ReceiptStatus};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_schemas::DeliveryId;
use serde::Deserialize;

const PROVIDER: &str = "sendgrid";

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
/// The header carrying the signing time (Unix seconds), which is signed too.
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The account's verification key, parsed once.
pub struct EventWebhookKey(ParsedPublicKey);

impl std::fmt::Debug for EventWebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventWebhookKey(P-256)")
    }
}

impl EventWebhookKey {
    /// The key as the dashboard shows it: base64 of the SubjectPublicKeyInfo DER.
    pub fn from_base64(key: &str) -> Result<EventWebhookKey, SendGridConfigError> {
        let der = STANDARD
            .decode(key.trim())
            .map_err(|e| SendGridConfigError::EventWebhookKey(format!("not base64: {e}")))?;
        ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .map(EventWebhookKey)
            .map_err(|e| SendGridConfigError::EventWebhookKey(format!("not an ECDSA P-256 public key: {e}")))
    }
}

#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    delivery_id: Option<String>,
    #[serde(default)]
    sg_message_id: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Whether a `dropped` reason is about the address, not the message.
fn dropped_for_the_address(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("bounced address") || (reason.starts_with("invalid") && !reason.contains("header"))
}

/// The receipts of a signed event batch, checked against `key`. A missing or wrong signature is
/// [`ReceiptError::Unauthenticated`]; a body that is not an event array is malformed.
pub fn parse_events(
    key: &EventWebhookKey,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Vec<Receipt>, ReceiptError> {
    let refused = || ReceiptError::Unauthenticated { provider: PROVIDER };
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else { return Err(refused()) };
    let signature = STANDARD.decode(signature.trim()).map_err(|_| refused())?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.0.verify_sig(&signed, &signature).map_err(|_| refused())?;

    let events: Vec<Event> = serde_json::from_slice(body)
        .map_err(|e| ReceiptError::Malformed { provider: PROVIDER, detail: format!("body: {e}") })?;
    Ok(events.into_iter().filter_map(receipt).collect())
}

fn receipt(event: Event) -> Option<Receipt> {
    let status = match event.event.as_str() {
        "delivered" => ReceiptStatus::Delivered,
        "bounce" => {
            let permanent_status = event.status.as_deref().is_some_and(|s| s.starts_with('5'));
            ReceiptStatus::Bounced { hard: event.kind.as_deref() != Some("blocked") && permanent_status }
        }
        "dropped" => {
            ReceiptStatus::Undelivered { permanent: event.reason.as_deref().is_some_and(dropped_for_the_address) }
        }
        _ => return None,
    };
    let reason = match (&event.status, &event.reason) {
        (Some(status), Some(reason)) => Some(format!("{status} {reason}")),
        (status, reason) => status.clone().or(reason.clone()),
    };
    Some(Receipt {
        provider: PROVIDER,
        delivery_id: DeliveryId(event.delivery_id?),
        status,
        address: event.email,
        // `sg_message_id` is the `X-Message-Id` of the send, then a `.filter…` suffix.
        provider_id: event.sg_message_id.map(|id| id.split('.').next().unwrap_or_default().to_string()),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    /// A key pair made for the test, and its public key as the dashboard shows it (SPKI DER).
    fn keys() -> (EcdsaKeyPair, EventWebhookKey) {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        // SubjectPublicKeyInfo for a P-256 key: a fixed prefix, then the uncompressed point.
        let mut spki = STANDARD.decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgA=").unwrap();
        spki.truncate(26);
        spki.extend_from_slice(pair.public_key().as_ref());
        let key = EventWebhookKey::from_base64(&STANDARD.encode(spki)).unwrap();
        (pair, key)
    }

    fn sign(pair: &EcdsaKeyPair, timestamp: &str, body: &[u8]) -> String {
        let signed = [timestamp.as_bytes(), body].concat();
        STANDARD.encode(pair.sign(&SystemRandom::new(), &signed).unwrap())
    }

    const BODY: &str = r#"[
        {"email":"a@example.com","event":"processed","delivery_id":"d-0","sg_message_id":"m0.filter1"},
        {"email":"a@example.com","event":"delivered","delivery_id":"d-1","sg_message_id":"m1.filter1","response":"250 OK"},
        {"email":"b@example.com","event":"bounce","type":"bounce","status":"5.1.1","reason":"no such user","delivery_id":"d-2"},
        {"email":"c@example.com","event":"bounce","type":"blocked","status":"5.7.1","reason":"spam","delivery_id":"d-3"},
        {"email":"d@example.com","event":"dropped","reason":"Bounced Address","delivery_id":"d-4"},
        {"email":"e@example.com","event":"dropped","reason":"Spam Content","delivery_id":"d-5"},
        {"email":"f@example.com","event":"deferred","delivery_id":"d-6"},
        {"email":"g@example.com","event":"open","delivery_id":"d-7"},
        {"email":"h@example.com","event":"delivered"}
    ]"#;

    #[test]
    fn a_signed_batch_gives_one_receipt_per_final_event() {
        let (pair, key) = keys();
        let signature = sign(&pair, "1795701600", BODY.as_bytes());
        let receipts = parse_events(&key, Some("1795701600"), Some(&signature), BODY.as_bytes()).unwrap();
        let seen: Vec<(&str, ReceiptStatus)> = receipts.iter().map(|r| (r.delivery_id.0.as_str(), r.status)).collect();
        assert_eq!(
            seen,
            [
                ("d-1", ReceiptStatus::Delivered),
                ("d-2", ReceiptStatus::Bounced { hard: true }),
                ("d-3", ReceiptStatus::Bounced { hard: false }),
                ("d-4", ReceiptStatus::Undelivered { permanent: true }),
                ("d-5", ReceiptStatus::Undelivered { permanent: false }),
            ]
        );
        assert_eq!(receipts[0].provider_id.as_deref(), Some("m1"));
        assert_eq!(receipts[1].address.as_deref(), Some("b@example.com"));
        assert_eq!(receipts[1].reason.as_deref(), Some("5.1.1 no such user"));
    }

    #[test]
    fn a_tampered_or_unsigned_batch_is_refused() {
        let (pair, key) = keys();
        let signature = sign(&pair, "1795701600", BODY.as_bytes());
        let refused = Err(ReceiptError::Unauthenticated { provider: "sendgrid" });
        let tampered = BODY.replace("d-2", "d-9");
        assert_eq!(parse_events(&key, Some("1795701600"), Some(&signature), tampered.as_bytes()), refused);
        assert_eq!(parse_events(&key, Some("1795701601"), Some(&signature), BODY.as_bytes()), refused);
        assert_eq!(parse_events(&key, Some("1795701600"), None, BODY.as_bytes()), refused);
        assert_eq!(parse_events(&key, Some("1795701600"), Some("%%%"), BODY.as_bytes()), refused);
        let (_, other) = keys();
        assert_eq!(parse_events(&other, Some("1795701600"), Some(&signature), BODY.as_bytes()), refused);
        let not_events = sign(&pair, "1", b"{}");
        assert!(matches!(parse_events(&key, Some("1"), Some(&not_events), b"{}"), Err(ReceiptError::Malformed { .. })));
    }
}
