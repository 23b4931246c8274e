//! One-click unsubscribe links (RFC 8058), signed so that only Herald's own links record an
//! opt-out.
//!
//! A link is `{base_url}?token=<token>`, the token a [`Signer`] token of the user, client,
//! category and delivery id. The email connectors put it in `List-Unsubscribe` (with
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click`) for every category but
//! `transactional`; the API's `POST /v1/unsubscribe?token=…` checks it with [`UnsubscribeLinks::verify`]
//! and records the category opt-out. A token does not expire: an unsubscribe link in an old
//! mail must still work (RFC 8058 §3 expects it to for a reasonable time).

use crate::secret::Secret;
use crate::signed::Signer;
pub use crate::signed::TokenError;
use herald_schemas::{DeliveryJob, TRANSACTIONAL};
use serde::{Deserialize, Serialize};

/// What an unsubscribe token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "c")]
    pub client_id: String,
    #[serde(rename = "k")]
    pub category: String,
    #[serde(rename = "d")]
    pub delivery_id: String,
}

/// Makes and checks signed unsubscribe links.
pub struct UnsubscribeLinks {
    base_url: String,
    signer: Signer,
}

impl std::fmt::Debug for UnsubscribeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeLinks").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl UnsubscribeLinks {
    /// `base_url` is the public address of `POST /v1/unsubscribe`.
    pub fn new(base_url: &str, secret: &Secret) -> UnsubscribeLinks {
        UnsubscribeLinks { base_url: base_url.to_string(), signer: Signer::new(secret) }
    }

    /// The link for a delivery, or `None` for a transactional one (which has no opt-out).
    pub fn for_job(&self, job: &DeliveryJob) -> Option<String> {
        if job.category == TRANSACTIONAL {
            return None;
        }
        let claim = Unsubscribe {
            user_id: job.user_id.clone(),
            client_id: job.client_id.clone(),
            category: job.category.clone(),
            delivery_id: job.delivery_id.0.clone(),
        };
        Some(self.link(&claim))
    }

    pub fn link(&self, claim: &Unsubscribe) -> String {
        let separator = if self.base_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}token={}", self.base_url, self.signer.sign(claim))
    }

    /// The claim of a token from a link, if Herald signed it.
    pub fn verify(&self, token: &str) -> Result<Unsubscribe, TokenError> {
        self.signer.verify(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretSource;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn links(secret: &str) -> UnsubscribeLinks {
        UnsubscribeLinks::new(
            "https://herald.example/v1/unsubscribe",
            &SecretSource::Inline(secret.into()).resolve().unwrap(),
        )
    }

    fn claim() -> Unsubscribe {
        Unsubscribe {
            user_id: "user 1/ü".into(),
            client_id: "shop".into(),
            category: "marketing".into(),
            delivery_id: "d-1".into(),
        }
    }

    fn token(link: &str) -> &str {
        link.split_once("token=").unwrap().1
    }

    #[test]
    fn a_signed_link_verifies_to_its_claim() {
        let links = links("k1");
        let link = links.link(&claim());
        assert!(link.starts_with("https://herald.example/v1/unsubscribe?token="), "{link}");
        assert_eq!(links.verify(token(&link)), Ok(claim()));
    }

    #[test]
    fn a_forged_or_altered_token_is_refused() {
        let link = links("k1").link(&claim());
        assert_eq!(links("k2").verify(token(&link)), Err(TokenError::BadSignature));
        let (payload, mac) = token(&link).split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(br#"{"u":"someone-else","c":"shop","k":"marketing","d":"d-1"}"#);
        assert_eq!(links("k1").verify(&format!("{other}.{mac}")), Err(TokenError::BadSignature));
        assert_eq!(links("k1").verify(payload), Err(TokenError::Malformed));
        assert_eq!(links("k1").verify("%%%.###"), Err(TokenError::Malformed));
    }
}
