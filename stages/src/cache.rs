//! A bounded cache with a time-to-live, on an injected clock.
//!
//! Shared by the enrich stage (contacts) and the render stage (compiled
//! templates), and with the API, which invalidates an entry after it writes
//! the record behind it. When full, expired entries and then the oldest go
//! first; eviction is amortised O(1) through an insertion-order queue.

use herald_schemas::stage::Clock;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub struct ExpiringCache<V> {
    capacity: usize,
    ttl_ms: u64,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    map: HashMap<String, Entry<V>>,
    /// Insertion order; an entry whose stamp no longer matches the map's is stale.
    order: VecDeque<(String, u64)>,
    next_stamp: u64,
}

struct Entry<V> {
    value: V,
    stamp: u64,
    at_ms: u64,
}

impl<V> fmt::Debug for ExpiringCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringCache")
            .field("capacity", &self.capacity)
            .field("ttl_ms", &self.ttl_ms)
            .field("len", &self.lock().map.len())
            .finish()
    }
}

impl<V> ExpiringCache<V> {
    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // The map and queue stay consistent across a panic elsewhere (inserts and removes only).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V: Clone> ExpiringCache<V> {
    /// An empty cache of at most `capacity` entries (0 disables it), each valid for `ttl`.
    pub fn new(capacity: usize, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        let ttl_ms = ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        let inner = Mutex::new(Inner { map: HashMap::new(), order: VecDeque::new(), next_stamp: 0 });
        Self { capacity, ttl_ms, clock, inner }
    }

    /// The value if stored less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        let entry = inner.map.get(key)?;
        (now.saturating_sub(entry.at_ms) < self.ttl_ms).then(|| entry.value.clone())
    }

    /// Stores a value; expired entries and, when full, the oldest are dropped first.
    pub fn insert(&self, key: String, value: V) {
        if self.capacity == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        while let Some((oldest, stamp)) = inner.order.front() {
            let live = inner.map.get(oldest).filter(|e| e.stamp == *stamp);
            let expired = live.is_some_and(|e| now.saturating_sub(e.at_ms) >= self.ttl_ms);
            let full = inner.map.len() >= self.capacity && !inner.map.contains_key(&key);
            if live.is_some() && !expired && !full {
                break;
            }
            if live.is_some() {
                inner.map.remove(oldest);
            }
            inner.order.pop_front();
        }
        let stamp = inner.next_stamp;
        inner.next_stamp += 1;
        inner.order.push_back((key.clone(), stamp));
        inner.map.insert(key, Entry { value, stamp, at_ms: now });
        // Re-inserting a key leaves stale queue entries behind; compact them now and then.
        if inner.order.len() > 2 * self.capacity + 1024 {
            let map = &inner.map;
            inner.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.stamp == *s));
        }
    }

    /// Forgets a key, so the next lookup reads the store (call after writing the record).
    pub fn invalidate(&self, key: &str) {
        self.lock().map.remove(key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }

    /// Entries held (some may be expired).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The clock the TTL is measured with.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::stage::ManualClock;

    #[test]
    fn bounded_oldest_first_with_ttl_and_a_bounded_queue() {
        let clock = ManualClock::new(0);
        let cache = ExpiringCache::<Option<u32>>::new(3, Duration::from_secs(5), Arc::new(clock.clone()));
        for i in 0..5 {
            cache.insert(format!("k{i}"), None);
            clock.advance_ms(1);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("k0").is_none() && cache.get("k1").is_none());
        assert_eq!(cache.get("k4"), Some(None));
        for i in 0..10_000 {
            cache.insert("k4".into(), Some(i));
        }
        assert!(cache.queued() <= 2 * 3 + 1024 + 1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("k4"), Some(Some(9_999)));
        clock.advance_ms(5_000);
        assert!(cache.get("k4").is_none(), "expired");
        cache.insert("k9".into(), None);
        assert_eq!(cache.len(), 1, "expired entries are dropped on insert");
        cache.invalidate("k9");
        assert!(cache.is_empty());
        let off = ExpiringCache::<u32>::new(0, Duration::from_secs(5), Arc::new(clock));
        off.insert("k".into(), 1);
        assert!(off.is_empty());
    }
}
