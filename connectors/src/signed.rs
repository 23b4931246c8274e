//! Signed tokens: a claim Herald puts in a link and later reads back, knowing it wrote it.
//!
//! A token is `<payload>.<mac>`: the payload is the claim as JSON, base64url-encoded; the mac is
//! HMAC-SHA256 of the payload under a secret, base64url too. Unsubscribe links
//! ([`crate::unsubscribe`]) and the tracking links of email (open pixel, click redirect) use it.
//! A token does not expire: a link in an old mail must still work.

use crate::secret::Secret;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
}

/// Signs claims and checks tokens under one secret.
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(secret: &Secret) -> Signer {
        Signer { key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()) }
    }

    /// The token of `claim`.
    pub fn sign(&self, claim: &impl Serialize) -> String {
        // The claims are structs of strings: serializing them cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claim).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, payload.as_bytes()));
        format!("{payload}.{mac}")
    }

    /// The claim of a token, if it was signed with this secret.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let (payload, mac) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, payload.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }
}
