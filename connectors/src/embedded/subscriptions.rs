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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;

    #[tokio::test]
    async fn subscribers_come_in_pages_in_user_order_and_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let topics = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        for u in 0..25 {
            let list = if u % 5 == 0 { topics(&["news", "sports"]) } else { topics(&["news"]) };
            assert!(db.set_topics(&format!("u{u:02}"), &list).await.unwrap().is_empty());
        }
        // "news" must not be read as a prefix of another topic's keys.
        db.set_topics("z", &topics(&["newsletter"])).await.unwrap();
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let (page, next) = db.subscribers("news", cursor.as_deref(), 10).await.unwrap();
            assert!(page.len() <= 10);
            all.extend(page);
            pages += 1;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(all, (0..25).map(|u| format!("u{u:02}")).collect::<Vec<_>>());
        assert_eq!(db.subscribers("sports", None, 100).await.unwrap().0, ["u00", "u05", "u10", "u15", "u20"]);

        // Replacing a user's topics moves them in the index; an empty list removes them.
        assert_eq!(db.set_topics("u05", &topics(&["weather"])).await.unwrap(), ["news", "sports"]);
        assert_eq!(db.topics_of("u05").await.unwrap(), ["weather"]);
        assert_eq!(db.subscribers("sports", None, 100).await.unwrap().0, ["u00", "u10", "u15", "u20"]);
        db.set_topics("u00", &[]).await.unwrap();
        assert!(db.topics_of("u00").await.unwrap().is_empty());
        assert_eq!(db.subscribers("news", None, 100).await.unwrap().0.len(), 23);

        let id = NotificationId("b1".into());
        assert_eq!(db.broadcast_cursor(&id).await.unwrap(), None);
        db.set_broadcast_cursor(&id, "u10").await.unwrap();
        assert_eq!(db.broadcast_cursor(&id).await.unwrap().as_deref(), Some("u10"));
    }
}
