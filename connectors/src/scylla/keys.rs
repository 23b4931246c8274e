//! [`KeyStore`] on `api_keys`: the record as JSON under its hash.

use super::state::ScyllaState;
use super::statements::Stmt;
use super::values::{from_json, to_json};
use async_trait::async_trait;
use herald_schemas::store::{ApiKeyRecord, KeyStore, StoreError};

const TABLE: &str = "api_keys";

#[async_trait]
impl KeyStore for ScyllaState {
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let data = to_json(TABLE, key)?;
        self.write(Stmt::KeyUpsert, (key.hash.as_str(), &data)).await?;
        Ok(())
    }

    async fn get_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.select_one::<(Vec<u8>,)>(Stmt::KeySelect, (hash,)).await? {
            Some((data,)) => Ok(Some(from_json(TABLE, &data)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::store::Scope;

    #[test]
    fn key_records_round_trip_as_json() {
        let record = ApiKeyRecord {
            hash: "ab12".into(),
            client_id: "acme".into(),
            scopes: vec![Scope::Send, Scope::Analytics],
            created_at_ms: 5,
        };
        let data = to_json(TABLE, &record).unwrap();
        assert_eq!(from_json::<ApiKeyRecord>(TABLE, &data).unwrap(), record);
    }
}
