//! [`Recent`]: the ids of a partition's latest events, for the consumers of `herald-events` that
//! must see each event once (the analytics sink, the webhook collector).
//!
//! The log can hold an event twice: a stage replaying its uncommitted input after a crash emits
//! that input's events again, with the same derived event ids. A repeat comes at most one stage's
//! uncommitted tail after the original, and a notification's events share a partition, so a
//! window of a partition's latest ids is enough to drop it.

use herald_schemas::ids::fingerprint;
use std::collections::{HashSet, VecDeque};

/// The ids of a partition's latest events, as fingerprints, oldest first.
pub struct Recent {
    order: VecDeque<u128>,
    seen: HashSet<u128>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self { order: VecDeque::with_capacity(capacity), seen: HashSet::with_capacity(capacity), capacity }
    }

    /// Remembers `event_id`; false when it is one of the remembered ones already.
    pub fn first_time(&mut self, event_id: &str) -> bool {
        let print = fingerprint(event_id);
        if !self.seen.insert(print) {
            return false;
        }
        self.order.push_back(print);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_the_oldest_id() {
        let mut recent = Recent::new(2);
        assert!(recent.first_time("a") && recent.first_time("b"));
        assert!(!recent.first_time("a"));
        assert!(recent.first_time("c"));
        assert!(recent.first_time("a"), "a is past the window of two");
        assert!(!recent.first_time("c"));
    }
}
