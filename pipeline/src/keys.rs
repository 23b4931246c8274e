//! API keys: a random secret shown once, stored only as its SHA-256.

use herald_schemas::stage::now_ms;
use herald_schemas::store::{ApiKeyRecord, KeyStore, Scope, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix that makes a Herald key recognisable in a secret scanner.
const PREFIX: &str = "hk_";

/// Hex SHA-256 of a presented secret: the lookup key of the key store.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates and stores a key; returns the secret (the only time it exists in clear).
pub async fn create(store: &dyn KeyStore, client_id: &str, scopes: &[Scope]) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    let record = ApiKeyRecord {
        hash: hash(&secret),
        client_id: client_id.to_string(),
        scopes: scopes.to_vec(),
        created_at_ms: now_ms(),
    };
    store.put_key(&record).await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_hex_sha256() {
        let h = hash("hk_abc");
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash("hk_abd"));
    }
}
