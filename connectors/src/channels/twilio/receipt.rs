//! Twilio status callbacks: Twilio posts the message's status (form fields `MessageSid`,
//! `MessageStatus`, `ErrorCode`, `To`, …) to the `StatusCallback` URL the message was sent with.
//!
//! Herald sends each message with its own callback URL, `{status_callback}?delivery=<id>`
//! ([`callback_url`]), so a callback names its delivery. Twilio signs each request
//! (`X-Twilio-Signature`): base64 of HMAC-SHA1, keyed with the account's auth token, of the full
//! callback URL followed by every POST parameter's name and value, sorted by name. The API
//! rebuilds that URL from the configured `status_callback` and the `delivery` it was called
//! with, so a signature over any other URL, or from any other account, is refused.

use crate::receipts::{Receipt, ReceiptError, ReceiptStatus};
use crate::secret::Secret;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_schemas::DeliveryId;
use std::collections::BTreeMap;

const PROVIDER: &str = "twilio";

/// The header carrying Twilio's request signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// Twilio error codes in a callback after which the number will never take an SMS: 30005
/// unknown destination handset, 30006 landline or unreachable carrier, 21610 the recipient
/// replied STOP. Others (30003 handset unreachable for now, 30007 filtered, 30008 unknown) are
/// about this message.
pub const PERMANENT_ERRORS: [&str; 3] = ["30005", "30006", "21610"];

/// The `StatusCallback` URL of one delivery.
pub fn callback_url(status_callback: &str, delivery_id: &DeliveryId) -> String {
    let separator = if status_callback.contains('?') { '&' } else { '?' };
    let id: String = form_urlencoded::byte_serialize(delivery_id.0.as_bytes()).collect();
    format!("{status_callback}{separator}delivery={id}")
}

/// Twilio's signature of a POST to `url` with `params`.
pub fn sign(auth_token: &Secret, url: &str, params: &BTreeMap<String, String>) -> String {
    let mut data = url.to_string();
    for (name, value) in params {
        data.push_str(name);
        data.push_str(value);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.expose().as_bytes());
    STANDARD.encode(hmac::sign(&key, data.as_bytes()))
}

/// The receipt of a status callback for `delivery_id`, checked against the signature Twilio
/// would make for `status_callback` with that delivery. `None` for an interim status (`queued`,
/// `sending`, `sent`, `accepted`).
pub fn parse_status_callback(
    auth_token: &Secret,
    status_callback: &str,
    delivery_id: &str,
    signature: Option<&str>,
    params: &BTreeMap<String, String>,
) -> Result<Option<Receipt>, ReceiptError> {
    let delivery_id = DeliveryId(delivery_id.to_string());
    let url = callback_url(status_callback, &delivery_id);
    let expected = sign(auth_token, &url, params);
    let signed = signature.is_some_and(|s| {
        aws_lc_rs::constant_time::verify_slices_are_equal(s.trim().as_bytes(), expected.as_bytes()).is_ok()
    });
    if !signed {
        return Err(ReceiptError::Unauthenticated { provider: PROVIDER });
    }
    let status = params
        .get("MessageStatus")
        .ok_or(ReceiptError::Malformed { provider: PROVIDER, detail: "no MessageStatus".into() })?;
    let code = params.get("ErrorCode").filter(|c| !c.is_empty());
    let status = match status.as_str() {
        "delivered" => ReceiptStatus::Delivered,
        "undelivered" | "failed" => {
            ReceiptStatus::Undelivered { permanent: code.is_some_and(|c| PERMANENT_ERRORS.contains(&c.as_str())) }
        }
        _ => return Ok(None),
    };
    Ok(Some(Receipt {
        provider: PROVIDER,
        delivery_id,
        status,
        address: params.get("To").cloned(),
        provider_id: params.get("MessageSid").cloned(),
        reason: code.map(|c| format!("twilio {c}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretSource;

    fn token(t: &str) -> Secret {
        SecretSource::Inline(t.into()).resolve().unwrap()
    }

    fn params(status: &str, code: &str) -> BTreeMap<String, String> {
        [("MessageSid", "SM1"), ("MessageStatus", status), ("ErrorCode", code), ("To", "+14155550100")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn twilios_documented_signature_example_is_reproduced() {
        // The example of Twilio's request validation documentation (twilio-php's docs).
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: BTreeMap<String, String> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(sign(&token("12345"), url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn statuses_become_receipts_and_a_bad_signature_is_refused() {
        let (auth, base) = (token("sandbox-token"), "https://herald.example/v1/receipts/twilio");
        let id = DeliveryId("n1.abc".into());
        let url = callback_url(base, &id);
        assert_eq!(url, "https://herald.example/v1/receipts/twilio?delivery=n1.abc");
        let receipt = |status: &str, code: &str| {
            let p = params(status, code);
            let signature = sign(&auth, &url, &p);
            parse_status_callback(&auth, base, &id.0, Some(&signature), &p).unwrap()
        };
        let delivered = receipt("delivered", "").unwrap();
        assert_eq!(delivered.status, ReceiptStatus::Delivered);
        assert_eq!(
            (delivered.address.as_deref(), delivered.provider_id.as_deref()),
            (Some("+14155550100"), Some("SM1"))
        );
        assert_eq!(receipt("undelivered", "30006").unwrap().status, ReceiptStatus::Undelivered { permanent: true });
        assert_eq!(receipt("failed", "30003").unwrap().status, ReceiptStatus::Undelivered { permanent: false });
        assert_eq!(receipt("sent", ""), None);

        let p = params("delivered", "");
        let forged = sign(&token("other-account"), &url, &p);
        let refused = parse_status_callback(&auth, base, &id.0, Some(&forged), &p);
        assert_eq!(refused, Err(ReceiptError::Unauthenticated { provider: "twilio" }));
        let for_other_delivery = sign(&auth, &url, &p);
        assert!(parse_status_callback(&auth, base, "n2.def", Some(&for_other_delivery), &p).is_err());
        assert!(parse_status_callback(&auth, base, &id.0, None, &p).is_err());
    }
}
