//! Throttle: what the user refuses, then how often they may be contacted.
//!
//! Contract, per item in batch order:
//! 1. Category opt-out: a user who refuses the item's category stops it with
//!    one `opted_out` event (`category:<name>`), except for `transactional`,
//!    which ignores category opt-outs.
//! 2. Channel opt-out (always honoured, transactional too): the targets of a
//!    refused channel are removed with one `opted_out` event per channel
//!    (`channel:<name>`); the item stops if no target remains.
//! 3. Frequency cap for the item's category (never for `transactional`): the
//!    hits of key `<user_id>/<category>` inside the cap's window are counted;
//!    at `max` the item stops with a `throttled` event (`cap:<category>`),
//!    otherwise a hit is recorded. A hit carrying the item's own notification
//!    id is a replay: the item passes and is not counted twice.
//!
//! Items of one batch see each other's hits. The store is called at most twice
//! per batch: one [`ThrottleStore::hits`] and one [`ThrottleStore::record_hits`].
//! Hits are recorded before the items are passed on, so a crash replay finds
//! its own hits and passes again.

use crate::validate::is_category;
use crate::{short_answer, store_error};
use async_trait::async_trait;
use herald_schemas::store::{CapHit, ThrottleStore};
use herald_schemas::{
    ChannelKind, Clock, DeliveryEvent, EventKind, Stage, StageError, StageOutput, TRANSACTIONAL, WorkItem,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A frequency cap: at most `max` notifications of `category` per user in any `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryCap {
    /// The category capped (`[a-z0-9_-]{1,64}`); `transactional` is ignored.
    pub category: String,
    /// Notifications allowed per window; 0 blocks the category.
    pub max: u32,
    /// A sliding window, written as a humantime duration: `"24h"`, `"90m"`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// Frequency caps. In TOML:
///
/// ```toml
/// [[throttle.caps]]
/// category = "marketing"
/// max = 3
/// window = "24h"
/// ```
///
/// An absent `caps` means the default (marketing ≤ 3 per 24 h); `caps = []` caps nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// One entry per capped category.
    pub caps: Vec<CategoryCap>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            caps: vec![CategoryCap { category: "marketing".into(), max: 3, window: Duration::from_secs(24 * 3600) }],
        }
    }
}

/// A mistake in [`ThrottleConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleConfigError {
    #[error("throttle cap category {0:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-'")]
    BadCategory(String),
    #[error("throttle cap for {0:?} is given twice")]
    Duplicate(String),
    #[error("throttle cap for {0:?} has a zero window")]
    ZeroWindow(String),
}

impl ThrottleConfig {
    /// Checks the caps (for `herald config check`). A cap on `transactional` is
    /// not an error: it is ignored with a warning when the stage is built.
    pub fn validate(&self) -> Result<(), ThrottleConfigError> {
        let mut seen = std::collections::HashSet::new();
        for cap in &self.caps {
            if !is_category(&cap.category) {
                return Err(ThrottleConfigError::BadCategory(cap.category.clone()));
            }
            if !seen.insert(cap.category.as_str()) {
                return Err(ThrottleConfigError::Duplicate(cap.category.clone()));
            }
            if cap.window.is_zero() {
                return Err(ThrottleConfigError::ZeroWindow(cap.category.clone()));
            }
        }
        Ok(())
    }
}

/// A cap as the stage applies it.
#[derive(Debug, Clone, Copy)]
struct Cap {
    max: u32,
    window_ms: u64,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The throttle key of a user and category: `<user_id>/<category>` (categories have no `/`).
pub fn cap_key(user_id: &str, category: &str) -> String {
    let mut key = String::with_capacity(user_id.len() + 1 + category.len());
    key.push_str(user_id);
    key.push('/');
    key.push_str(category);
    key
}

/// Applies opt-outs and frequency caps.
pub struct ThrottleStage {
    store: Arc<dyn ThrottleStore>,
    caps: HashMap<String, Cap>,
    /// The longest window: what `hits` reads back and what `record` keeps.
    longest_ms: u64,
    clock: Arc<dyn Clock>,
}

impl ThrottleStage {
    /// A stage over `store`. A cap on `transactional` is ignored (with a
    /// warning); of two caps for one category the first holds.
    pub fn new(store: Arc<dyn ThrottleStore>, config: ThrottleConfig, clock: Arc<dyn Clock>) -> Self {
        let mut caps = HashMap::new();
        for cap in config.caps {
            if cap.category == TRANSACTIONAL {
                tracing::warn!(category = TRANSACTIONAL, "ignoring a frequency cap: transactional is never capped");
                continue;
            }
            if caps.contains_key(&cap.category) {
                tracing::warn!(category = %cap.category, "ignoring a second frequency cap for one category");
                continue;
            }
            caps.insert(cap.category, Cap { max: cap.max, window_ms: millis(cap.window) });
        }
        let longest_ms = caps.values().map(|c| c.window_ms).max().unwrap_or(0);
        Self { store, caps, longest_ms, clock }
    }

    /// The cap applied to `category`, as `(max, window)`.
    pub fn cap_for(&self, category: &str) -> Option<(u32, Duration)> {
        self.caps.get(category).map(|c| (c.max, Duration::from_millis(c.window_ms)))
    }

    /// Step 1 and 2 of the contract; `false` when the item stops.
    fn apply_opt_outs(item: &mut WorkItem, now: u64, events: &mut Vec<DeliveryEvent>) -> bool {
        let Some(user) = &item.user else { return true };
        let opt_out = &user.preferences.opt_out;
        let e = &item.envelope;
        let category = &e.request.category;
        let event = |channel, reason: String| {
            DeliveryEvent::new(&e.id, &e.client_id, &e.request.user_id, EventKind::OptedOut, channel, Some(reason), now)
        };
        if category != TRANSACTIONAL && opt_out.categories.iter().any(|c| c == category) {
            events.push(event(None, format!("category:{category}")));
            return false;
        }
        let mut removed = false;
        for channel in ChannelKind::ALL {
            if opt_out.channels.contains(&channel) && item.targets.iter().any(|t| t.channel() == channel) {
                events.push(event(Some(channel), format!("channel:{channel}")));
                removed = true;
            }
        }
        // A held-back fallback is subject to its channel's opt-outs too.
        item.fallback_targets.retain(|t| !opt_out.channels.contains(&t.channel()));
        if removed {
            item.targets.retain(|t| !opt_out.channels.contains(&t.channel()));
            return !item.targets.is_empty();
        }
        true
    }
}

#[async_trait]
impl Stage for ThrottleStage {
    fn name(&self) -> &'static str {
        "throttle"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let now = self.clock.now_ms();
        let mut events = Vec::new();
        let mut kept = Vec::with_capacity(batch.len());
        for mut item in batch {
            if Self::apply_opt_outs(&mut item, now, &mut events) {
                kept.push(item);
            }
        }

        // Which items are capped, under which key; the distinct keys in first-seen order.
        let caps: Vec<Option<(String, Cap)>> = kept
            .iter()
            .map(|item| {
                let r = &item.envelope.request;
                self.caps.get(&r.category).map(|cap| (cap_key(&r.user_id, &r.category), *cap))
            })
            .collect();
        let mut hits: HashMap<&str, Vec<CapHit>> = HashMap::new();
        let mut keys: Vec<String> = Vec::new();
        for (key, _) in caps.iter().flatten() {
            if !hits.contains_key(key.as_str()) {
                hits.insert(key, Vec::new());
                keys.push(key.clone());
            }
        }
        if !keys.is_empty() {
            let since = now.saturating_sub(self.longest_ms);
            let found = self.store.hits(&keys, since).await.map_err(|e| store_error("throttle", e))?;
            if found.len() != keys.len() {
                return Err(short_answer("throttle", "throttle", keys.len(), found.len()));
            }
            for (key, list) in keys.iter().zip(found) {
                hits.insert(key, list);
            }
        }

        let mut record: Vec<(String, CapHit)> = Vec::new();
        let mut passed = Vec::with_capacity(kept.len());
        for (item, cap) in kept.into_iter().zip(&caps) {
            let Some((key, cap)) = cap else {
                passed.push(item);
                continue;
            };
            let list = hits.entry(key.as_str()).or_default();
            let id = &item.envelope.id;
            if list.iter().any(|h| &h.notification == id) {
                passed.push(item);
                continue;
            }
            let in_window = list.iter().filter(|h| h.at_ms.saturating_add(cap.window_ms) > now).count();
            if in_window >= cap.max as usize {
                let e = &item.envelope;
                events.push(DeliveryEvent::new(
                    id,
                    &e.client_id,
                    &e.request.user_id,
                    EventKind::Throttled,
                    None,
                    Some(format!("cap:{}", e.request.category)),
                    now,
                ));
                continue;
            }
            let hit = CapHit { notification: id.clone(), at_ms: now };
            list.push(hit.clone());
            record.push((key.clone(), hit));
            passed.push(item);
        }
        if !record.is_empty() {
            let prune_before = now.saturating_sub(self.longest_ms);
            self.store.record_hits(&record, prune_before).await.map_err(|e| store_error("throttle", e))?;
        }
        out.items.extend(passed);
        out.events.extend(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Throttle};
    use herald_schemas::Target;
    use herald_schemas::stage::ManualClock;
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;

    const HOUR: u64 = 3_600_000;

    fn setup(config: ThrottleConfig) -> (Arc<Throttle>, ManualClock, ThrottleStage) {
        let store = Arc::new(Throttle::default());
        let clock = ManualClock::new(100 * HOUR);
        let stage = ThrottleStage::new(store.clone(), config, Arc::new(clock.clone()));
        (store, clock, stage)
    }

    /// An enriched item: the full user on push, sms and email.
    fn enriched(id: &str, category: &str, edit: impl FnOnce(&mut herald_schemas::User)) -> WorkItem {
        let mut r = fakes::request("u1", "t", &[ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email]);
        r.category = category.to_string();
        let mut item = fakes::item(id, r);
        let mut user = fakes::full_user("u1");
        edit(&mut user);
        item.targets = vec![
            Target::Phone { number: user.phone.clone().unwrap() },
            Target::Email { address: user.email.clone().unwrap() },
        ];
        item.targets.insert(
            0,
            Target::Device { device_id: "d1".into(), platform: herald_schemas::Platform::Ios, token: "t1".into() },
        );
        item.user = Some(user);
        item
    }

    async fn run(stage: &mut ThrottleStage, batch: Vec<WorkItem>) -> StageOutput {
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        out
    }

    fn passed(out: &StageOutput) -> Vec<&str> {
        out.items.iter().map(|i| i.envelope.id.0.as_str()).collect()
    }

    fn events(out: &StageOutput) -> Vec<(&str, EventKind, Option<ChannelKind>, &str)> {
        out.events
            .iter()
            .map(|e| (e.notification_id.0.as_str(), e.kind, e.channel, e.reason.as_deref().unwrap_or("")))
            .collect()
    }

    #[tokio::test]
    async fn the_frequency_cap_stops_the_fourth_marketing_message_in_a_batch_and_across_batches() {
        let (store, clock, mut stage) = setup(ThrottleConfig::default());
        let batch: Vec<_> = (1..=4).map(|i| enriched(&format!("n{i}"), "marketing", |_| {})).collect();
        let out = run(&mut stage, batch).await;
        assert_eq!(passed(&out), ["n1", "n2", "n3"]);
        assert_eq!(events(&out), [("n4", EventKind::Throttled, None, "cap:marketing")]);
        assert_eq!(store.hits_calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.record_calls.load(Ordering::SeqCst), 1);

        clock.advance_ms(23 * HOUR);
        let out = run(&mut stage, vec![enriched("n5", "marketing", |_| {}), enriched("g1", "general", |_| {})]).await;
        assert_eq!(passed(&out), ["g1"], "other categories are not capped");
        clock.advance_ms(HOUR);
        let out = run(&mut stage, vec![enriched("n6", "marketing", |_| {})]).await;
        assert_eq!(passed(&out), ["n6"], "the window slid past the first three");
    }

    #[tokio::test]
    async fn a_replay_passes_without_counting_twice() {
        let (store, clock, mut stage) = setup(ThrottleConfig::default());
        let batch: Vec<_> = (1..=3).map(|i| enriched(&format!("n{i}"), "marketing", |_| {})).collect();
        run(&mut stage, batch.clone()).await;
        clock.advance_ms(1_000);
        let out = run(&mut stage, batch).await;
        assert_eq!(passed(&out), ["n1", "n2", "n3"]);
        assert_eq!(store.hits.lock().unwrap()["u1/marketing"].len(), 3);
    }

    #[tokio::test]
    async fn a_channel_opt_out_removes_that_channel_only() {
        let (_, _, mut stage) = setup(ThrottleConfig::default());
        let item = enriched("n1", "general", |u| u.preferences.opt_out.channels = vec![ChannelKind::Sms]);
        let out = run(&mut stage, vec![item]).await;
        assert_eq!(events(&out), [("n1", EventKind::OptedOut, Some(ChannelKind::Sms), "channel:sms")]);
        let routes: Vec<_> = out.items[0].targets.iter().map(|t| t.route().as_str()).collect();
        assert_eq!(routes, ["apns", "email"]);
    }

    #[tokio::test]
    async fn a_held_back_fallback_obeys_channel_opt_outs() {
        let (_, _, mut stage) = setup(ThrottleConfig::default());
        let mut item = enriched("n1", "general", |u| u.preferences.opt_out.channels = vec![ChannelKind::Sms]);
        item.fallback_targets = item.targets.iter().filter(|t| t.channel() == ChannelKind::Sms).cloned().collect();
        assert_eq!(item.fallback_targets.len(), 1);
        let out = run(&mut stage, vec![item]).await;
        assert!(out.items[0].fallback_targets.is_empty());
    }

    #[tokio::test]
    async fn opting_out_of_every_target_channel_stops_the_item() {
        let (_, _, mut stage) = setup(ThrottleConfig::default());
        let item = enriched("n1", "general", |u| u.preferences.opt_out.channels = ChannelKind::ALL.to_vec());
        let out = run(&mut stage, vec![item]).await;
        assert!(out.items.is_empty());
        assert_eq!(out.events.len(), 3);
    }

    #[tokio::test]
    async fn a_category_opt_out_stops_the_item() {
        let (store, _, mut stage) = setup(ThrottleConfig::default());
        let item = enriched("n1", "marketing", |u| u.preferences.opt_out.categories = vec!["marketing".into()]);
        let out = run(&mut stage, vec![item]).await;
        assert!(out.items.is_empty());
        assert_eq!(events(&out), [("n1", EventKind::OptedOut, None, "category:marketing")]);
        assert_eq!(store.hits_calls.load(Ordering::SeqCst), 0, "an opted-out item is not counted");
    }

    #[tokio::test]
    async fn transactional_ignores_category_opt_outs_but_not_channel_opt_outs() {
        let (_, _, mut stage) = setup(ThrottleConfig::default());
        let item = enriched("n1", TRANSACTIONAL, |u| {
            u.preferences.opt_out.categories = vec![TRANSACTIONAL.into()];
            u.preferences.opt_out.channels = vec![ChannelKind::Email];
        });
        let out = run(&mut stage, vec![item]).await;
        assert_eq!(passed(&out), ["n1"]);
        assert_eq!(events(&out), [("n1", EventKind::OptedOut, Some(ChannelKind::Email), "channel:email")]);
        assert!(out.items[0].targets.iter().all(|t| t.channel() != ChannelKind::Email));
    }

    #[tokio::test]
    async fn transactional_is_never_capped_even_if_configured() {
        let config = ThrottleConfig {
            caps: vec![CategoryCap { category: TRANSACTIONAL.into(), max: 1, window: Duration::from_secs(3600) }],
        };
        let (store, _, mut stage) = setup(config);
        assert_eq!(stage.cap_for(TRANSACTIONAL), None);
        let batch: Vec<_> = (1..=5).map(|i| enriched(&format!("n{i}"), TRANSACTIONAL, |_| {})).collect();
        assert_eq!(run(&mut stage, batch).await.items.len(), 5);
        assert_eq!(store.hits_calls.load(Ordering::SeqCst) + store.record_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_store_failure_fails_the_batch() {
        let (store, _, mut stage) = setup(ThrottleConfig::default());
        store.fail.store(true, Ordering::SeqCst);
        let mut out = StageOutput::default();
        let err = stage.process(vec![enriched("n1", "marketing", |_| {})], &mut out).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(out.items.is_empty() && out.events.is_empty());
    }

    #[test]
    fn config_serde_form_and_validation() {
        let text =
            r#"{"caps":[{"category":"marketing","max":3,"window":"24h"},{"category":"digest","max":1,"window":"1h"}]}"#;
        let c: ThrottleConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.caps[0].window, Duration::from_secs(86_400));
        assert_eq!(c.caps[1].window, Duration::from_secs(3_600));
        assert_eq!(serde_json::to_value(&c.caps[1]).unwrap()["window"], "1h");
        c.validate().unwrap();
        let back: ThrottleConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(serde_json::from_str::<ThrottleConfig>("{}").unwrap(), ThrottleConfig::default());
        assert!(serde_json::from_str::<ThrottleConfig>(r#"{"caps":[],"x":1}"#).is_err());
        let cap =
            |category: &str, secs| CategoryCap { category: category.into(), max: 1, window: Duration::from_secs(secs) };
        let bad = |caps| ThrottleConfig { caps }.validate().unwrap_err();
        assert!(matches!(bad(vec![cap("Promo", 1)]), ThrottleConfigError::BadCategory(_)));
        assert!(matches!(bad(vec![cap("a", 1), cap("a", 2)]), ThrottleConfigError::Duplicate(_)));
        assert!(matches!(bad(vec![cap("a", 0)]), ThrottleConfigError::ZeroWindow(_)));
    }

    proptest! {
        /// Whatever the arrival times and batch shapes, no window ever holds
        /// more than `max` passed notifications of a capped category.
        #[test]
        fn no_window_holds_more_than_max(steps in prop::collection::vec((0u64..40, 1usize..4), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let config = ThrottleConfig {
                    caps: vec![CategoryCap { category: "marketing".into(), max: 2, window: Duration::from_millis(100) }],
                };
                let (_, clock, mut stage) = setup(config);
                let mut times = Vec::new();
                let mut n = 0;
                for (gap, size) in steps {
                    clock.advance_ms(gap);
                    let batch: Vec<_> = (0..size).map(|_| { n += 1; enriched(&format!("n{n}"), "marketing", |_| {}) }).collect();
                    let out = run(&mut stage, batch).await;
                    times.extend(std::iter::repeat_n(clock.now_ms(), out.items.len()));
                }
                for &t in &times {
                    let inside = times.iter().filter(|&&s| s >= t && s < t + 100).count();
                    prop_assert!(inside <= 2, "{inside} sends in the window starting at {t}");
                }
                Ok(())
            })?;
        }
    }
}
