//! The state stores of [`herald_schemas::store`] on fjall, one keyspace each.
//!
//! # Promises
//! - Every write call is durable before it returns (group commit) and atomic (one write batch).
//!   A write call that ends up writing nothing still waits for the next group commit, so a decision
//!   it made from another caller's not-yet-durable write is never acknowledged before that write is.
//! - Read-modify-write calls of one store are serialized, so "was it new?" answers and dedup
//!   claims are exact under concurrent callers.
//! - Values are JSON (`serde_json`) except fixed-width numbers; composite keys put a big-endian
//!   length before each variable part, so no id can collide with another's prefix.
//!
//! # Keys
//! - contacts: user id → `User`.
//! - templates: `len | template id | locale` → `Template`. The first variant stored for an id is
//!   stored as the default; storing a variant with `default: true` clears the flag on the others
//!   in the same batch, so exactly one variant of an id is the default.
//! - dedup: key → `expires_at_ms | notification id`; dedup_expiry: `expires_at_ms | key` → () so
//!   expired claims are dropped by a range scan (lazily by a later claim, periodically by
//!   [`super::EmbeddedDb::apply_retention`]).
//! - throttle: `len | cap key | notification id` → `at_ms`: one hit per notification per key, so
//!   a replay recording the same notification again (even at another time) counts once.
//! - ledger: delivery id → state byte; sinks: sink name → position, written in the ledger's batch.
//! - api_keys: hash → `ApiKeyRecord`.
//! - timeline: `len | notification id | hash of the event ids` → the notification's events of one
//!   write, as encoded on `herald-events`; reads keep an event id once (the last copy written: a
//!   replay re-emits the same event with a later `at_ms`).

use super::EmbeddedError;
use super::db::{EmbeddedDb, Inner, hold};
use async_trait::async_trait;
use fjall::Keyspace;
use herald_schemas::codec;
use herald_schemas::contacts::User;
use herald_schemas::event::DeliveryEvent;
use herald_schemas::ids::{DeliveryId, NotificationId};
use herald_schemas::store::{
    ApiKeyRecord, CapHit, ContactStore, DedupClaim, DedupDecision, DedupStore, KeyStore, LedgerState, LedgerStore,
    SinkPosition, StoreError, TemplateStore, ThrottleStore, TimelineStore,
};
use herald_schemas::template::Template;
use herald_schemas::topic;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};

/// Expired dedup claims dropped per write batch (and per hold of the dedup lock).
const PURGE_CHUNK: usize = 10_000;

pub(crate) fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, EmbeddedError> {
    serde_json::to_vec(value).map_err(|e| EmbeddedError::corrupt(what, format!("cannot encode: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, EmbeddedError> {
    serde_json::from_slice(bytes).map_err(|e| EmbeddedError::corrupt(what, e.to_string()))
}

pub(crate) fn get_json<T: DeserializeOwned>(
    ks: &Keyspace,
    what: &'static str,
    key: &[u8],
) -> Result<Option<T>, EmbeddedError> {
    match ks.get(key)? {
        Some(bytes) => Ok(Some(from_json(what, &bytes)?)),
        None => Ok(None),
    }
}

/// `len (u32 BE) | part`: a key prefix no other part can share.
pub(crate) fn prefixed(part: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + part.len() + 40);
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part.as_bytes());
    key
}

fn joined(first: &str, second: &str) -> Vec<u8> {
    let mut key = prefixed(first);
    key.extend_from_slice(second.as_bytes());
    key
}

fn utf8_tail(what: &'static str, key: &[u8], prefix_len: usize) -> Result<String, EmbeddedError> {
    let tail = key.get(prefix_len..).ok_or_else(|| EmbeddedError::corrupt(what, "key shorter than its prefix"))?;
    String::from_utf8(tail.to_vec()).map_err(|e| EmbeddedError::corrupt(what, e.to_string()))
}

pub(crate) fn be_u64(what: &'static str, bytes: &[u8]) -> Result<u64, EmbeddedError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EmbeddedError::corrupt(what, format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

// ---- dedup encoding ----

struct StoredClaim {
    expires_at_ms: u64,
    notification: NotificationId,
}

fn encode_claim(claim: &DedupClaim) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + claim.notification.0.len());
    out.extend_from_slice(&claim.expires_at_ms.to_be_bytes());
    out.extend_from_slice(claim.notification.0.as_bytes());
    out
}

fn decode_claim(bytes: &[u8]) -> Result<StoredClaim, EmbeddedError> {
    let head = bytes.get(..8).ok_or_else(|| EmbeddedError::corrupt("dedup", "claim shorter than 8 bytes"))?;
    Ok(StoredClaim {
        expires_at_ms: be_u64("dedup", head)?,
        notification: NotificationId(utf8_tail("dedup", bytes, 8)?),
    })
}

fn expiry_key(expires_at_ms: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

// ---- ledger encoding ----

fn encode_state(state: LedgerState) -> [u8; 1] {
    match state {
        LedgerState::InFlight => [1],
        LedgerState::Sent => [2],
        LedgerState::Failed => [3],
    }
}

fn decode_state(bytes: &[u8]) -> Result<LedgerState, EmbeddedError> {
    match bytes {
        [1] => Ok(LedgerState::InFlight),
        [2] => Ok(LedgerState::Sent),
        [3] => Ok(LedgerState::Failed),
        other => Err(EmbeddedError::corrupt("ledger", format!("unknown state bytes {other:?}"))),
    }
}

impl Inner {
    /// Drops dedup claims that expired at or before `now_ms`; returns how many. Not fsynced: a
    /// claim that comes back after a crash is expired, which claims treat as free anyway.
    pub(crate) fn purge_expired_claims(&self, now_ms: u64) -> Result<u64, EmbeddedError> {
        let upper = now_ms.saturating_add(1).to_be_bytes();
        let mut purged = 0;
        loop {
            // Short rounds, so claims are not held up behind a large purge.
            let _serial = hold(&self.locks.dedup);
            let mut batch = self.db.batch();
            let mut seen = 0;
            for guard in self.ks.dedup_expiry.range(..upper).take(PURGE_CHUNK) {
                seen += 1;
                let index = guard.key()?;
                let expires_at_ms = be_u64("dedup_expiry", index.get(..8).unwrap_or_default())?;
                let key = index.get(8..).unwrap_or_default();
                // Drop the claim only if it is still the one this index entry was written for.
                if let Some(current) = self.ks.dedup.get(key)?
                    && decode_claim(&current)?.expires_at_ms == expires_at_ms
                {
                    batch.remove(&self.ks.dedup, key);
                    purged += 1;
                }
                batch.remove(&self.ks.dedup_expiry, index);
            }
            super::db::commit(batch)?;
            if seen < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }
}

#[async_trait]
impl ContactStore for EmbeddedDb {
    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<User>>, StoreError> {
        let ids = ids.to_vec();
        Ok(self
            .call(move |inner| ids.iter().map(|id| get_json(&inner.ks.contacts, "contacts", id.as_bytes())).collect())
            .await?)
    }

    async fn put_users(&self, users: &[User]) -> Result<Vec<bool>, StoreError> {
        let users = users.to_vec();
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.contacts);
                let mut batch = inner.db.batch();
                let mut fresh = Vec::with_capacity(users.len());
                // What this call already wrote, so a user twice in one call is not new the second
                // time and keeps the dead addresses the store had.
                let mut written: HashMap<String, User> = HashMap::new();
                for mut user in users {
                    let previous = match written.remove(&user.id) {
                        Some(previous) => Some(previous),
                        None => get_json::<User>(&inner.ks.contacts, "contacts", user.id.as_bytes())?,
                    };
                    fresh.push(previous.is_none());
                    user.unreachable.clear();
                    if let Some(previous) = &previous {
                        user.keep_unreachable_from(previous);
                    }
                    batch.insert(&inner.ks.contacts, user.id.as_bytes(), to_json("contacts", &user)?);
                    written.insert(user.id.clone(), user);
                }
                Ok((fresh, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn mark_unreachable(&self, user_id: &str, address: &str) -> Result<bool, StoreError> {
        let (user_id, address) = (user_id.to_string(), address.to_string());
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.contacts);
                let mut batch = inner.db.batch();
                let marked = match get_json::<User>(&inner.ks.contacts, "contacts", user_id.as_bytes())? {
                    Some(mut user) if user.has_address(&address) && user.reaches(&address) => {
                        user.unreachable.push(address.clone());
                        batch.insert(&inner.ks.contacts, user_id.as_bytes(), to_json("contacts", &user)?);
                        true
                    }
                    _ => false,
                };
                Ok((marked, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn add_opt_out(&self, user_id: &str, category: &str) -> Result<bool, StoreError> {
        let (user_id, category) = (user_id.to_string(), category.to_string());
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.contacts);
                let mut batch = inner.db.batch();
                let added = match get_json::<User>(&inner.ks.contacts, "contacts", user_id.as_bytes())? {
                    Some(mut user) => {
                        let added = user.preferences.opt_out.add_category(&category);
                        if added {
                            batch.insert(&inner.ks.contacts, user_id.as_bytes(), to_json("contacts", &user)?);
                        }
                        added
                    }
                    None => false,
                };
                Ok((added, inner.commit_batch(batch, None)?))
            })
            .await?)
    }
}

#[async_trait]
impl TemplateStore for EmbeddedDb {
    async fn put_template(&self, template: &Template) -> Result<bool, StoreError> {
        let template = template.clone();
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.templates);
                let mut others = Vec::new();
                let mut fresh = true;
                for guard in inner.ks.templates.prefix(prefixed(&template.id)) {
                    let (key, value) = guard.into_inner()?;
                    let variant: Template = from_json("templates", &value)?;
                    if variant.locale == template.locale {
                        fresh = false;
                    } else {
                        others.push((key, variant));
                    }
                }
                let mut batch = inner.db.batch();
                let mut stored = template.clone();
                if template.default {
                    for (key, mut variant) in others.into_iter().filter(|(_, v)| v.default) {
                        variant.default = false;
                        batch.insert(&inner.ks.templates, key, to_json("templates", &variant)?);
                    }
                } else if !others.iter().any(|(_, v)| v.default) {
                    // The first variant of an id (or the one that already was the default) stays
                    // the default until another claims it.
                    stored.default = true;
                }
                batch.insert(
                    &inner.ks.templates,
                    joined(&template.id, &template.locale),
                    to_json("templates", &stored)?,
                );
                Ok((fresh, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn get_template(&self, id: &str) -> Result<Vec<Template>, StoreError> {
        let prefix = prefixed(id);
        Ok(self
            .call(move |inner| {
                inner.ks.templates.prefix(prefix).map(|guard| from_json("templates", &guard.value()?)).collect::<Result<
                    Vec<Template>,
                    EmbeddedError,
                >>(
                )
            })
            .await?)
    }
}

#[async_trait]
impl DedupStore for EmbeddedDb {
    async fn claim(&self, claims: &[DedupClaim], now_ms: u64) -> Result<Vec<DedupDecision>, StoreError> {
        let claims = claims.to_vec();
        Ok(self
            .call(move |inner| {
                let _serial = hold(&inner.locks.dedup);
                let mut batch = inner.db.batch();
                // Claims made earlier in this call, which later ones must see.
                let mut made: HashMap<&str, &DedupClaim> = HashMap::new();
                let mut decisions = Vec::with_capacity(claims.len());
                for claim in &claims {
                    let holder = match made.get(claim.key.as_str()) {
                        Some(earlier) => Some((earlier.expires_at_ms, earlier.notification.clone())),
                        None => match inner.ks.dedup.get(claim.key.as_bytes())? {
                            Some(bytes) => {
                                let stored = decode_claim(&bytes)?;
                                Some((stored.expires_at_ms, stored.notification))
                            }
                            None => None,
                        },
                    };
                    let decision = match holder {
                        Some((expires, holder)) if expires > now_ms => {
                            if holder == claim.notification {
                                DedupDecision::Replay
                            } else {
                                DedupDecision::Duplicate { original: holder }
                            }
                        }
                        expired => {
                            if let Some((expires, _)) = expired {
                                batch.remove(&inner.ks.dedup_expiry, expiry_key(expires, &claim.key));
                            }
                            batch.insert(&inner.ks.dedup, claim.key.as_bytes(), encode_claim(claim));
                            batch.insert(&inner.ks.dedup_expiry, expiry_key(claim.expires_at_ms, &claim.key), [0u8; 0]);
                            made.insert(claim.key.as_str(), claim);
                            DedupDecision::First
                        }
                    };
                    decisions.push(decision);
                }
                inner.commit_ordered(batch)?;
                Ok(decisions)
            })
            .await?)
    }
}

#[async_trait]
impl ThrottleStore for EmbeddedDb {
    async fn hits(&self, keys: &[String], since_ms: u64) -> Result<Vec<Vec<CapHit>>, StoreError> {
        let keys = keys.to_vec();
        Ok(self
            .call(move |inner| {
                keys.iter()
                    .map(|key| {
                        let prefix = prefixed(key);
                        let mut hits = Vec::new();
                        for guard in inner.ks.throttle.prefix(&prefix) {
                            let (stored_key, at) = guard.into_inner()?;
                            let at_ms = be_u64("throttle", &at)?;
                            if at_ms >= since_ms {
                                let notification = NotificationId(utf8_tail("throttle", &stored_key, prefix.len())?);
                                hits.push(CapHit { notification, at_ms });
                            }
                        }
                        hits.sort_by(|a, b| (a.at_ms, &a.notification).cmp(&(b.at_ms, &b.notification)));
                        Ok(hits)
                    })
                    .collect()
            })
            .await?)
    }

    /// Forgets hits before `prune_before_ms` of the keys this call touches (the only keys a cap
    /// check will read next); a hit already older than that is not recorded at all.
    async fn record_hits(&self, hits: &[(String, CapHit)], prune_before_ms: u64) -> Result<(), StoreError> {
        let hits = hits.to_vec();
        self.call(move |inner| {
            let _serial = hold(&inner.locks.throttle);
            let mut batch = inner.db.batch();
            let mut written = HashSet::new();
            let mut touched = HashSet::new();
            for (key, hit) in &hits {
                touched.insert(key.as_str());
                let stored_key = joined(key, &hit.notification.0);
                if hit.at_ms < prune_before_ms || inner.ks.throttle.contains_key(&stored_key)? {
                    continue;
                }
                if written.insert(stored_key.clone()) {
                    batch.insert(&inner.ks.throttle, stored_key, hit.at_ms.to_be_bytes());
                }
            }
            for key in touched {
                for guard in inner.ks.throttle.prefix(prefixed(key)) {
                    let (stored_key, at) = guard.into_inner()?;
                    if be_u64("throttle", &at)? < prune_before_ms {
                        batch.remove(&inner.ks.throttle, stored_key);
                    }
                }
            }
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl LedgerStore for EmbeddedDb {
    async fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<LedgerState>>, StoreError> {
        let ids = ids.to_vec();
        Ok(self
            .call(move |inner| {
                ids.iter()
                    .map(|id| match inner.ks.ledger.get(id.0.as_bytes())? {
                        Some(bytes) => decode_state(&bytes).map(Some),
                        None => Ok(None),
                    })
                    .collect()
            })
            .await?)
    }

    /// Last write wins per delivery; the dispatcher reads states before it writes.
    async fn record_deliveries(
        &self,
        entries: &[(DeliveryId, LedgerState)],
        sink: Option<SinkPosition>,
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.call(move |inner| {
            let mut batch = inner.db.batch();
            for (id, state) in &entries {
                batch.insert(&inner.ks.ledger, id.0.as_bytes(), encode_state(*state));
            }
            if let Some(sink) = &sink {
                batch.insert(&inner.ks.sinks, sink.sink.as_bytes(), sink.position.to_be_bytes());
            }
            inner.commit_ordered(batch)
        })
        .await?;
        Ok(())
    }

    async fn reopen_failed(&self, ids: &[DeliveryId]) -> Result<Vec<bool>, StoreError> {
        let ids = ids.to_vec();
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.ledger);
                let mut batch = inner.db.batch();
                let mut reopened = Vec::with_capacity(ids.len());
                for id in &ids {
                    let failed = match inner.ks.ledger.get(id.0.as_bytes())? {
                        Some(bytes) => decode_state(&bytes)? == LedgerState::Failed,
                        None => false,
                    };
                    if failed {
                        batch.remove(&inner.ks.ledger, id.0.as_bytes());
                    }
                    reopened.push(failed);
                }
                Ok((reopened, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn sink_position(&self, sink: &str) -> Result<Option<u64>, StoreError> {
        let sink = sink.to_string();
        Ok(self
            .call(move |inner| match inner.ks.sinks.get(sink.as_bytes())? {
                Some(bytes) => be_u64("sinks", &bytes).map(Some),
                None => Ok(None),
            })
            .await?)
    }
}

#[async_trait]
impl KeyStore for EmbeddedDb {
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write_durable(move |inner| {
            let mut batch = inner.db.batch();
            batch.insert(&inner.ks.api_keys, key.hash.as_bytes(), to_json("api_keys", &key)?);
            Ok(((), inner.commit_batch(batch, None)?))
        })
        .await?;
        Ok(())
    }

    async fn get_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = hash.to_string();
        Ok(self.call(move |inner| get_json(&inner.ks.api_keys, "api_keys", hash.as_bytes())).await?)
    }
}

#[async_trait]
impl TimelineStore for EmbeddedDb {
    /// Read from `herald-events` through the log's key index: the events are stored once, in
    /// the log (with the topics elsewhere, from the copy fed by the timeline sink, `remote.rs`). Sorted by `at_ms`, then kind (the order a notification goes through), then event
    /// id; an event written twice (a replay after a crash) is kept once, the last copy.
    async fn timeline(&self, id: &NotificationId) -> Result<Vec<DeliveryEvent>, StoreError> {
        let records = self.lookup_group(topic::EVENTS, id.0.as_bytes()).await?;
        let mut by_id: HashMap<String, DeliveryEvent> = HashMap::new();
        for record in records {
            let event = codec::decode::<DeliveryEvent>(&record.value)
                .map_err(|e| EmbeddedError::corrupt("herald-events", format!("offset {}: {e}", record.offset)))?;
            by_id.insert(event.event_id.clone(), event);
        }
        // Events fed from a log elsewhere (Fluvio); none when the log is this database.
        for event in self.fed_timeline(id).await? {
            by_id.insert(event.event_id.clone(), event);
        }
        let mut events: Vec<DeliveryEvent> = by_id.into_values().collect();
        events.sort_by(|a, b| (a.at_ms, a.kind, &a.event_id).cmp(&(b.at_ms, b.kind, &b.event_id)));
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;
    use herald_schemas::contacts::{Device, Platform};
    use herald_schemas::event::{EncodedEvent, EventKind};
    use herald_schemas::job::Route;
    use herald_schemas::store::Scope;
    use herald_schemas::template::{PushPart, SmsPart};
    use herald_schemas::topic::{Append, Record, TopicLog};
    use std::path::Path;

    fn open(dir: &Path) -> EmbeddedDb {
        EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap()
    }

    fn nid(s: &str) -> NotificationId {
        NotificationId(s.to_string())
    }

    fn claim(key: &str, notification: &str, expires_at_ms: u64) -> DedupClaim {
        DedupClaim { key: key.to_string(), notification: nid(notification), expires_at_ms }
    }

    #[tokio::test]
    async fn dedup_claims_first_replay_duplicate_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let decisions = db
            .claim(
                &[
                    claim("k1", "n1", 1_000),
                    claim("k1", "n1", 1_000),
                    claim("k1", "n2", 1_000),
                    claim("k2", "n2", 1_000),
                ],
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            decisions,
            vec![
                DedupDecision::First,
                DedupDecision::Replay,
                DedupDecision::Duplicate { original: nid("n1") },
                DedupDecision::First
            ]
        );
        // Across calls, and across a reopen (durable).
        drop(db);
        let db = open(dir.path());
        assert_eq!(
            db.claim(&[claim("k1", "n3", 2_000)], 999).await.unwrap(),
            vec![DedupDecision::Duplicate { original: nid("n1") }]
        );
        assert_eq!(db.claim(&[claim("k1", "n1", 2_000)], 999).await.unwrap(), vec![DedupDecision::Replay]);
        // At expiry the key is free again, for anyone.
        assert_eq!(db.claim(&[claim("k1", "n3", 2_000)], 1_000).await.unwrap(), vec![DedupDecision::First]);
        assert_eq!(
            db.claim(&[claim("k1", "n1", 3_000)], 1_500).await.unwrap(),
            vec![DedupDecision::Duplicate { original: nid("n3") }]
        );

        // Purging drops claims expired by then, and only those.
        assert_eq!(db.inner.purge_expired_claims(1_999).unwrap(), 1); // k2 (expired at 1000)
        assert_eq!(db.inner.purge_expired_claims(1_999).unwrap(), 0);
        assert!(db.inner.ks.dedup.get("k2").unwrap().is_none());
        assert!(db.inner.ks.dedup.get("k1").unwrap().is_some());
        assert_eq!(db.inner.purge_expired_claims(2_000).unwrap(), 1); // k1, held by n3 until 2000
        assert!(db.inner.ks.dedup_expiry.is_empty().unwrap());
        assert_eq!(db.claim(&[claim("k1", "n9", 5_000)], 2_001).await.unwrap(), vec![DedupDecision::First]);
    }

    #[tokio::test]
    async fn ledger_records_states_and_sink_position_together() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (a, b, c) = (DeliveryId("a".into()), DeliveryId("b".into()), DeliveryId("c".into()));
        assert_eq!(db.sink_position("outbox-sms").await.unwrap(), None);
        db.record_deliveries(&[(a.clone(), LedgerState::InFlight), (b.clone(), LedgerState::InFlight)], None)
            .await
            .unwrap();
        db.record_deliveries(
            &[(a.clone(), LedgerState::Sent)],
            Some(SinkPosition { sink: "outbox-sms".into(), position: 42 }),
        )
        .await
        .unwrap();
        drop(db);
        let db = open(dir.path());
        assert_eq!(
            db.states(&[a, b, c]).await.unwrap(),
            vec![Some(LedgerState::Sent), Some(LedgerState::InFlight), None]
        );
        assert_eq!(db.sink_position("outbox-sms").await.unwrap(), Some(42));
        assert_eq!(db.sink_position("outbox-email").await.unwrap(), None);
    }

    #[tokio::test]
    async fn throttle_hits_are_idempotent_per_notification_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let key = "u1/marketing".to_string();
        let hit = |n: &str, at_ms| (key.clone(), CapHit { notification: nid(n), at_ms });
        db.record_hits(&[hit("n1", 100), hit("n2", 200), hit("n1", 100)], 0).await.unwrap();
        // A replay of n1 at another time still counts once, at its first time.
        db.record_hits(&[hit("n1", 250)], 0).await.unwrap();
        let hits = db.hits(&[key.clone(), "u2/marketing".into()], 0).await.unwrap();
        assert_eq!(
            hits[0],
            vec![CapHit { notification: nid("n1"), at_ms: 100 }, CapHit { notification: nid("n2"), at_ms: 200 }]
        );
        assert!(hits[1].is_empty());
        assert_eq!(db.hits(std::slice::from_ref(&key), 150).await.unwrap()[0].len(), 1);
        // Keys are exact: a key that extends another is not mixed in.
        db.record_hits(&[("u1/marketing2".into(), CapHit { notification: nid("n9"), at_ms: 100 })], 0).await.unwrap();
        assert_eq!(db.hits(std::slice::from_ref(&key), 0).await.unwrap()[0].len(), 2);
        // Pruning forgets old hits of touched keys.
        db.record_hits(&[hit("n3", 300)], 150).await.unwrap();
        let hits = db.hits(std::slice::from_ref(&key), 0).await.unwrap();
        assert_eq!(hits[0].iter().map(|h| h.notification.0.as_str()).collect::<Vec<_>>(), ["n2", "n3"]);
    }

    fn event(n: &str, kind: EventKind, at_ms: u64) -> DeliveryEvent {
        DeliveryEvent::new(&nid(n), "client", "u1", kind, None, None, at_ms)
    }

    /// Appends events to `herald-events` the way the runtime does: keyed by notification, one
    /// append per call.
    async fn append_events(db: &EmbeddedDb, events: &[DeliveryEvent]) {
        let parts = events
            .iter()
            .map(EncodedEvent::encode)
            .map(|e| Append {
                topic: topic::EVENTS.into(),
                partition: e.partition(8),
                records: vec![Record { key: e.record_key(), value: e.bytes }],
            })
            .collect();
        db.append(parts).await.unwrap();
    }

    #[tokio::test]
    async fn timeline_reads_the_events_log_each_event_once_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.ensure_topic(topic::EVENTS, 8).await.unwrap();
        let sent = event("n1", EventKind::Sent, 10).for_delivery(&DeliveryId("d".into()), Route::Sms, 1);
        append_events(&db, &[event("n1", EventKind::Accepted, 5), sent.clone(), event("n2", EventKind::Accepted, 1)])
            .await;
        // A replay emits the same ids (at another time): kept once, the last copy.
        append_events(&db, &[event("n1", EventKind::Accepted, 7), event("n1", EventKind::Accepted, 5)]).await;
        // Same time: ordered by kind.
        append_events(&db, &[event("n1", EventKind::Throttled, 5)]).await;
        // A notification id that extends another is not part of it.
        append_events(&db, &[event("n10", EventKind::Accepted, 5)]).await;
        let timeline = db.timeline(&nid("n1")).await.unwrap();
        let kinds: Vec<(EventKind, u64)> = timeline.iter().map(|e| (e.kind, e.at_ms)).collect();
        assert_eq!(kinds, [(EventKind::Accepted, 5), (EventKind::Throttled, 5), (EventKind::Sent, 10)]);
        assert_eq!(timeline[2], sent);
        assert!(db.timeline(&nid("n3")).await.unwrap().is_empty());
        // The index survives a reopen.
        drop(db);
        let db = open(dir.path());
        assert_eq!(db.timeline(&nid("n1")).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn api_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let record =
            ApiKeyRecord { hash: "ab12".into(), client_id: "acme".into(), scopes: vec![Scope::Send], created_at_ms: 5 };
        assert_eq!(db.get_key("ab12").await.unwrap(), None);
        db.put_key(&record).await.unwrap();
        drop(db);
        let db = open(dir.path());
        assert_eq!(db.get_key("ab12").await.unwrap(), Some(record));
    }

    #[tokio::test]
    async fn contacts_report_new_users_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let mut user = User { id: "u1".into(), email: Some("a@example.com".into()), ..User::default() };
        let other = User { id: "u2".into(), ..User::default() };
        assert_eq!(db.put_users(&[user.clone(), other.clone(), user.clone()]).await.unwrap(), vec![true, true, false]);
        user.devices.push(Device { id: "d1".into(), platform: Platform::Ios, token: "tok".into(), active: true });
        assert_eq!(db.put_users(&[user.clone()]).await.unwrap(), vec![false]);
        let got = db.get_users(&["u1".into(), "nobody".into(), "u2".into()]).await.unwrap();
        assert_eq!(got, vec![Some(user), None, Some(other)]);
    }

    #[tokio::test]
    async fn dead_addresses_are_recorded_and_survive_a_put_that_still_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let device = Device { id: "d1".into(), platform: Platform::Ios, token: "tok".into(), active: true };
        let user = User {
            id: "u1".into(),
            email: Some("a@example.com".into()),
            phone: Some("+15550001".into()),
            devices: vec![device],
            ..User::default()
        };
        db.put_users(std::slice::from_ref(&user)).await.unwrap();
        assert!(db.mark_unreachable("u1", "tok").await.unwrap());
        assert!(db.mark_unreachable("u1", "a@example.com").await.unwrap());
        assert!(!db.mark_unreachable("u1", "tok").await.unwrap(), "already dead");
        assert!(!db.mark_unreachable("u1", "other-token").await.unwrap(), "not the user's");
        assert!(!db.mark_unreachable("nobody", "tok").await.unwrap());
        let stored = |db: EmbeddedDb| async move { db.get_users(&["u1".into()]).await.unwrap()[0].clone().unwrap() };
        assert_eq!(stored(db.clone()).await.unreachable, ["tok", "a@example.com"]);

        // The client sends the user again, with the same token and a new email: the token stays
        // dead, the new email is reachable; an `unreachable` list from the client is ignored.
        let again =
            User { email: Some("new@example.com".into()), unreachable: vec!["+15550001".into()], ..user.clone() };
        db.put_users(&[again]).await.unwrap();
        let got = stored(db.clone()).await;
        assert_eq!(got.unreachable, ["tok"]);
        assert!(got.reaches("new@example.com") && got.reaches("+15550001") && !got.reaches("tok"));

        // A one-click unsubscribe is recorded once, for a known user only.
        assert!(db.add_opt_out("u1", "marketing").await.unwrap());
        assert!(!db.add_opt_out("u1", "marketing").await.unwrap());
        assert!(!db.add_opt_out("nobody", "marketing").await.unwrap());
        assert_eq!(stored(db.clone()).await.preferences.opt_out.categories, ["marketing"]);
    }

    fn template(locale: &str, default: bool) -> Template {
        Template {
            id: "welcome".into(),
            locale: locale.into(),
            default,
            push: Some(PushPart { title: "Hi".into(), body: format!("body {locale}") }),
            sms: Some(SmsPart { text: "hi".into() }),
            email: None,
        }
    }

    #[tokio::test]
    async fn templates_keep_one_default_per_id() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert!(db.put_template(&template("en", false)).await.unwrap());
        assert!(db.put_template(&template("ko", false)).await.unwrap());
        assert!(!db.put_template(&template("en", false)).await.unwrap());
        let defaults = |ts: Vec<Template>| ts.into_iter().map(|t| (t.locale, t.default)).collect::<Vec<_>>();
        // The first stored is the default.
        assert_eq!(defaults(db.get_template("welcome").await.unwrap()), [("en".into(), true), ("ko".into(), false)]);
        // Until another claims it.
        db.put_template(&template("ko", true)).await.unwrap();
        assert_eq!(defaults(db.get_template("welcome").await.unwrap()), [("en".into(), false), ("ko".into(), true)]);
        assert!(db.get_template("welcom").await.unwrap().is_empty());
        assert!(db.get_template("welcome-2").await.unwrap().is_empty());
    }
}
