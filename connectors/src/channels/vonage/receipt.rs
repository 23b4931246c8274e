//! Vonage delivery receipts (DLRs), and the signature of Vonage's signed webhooks.
//!
//! A DLR comes as a GET query, a POST form or a POST JSON object (the account's "HTTP method"
//! setting) with `msisdn` (the recipient), `to` (the sender), `messageId`, `status`, `err-code`,
//! `client-ref` (Herald's delivery id), `message-timestamp`, and when the account signs
//! webhooks `timestamp`, `nonce` and `sig`. [`receipt_params`] gathers the parameters from any of
//! these; [`parse_receipt`] checks the signature and reads the receipt.
//!
//! The signature (Vonage's "signing requests"): every parameter but `sig`, sorted by name, each
//! value with `&` and `=` replaced by `_`, joined as `&name=value&name=value`; then MD5 of that
//! string with the secret appended (`md5hash`) or its HMAC keyed with the secret (`sha1`,
//! `sha256`, `sha512`); hex (compared without regard to case). `timestamp` (Unix seconds) must
//! be within [`MAX_SKEW`] of now, so that a captured receipt cannot be replayed much later.

use super::{SignatureMethod, VonageConfig, VonageConfigError};
use crate::receipts::{Receipt, ReceiptError, ReceiptStatus};
use crate::secret::Secret;
use aws_lc_rs::hmac;
use herald_schemas::DeliveryId;
use md5::Digest;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PROVIDER: &str = "vonage";

/// How far a signed receipt's `timestamp` may be from now.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// DLR `err-code`s after which the number will never take an SMS: 3 Absent Subscriber -
/// Permanent, 4 Call Barred by User, 9 Illegal Number, 11 Unroutable, 14 Number Blocked by
/// Carrier. Every other code (absent for now, handset busy, network error, anti-spam or content
/// filters, out of credit) is about this message, not the number.
pub const PERMANENT_DLR_ERRORS: [&str; 5] = ["3", "4", "9", "11", "14"];

/// Checks the signature of Vonage's signed webhooks with the account's signature secret.
pub struct DlrVerifier {
    secret: Secret,
    method: SignatureMethod,
}

impl std::fmt::Debug for DlrVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlrVerifier").field("method", &self.method).finish_non_exhaustive()
    }
}

impl VonageConfig {
    /// The verifier of signed receipts, when a `signature_secret` is configured.
    pub fn receipt_verifier(&self) -> Result<Option<DlrVerifier>, VonageConfigError> {
        let Some(source) = &self.signature_secret else { return Ok(None) };
        let secret = source.resolve().map_err(VonageConfigError::SignatureSecret)?;
        Ok(Some(DlrVerifier::new(secret, self.signature_method)))
    }
}

impl DlrVerifier {
    pub fn new(secret: Secret, method: SignatureMethod) -> DlrVerifier {
        DlrVerifier { secret, method }
    }

    /// The lowercase hex signature of `params` (`sig` itself left out).
    pub fn sign(&self, params: &BTreeMap<String, String>) -> String {
        let mut text = String::new();
        for (name, value) in params.iter().filter(|(name, _)| name.as_str() != "sig") {
            text.push('&');
            text.push_str(name);
            text.push('=');
            text.extend(value.chars().map(|c| if c == '&' || c == '=' { '_' } else { c }));
        }
        let secret = self.secret.expose().as_bytes();
        let algorithm = match self.method {
            SignatureMethod::Md5hash => {
                let mut md5 = md5::Md5::new();
                md5.update(text.as_bytes());
                md5.update(secret);
                return hex::encode(md5.finalize());
            }
            SignatureMethod::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            SignatureMethod::Sha256 => hmac::HMAC_SHA256,
            SignatureMethod::Sha512 => hmac::HMAC_SHA512,
        };
        hex::encode(hmac::sign(&hmac::Key::new(algorithm, secret), text.as_bytes()))
    }

    /// Whether `params` carry a right `sig` and a fresh `timestamp`.
    pub fn verify(&self, params: &BTreeMap<String, String>, now: SystemTime) -> Result<(), ReceiptError> {
        let refused = || ReceiptError::Unauthenticated { provider: PROVIDER };
        let (Some(sig), Some(timestamp)) = (params.get("sig"), params.get("timestamp")) else { return Err(refused()) };
        let expected = self.sign(params);
        let given = sig.to_ascii_lowercase();
        // Constant time: a mismatch does not tell how many characters matched.
        let same = expected.len() == given.len()
            && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        let signed_at = timestamp.parse::<u64>().map_err(|_| refused())?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if !same || now.abs_diff(signed_at) > MAX_SKEW.as_secs() {
            return Err(refused());
        }
        Ok(())
    }
}

fn malformed(detail: impl Into<String>) -> ReceiptError {
    ReceiptError::Malformed { provider: PROVIDER, detail: detail.into() }
}

/// The parameters of a DLR request: its query string, and its body when it is a form or JSON.
pub fn receipt_params(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<BTreeMap<String, String>, ReceiptError> {
    let mut params: BTreeMap<String, String> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let content_type = content_type.unwrap_or("").to_ascii_lowercase();
    // A GET DLR has no body; an empty form adds nothing either.
    if content_type.starts_with("application/json") && !body.is_empty() {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| malformed(format!("body: {e}")))?;
        for (name, value) in object {
            let value = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            params.insert(name, value);
        }
    } else {
        params.extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }
    Ok(params)
}

/// The receipt a DLR reports, or `None` for one that reports nothing final (`accepted`,
/// `buffered`: still on the way; `unknown`: the carrier gave no answer, which says nothing
/// about the number). With a `verifier`, an unsigned or wrongly signed DLR is refused.
///
/// `delivered` is delivered; `failed` or `rejected` with an error of [`PERMANENT_DLR_ERRORS`]
/// is permanently undelivered; `expired` and any other failure are undelivered for now. The
/// address is `msisdn` as Herald writes numbers (E.164 with `+`).
pub fn parse_receipt(
    params: &BTreeMap<String, String>,
    verifier: Option<&DlrVerifier>,
    now: SystemTime,
) -> Result<Option<Receipt>, ReceiptError> {
    if let Some(verifier) = verifier {
        verifier.verify(params, now)?;
    }
    let status = params.get("status").ok_or_else(|| malformed("no status"))?;
    let err_code = params.get("err-code").filter(|code| !code.is_empty());
    let status = match status.as_str() {
        "delivered" => ReceiptStatus::Delivered,
        "accepted" | "buffered" | "unknown" => return Ok(None),
        "failed" | "rejected" => ReceiptStatus::Undelivered {
            permanent: err_code.is_some_and(|code| PERMANENT_DLR_ERRORS.contains(&code.as_str())),
        },
        "expired" => ReceiptStatus::Undelivered { permanent: false },
        other => return Err(malformed(format!("unknown status {other:?}"))),
    };
    let delivery_id = params.get("client-ref").filter(|r| !r.is_empty()).ok_or_else(|| malformed("no client-ref"))?;
    Ok(Some(Receipt {
        provider: PROVIDER,
        delivery_id: DeliveryId(delivery_id.clone()),
        status,
        address: params.get("msisdn").map(|n| format!("+{}", n.trim_start_matches('+'))),
        provider_id: params.get("messageId").cloned(),
        reason: err_code.filter(|code| code.as_str() != "0").map(|code| format!("err-code {code}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretSource;

    fn verifier(method: SignatureMethod) -> DlrVerifier {
        DlrVerifier::new(SecretSource::Inline("sig-secret".into()).resolve().unwrap(), method)
    }

    fn dlr(status: &str, err_code: &str) -> BTreeMap<String, String> {
        [
            ("msisdn", "447700900000"),
            ("to", "Herald"),
            ("messageId", "0A0000001234567B"),
            ("status", status),
            ("err-code", err_code),
            ("client-ref", "d-1"),
            ("message-timestamp", "2026-11-26 14:00:00"),
            ("timestamp", "1795701600"),
            ("nonce", "a=b&c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_signature_follows_vonages_recipe() {
        let params: BTreeMap<String, String> =
            [("b", "x&y"), ("a", "1=2")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let text = "&a=1_2&b=x_y";
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"sig-secret");
        assert_eq!(verifier(SignatureMethod::Sha256).sign(&params), hex::encode(hmac::sign(&key, text.as_bytes())));
        // md5("&a=1_2&b=x_ysig-secret"), computed with `printf '%s' … | md5sum`.
        assert_eq!(verifier(SignatureMethod::Md5hash).sign(&params), "d236d03a8d18b3c56748c23e9c160141");
    }

    #[test]
    fn a_signed_receipt_verifies_and_a_tampered_or_stale_one_does_not() {
        for method in
            [SignatureMethod::Md5hash, SignatureMethod::Sha1, SignatureMethod::Sha256, SignatureMethod::Sha512]
        {
            let v = verifier(method);
            let mut params = dlr("delivered", "0");
            let sig = v.sign(&params).to_uppercase();
            params.insert("sig".into(), sig);
            let receipt = parse_receipt(&params, Some(&v), at(1795701660)).unwrap().unwrap();
            assert_eq!(receipt.status, ReceiptStatus::Delivered);
            assert_eq!(receipt.delivery_id, DeliveryId("d-1".into()));
            assert_eq!(receipt.address.as_deref(), Some("+447700900000"));
            assert_eq!(receipt.provider_id.as_deref(), Some("0A0000001234567B"));

            let refused = Err(ReceiptError::Unauthenticated { provider: "vonage" });
            assert_eq!(parse_receipt(&params, Some(&v), at(1795701600 + 301)), refused, "stale");
            let mut tampered = params.clone();
            tampered.insert("client-ref".into(), "d-2".into());
            assert_eq!(parse_receipt(&tampered, Some(&v), at(1795701600)), refused, "tampered");
            let mut unsigned = params.clone();
            unsigned.remove("sig");
            assert_eq!(parse_receipt(&unsigned, Some(&v), at(1795701600)), refused, "unsigned");
        }
    }

    #[test]
    fn every_status_has_its_receipt() {
        let status = |s: &str, code: &str| parse_receipt(&dlr(s, code), None, at(0)).unwrap().map(|r| r.status);
        assert_eq!(status("delivered", "0"), Some(ReceiptStatus::Delivered));
        for code in PERMANENT_DLR_ERRORS {
            assert_eq!(status("failed", code), Some(ReceiptStatus::Undelivered { permanent: true }), "{code}");
            assert_eq!(status("rejected", code), Some(ReceiptStatus::Undelivered { permanent: true }), "{code}");
        }
        assert_eq!(status("failed", "2"), Some(ReceiptStatus::Undelivered { permanent: false }));
        assert_eq!(status("expired", "0"), Some(ReceiptStatus::Undelivered { permanent: false }));
        for pending in ["accepted", "buffered", "unknown"] {
            assert_eq!(status(pending, "0"), None, "{pending}");
        }
        assert!(matches!(parse_receipt(&dlr("weird", "0"), None, at(0)), Err(ReceiptError::Malformed { .. })));
        let mut anonymous = dlr("delivered", "0");
        anonymous.remove("client-ref");
        assert!(matches!(parse_receipt(&anonymous, None, at(0)), Err(ReceiptError::Malformed { .. })));
    }

    #[test]
    fn parameters_come_from_the_query_a_form_or_json() {
        let query = receipt_params(Some("status=delivered&client-ref=d%2D1"), None, b"").unwrap();
        assert_eq!(query.get("client-ref").map(String::as_str), Some("d-1"));
        let form =
            receipt_params(None, Some("application/x-www-form-urlencoded"), b"status=failed&err-code=3").unwrap();
        assert_eq!(form.get("err-code").map(String::as_str), Some("3"));
        let json = receipt_params(None, Some("application/json"), br#"{"status":"failed","err-code":3}"#).unwrap();
        assert_eq!(json.get("err-code").map(String::as_str), Some("3"));
        assert!(receipt_params(None, Some("application/json"), b"[").is_err());
    }
}
