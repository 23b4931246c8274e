//! [`ThrottleStore`] on `throttle_hits`: one partition per cap key, a row per (notification, time),
//! written with plain inserts and forgotten by TTL (see the module doc of [`crate::scylla`]).

use super::ScyllaError;
use super::state::{ScyllaState, each};
use super::statements::Stmt;
use super::values::{bigint, ttl_until, unsigned};
use async_trait::async_trait;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{CapHit, StoreError, ThrottleStore};
use std::collections::{HashMap, HashSet};

const TABLE: &str = "throttle_hits";

/// A key's hits from its stored rows: each notification once, at its earliest time (a replay that
/// recorded it again later does not move it), those at or after `since_ms`, ordered by time then
/// notification (as the embedded store orders them).
pub fn hits_since(rows: impl IntoIterator<Item = (String, u64)>, since_ms: u64) -> Vec<CapHit> {
    let mut first: HashMap<String, u64> = HashMap::new();
    for (notification, at_ms) in rows {
        first.entry(notification).and_modify(|t| *t = (*t).min(at_ms)).or_insert(at_ms);
    }
    let mut hits: Vec<CapHit> = first
        .into_iter()
        .filter(|(_, at_ms)| *at_ms >= since_ms)
        .map(|(notification, at_ms)| CapHit { notification: NotificationId(notification), at_ms })
        .collect();
    hits.sort_by(|a, b| (a.at_ms, &a.notification).cmp(&(b.at_ms, &b.notification)));
    hits
}

/// How long a hit is kept: until the caller's `prune_before_ms` passes it. The caller prunes at
/// `now - window`, so that is `window - (now - at_ms) = at_ms - prune_before_ms` from now, whatever
/// `now` is (plus the TTL grace).
pub fn hit_ttl(at_ms: u64, prune_before_ms: u64) -> i32 {
    ttl_until(at_ms, prune_before_ms)
}

#[async_trait]
impl ThrottleStore for ScyllaState {
    async fn hits(&self, keys: &[String], since_ms: u64) -> Result<Vec<Vec<CapHit>>, StoreError> {
        let hits = each(keys, |key| async move {
            let rows: Vec<(String, i64)> = self.select_all(Stmt::ThrottleSelect, (key.as_str(),)).await?;
            let rows = rows
                .into_iter()
                .map(|(notification, at_ms)| Ok((notification, unsigned(TABLE, at_ms)?)))
                .collect::<Result<Vec<_>, ScyllaError>>()?;
            Ok(hits_since(rows, since_ms))
        })
        .await?;
        Ok(hits)
    }

    /// A hit already older than `prune_before_ms` is not recorded; the others expire once it
    /// passes them (see `hit_ttl`).
    async fn record_hits(&self, hits: &[(String, CapHit)], prune_before_ms: u64) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let fresh: Vec<&(String, CapHit)> = hits
            .iter()
            .filter(|(_, hit)| hit.at_ms >= prune_before_ms)
            .filter(|(key, hit)| seen.insert((key.as_str(), hit.notification.0.as_str(), hit.at_ms)))
            .collect();
        each(&fresh, |(key, hit)| async move {
            let at_ms = bigint("at_ms", hit.at_ms)?;
            let ttl = hit_ttl(hit.at_ms, prune_before_ms);
            self.write(Stmt::ThrottleInsert, (key.as_str(), hit.notification.0.as_str(), at_ms, ttl)).await
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scylla::values::TTL_GRACE_SECS;

    fn rows(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    fn hit(n: &str, at_ms: u64) -> CapHit {
        CapHit { notification: NotificationId(n.to_string()), at_ms }
    }

    #[test]
    fn a_notification_counts_once_at_its_first_time() {
        // n1 recorded at 100, then again by a replay at 250.
        let stored = rows(&[("n1", 250), ("n2", 200), ("n1", 100)]);
        assert_eq!(hits_since(stored.clone(), 0), [hit("n1", 100), hit("n2", 200)]);
        // Its first time is before `since`: the replay's row does not bring it back.
        assert_eq!(hits_since(stored, 150), [hit("n2", 200)]);
        assert!(hits_since(Vec::new(), 0).is_empty());
    }

    #[test]
    fn hits_are_ordered_by_time_then_notification() {
        let stored = rows(&[("b", 5), ("a", 5), ("c", 1)]);
        assert_eq!(hits_since(stored, 0), [hit("c", 1), hit("a", 5), hit("b", 5)]);
    }

    #[test]
    fn a_hit_lives_until_the_prune_horizon_passes_it() {
        let day_ms = 86_400_000;
        let grace = TTL_GRACE_SECS as i32;
        // Recorded now, with a one-day window: a day.
        assert_eq!(hit_ttl(10 * day_ms, 9 * day_ms), 86_400 + grace);
        // Recorded an hour ago (a late batch): an hour less.
        assert_eq!(hit_ttl(10 * day_ms - 3_600_000, 9 * day_ms), 86_400 - 3_600 + grace);
    }
}
