//! Topic subscriptions and broadcast progress on fjall ([`SubscriptionStore`]).
//!
//! # Keys
//! - user_topics: user id → the user's topics (JSON list, sorted).
//! - topic_members: `len | topic | user id` → (): a topic's subscribers in user-id order, so a
//!   page is one range scan from the cursor (the last user id of the page before).
//! - broadcast_cursors: broadcast id → cursor.
//!
//! `set_topics` rewrites the user's list and the index entries it changes in one batch, under the
//! subscriptions lock.

use super::EmbeddedError;
use super::db::{EmbeddedDb, hold};
use super::stores::prefixed;
use async_trait::async_trait;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{StoreError, SubscriptionStore};
use std::collections::BTreeSet;

fn member_key(topic: &str, user_id: &str) -> Vec<u8> {
    let mut key = prefixed(topic);
    key.extend_from_slice(user_id.as_bytes());
    key
}

fn decode_topics(bytes: &[u8]) -> Result<Vec<String>, EmbeddedError> {
    serde_json::from_slice(bytes).map_err(|e| EmbeddedError::corrupt("user_topics", e.to_string()))
}

#[async_trait]
impl SubscriptionStore for EmbeddedDb {
    async fn set_topics(&self, user_id: &str, topics: &[String]) -> Result<Vec<String>, StoreError> {
        let (user_id, topics) = (user_id.to_string(), topics.iter().cloned().collect::<BTreeSet<String>>());
        Ok(self
            .write_durable(move |inner| {
                let _serial = hold(&inner.locks.subscriptions);
                let previous = match inner.ks.user_topics.get(user_id.as_bytes())? {
                    Some(bytes) => decode_topics(&bytes)?,
                    None => Vec::new(),
                };
                let mut batch = inner.db.batch();
                for gone in previous.iter().filter(|t| !topics.contains(*t)) {
                    batch.remove(&inner.ks.topic_members, member_key(gone, &user_id));
                }
                for topic in &topics {
                    batch.insert(&inner.ks.topic_members, member_key(topic, &user_id), []);
                }
                if topics.is_empty() {
                    batch.remove(&inner.ks.user_topics, user_id.as_bytes());
                } else {
                    let list: Vec<&String> = topics.iter().collect();
                    let json = serde_json::to_vec(&list)
                        .map_err(|e| EmbeddedError::corrupt("user_topics", format!("cannot encode: {e}")))?;
                    batch.insert(&inner.ks.user_topics, user_id.as_bytes(), json);
                }
                Ok((previous, inner.commit_batch(batch, None)?))
            })
            .await?)
    }

    async fn topics_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_string();
        Ok(self
            .call(move |inner| match inner.ks.user_topics.get(user_id.as_bytes())? {
                Some(bytes) => decode_topics(&bytes),
                None => Ok(Vec::new()),
            })
            .await?)
    }

    async fn subscribers(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let (topic, cursor) = (topic.to_string(), cursor.map(str::to_string));
        Ok(self
            .call(move |inner| {
                let prefix = prefixed(&topic);
                let start = match &cursor {
                    // Just after the cursor's key: the same bytes and one more.
                    Some(after) => {
                        let mut key = member_key(&topic, after);
                        key.push(0);
                        key
                    }
                    None => prefix.clone(),
                };
                let mut users = Vec::with_capacity(limit.min(10_000));
                for guard in inner.ks.topic_members.range(start..) {
                    let key = guard.key()?;
                    let Some(user) = key.strip_prefix(prefix.as_slice()) else { break };
                    if users.len() == limit {
                        // There is more: the page ends at its last user.
                        let next = users.last().cloned();
                        return Ok((users, next));
                    }
                    let user = String::from_utf8(user.to_vec())
                        .map_err(|e| EmbeddedError::corrupt("topic_members", e.to_string()))?;
                    users.push(user);
                }
                Ok((users, None))
            })
            .await?)
    }

    async fn broadcast_cursor(&self, id: &NotificationId) -> Result<Option<String>, StoreError> {
        let id = id.clone();
        Ok(self
            .call(move |inner| match inner.ks.broadcast_cursors.get(id.0.as_bytes())? {
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|e| EmbeddedError::corrupt("broadcast_cursors", e.to_string())),
                None => Ok(None),
            })
            .await?)
    }

    async fn set_broadcast_cursor(&self, id: &NotificationId, cursor: &str) -> Result<(), StoreError> {
        let (id, cursor) = (id.clone(), cursor.to_string());
        Ok(self
            .call(move |inner| {
                let mut batch = inner.db.batch();
                batch.insert(&inner.ks.broadcast_cursors, id.0.as_bytes(), cursor.as_bytes());
                inner.commit_ordered(batch)
            })
            .await?)
    }
}

/// The tests every [`SubscriptionStore`] passes (the ScyllaDB one too).
#[cfg(test)]
#[path = "../../tests/contracts/subscriptions.rs"]
mod contract;

#[cfg(test)]
mod tests {
    use super::contract;
    use crate::embedded::open_temp as open;

    #[tokio::test]
    async fn subscribers_come_in_stable_pages_and_follow_changes() {
        let (_dir, db) = open();
        contract::subscribers_come_in_stable_pages_and_follow_changes(&db).await;
    }

    #[tokio::test]
    async fn a_stored_cursor_resumes_the_fan_out_where_it_stood() {
        let (_dir, db) = open();
        contract::a_stored_cursor_resumes_the_fan_out_where_it_stood(&db).await;
    }

    #[tokio::test]
    async fn subscribers_come_in_user_id_order() {
        let (_dir, db) = open();
        contract::subscribe_25(&db).await;
        let (all, _) = contract::read_all(&db, "news", None, 10).await;
        assert_eq!(all, (0..25).map(|u| format!("u{u:02}")).collect::<Vec<_>>());
    }
}
