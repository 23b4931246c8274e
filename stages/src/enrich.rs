//! Enrich: who is the recipient, and where can they be reached?
//!
//! Contract:
//! - One batched [`ContactStore::get_users`] per batch, for the distinct user
//!   ids the [`ContactCache`] does not hold; none when all are cached.
//! - Each requested channel expands into targets: push into every *active*
//!   device (one target per device, whatever its platform), sms into the phone,
//!   email into the address. Targets keep the order of the request's channels.
//! - An unknown user stops the item with one `no_target` event (`unknown_user`).
//!   A requested channel without a reachable target emits a `no_target` event
//!   for that channel (`no_device`, `no_phone`, `no_email`); the item goes on
//!   with the targets that remain and stops when none remain.
//! - `fallback` channels expand the same way: into the item's targets when push found none (the
//!   fallback goes out now), otherwise into `fallback_targets`, held for the dispatcher to use
//!   if every push delivery fails for good.
//! - The cache may serve a contact record up to its TTL old; the API calls
//!   [`ContactCache::invalidate`] after a write so its own changes are seen at once.

use crate::cache::ExpiringCache;
use crate::{short_answer, store_error};
use async_trait::async_trait;
use herald_schemas::store::ContactStore;
use herald_schemas::{
    ChannelKind, Clock, DeliveryEvent, EventKind, Stage, StageError, StageOutput, Target, User, WorkItem,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Sizing of the [`ContactCache`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactCacheConfig {
    /// Most user records held (known and unknown users both count); 0 disables caching.
    pub capacity: usize,
    /// How stale a record may be when another process (a CLI import) changed it.
    /// A humantime duration (`"5s"`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for ContactCacheConfig {
    fn default() -> Self {
        Self { capacity: 100_000, ttl: Duration::from_secs(5) }
    }
}

/// Contact records by user id (`None`: known not to exist, so a burst for a
/// missing id does not reach the store once per record).
pub type ContactCache = ExpiringCache<Option<User>>;

impl ContactCacheConfig {
    /// An empty cache of this size reading time from `clock`.
    pub fn build(&self, clock: Arc<dyn Clock>) -> ContactCache {
        ContactCache::new(self.capacity, self.ttl, clock)
    }
}

/// Why a requested channel has no target.
fn no_target_reason(channel: ChannelKind) -> &'static str {
    match channel {
        ChannelKind::Push => "no_device",
        ChannelKind::Sms => "no_phone",
        ChannelKind::Email => "no_email",
    }
}

/// The user's targets on one channel: active devices, the phone, the email, except addresses a
/// provider reported dead ([`User::unreachable`]).
fn targets_on(user: &User, channel: ChannelKind, into: &mut Vec<Target>) {
    let reachable = |address: &String| user.reaches(address);
    match channel {
        ChannelKind::Push => {
            into.extend(user.devices.iter().filter(|d| d.active && reachable(&d.token)).map(|d| Target::Device {
                device_id: d.id.clone(),
                platform: d.platform,
                token: d.token.clone(),
            }))
        }
        ChannelKind::Sms => {
            into.extend(user.phone.iter().filter(|p| reachable(p)).map(|p| Target::Phone { number: p.clone() }))
        }
        ChannelKind::Email => {
            into.extend(user.email.iter().filter(|a| reachable(a)).map(|a| Target::Email { address: a.clone() }))
        }
    }
}

/// Looks up recipients and expands requested channels into targets.
pub struct EnrichStage {
    contacts: Arc<dyn ContactStore>,
    cache: Arc<ContactCache>,
    clock: Arc<dyn Clock>,
}

impl EnrichStage {
    /// A stage reading `contacts` through `cache` (shared with the API for invalidation).
    pub fn new(contacts: Arc<dyn ContactStore>, cache: Arc<ContactCache>, clock: Arc<dyn Clock>) -> Self {
        Self { contacts, cache, clock }
    }

    /// Resolves every distinct user of the batch: cache first, then one store call.
    async fn resolve(&self, batch: &[WorkItem]) -> Result<HashMap<String, Option<User>>, StageError> {
        let mut resolved: HashMap<String, Option<User>> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        for item in batch {
            let id = &item.envelope.request.user_id;
            if resolved.contains_key(id) {
                continue;
            }
            match self.cache.get(id) {
                Some(user) => {
                    resolved.insert(id.clone(), user);
                }
                None => {
                    missing.push(id.clone());
                    // A placeholder keeps the id from being asked for twice; replaced below.
                    resolved.insert(id.clone(), None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(resolved);
        }
        let users = self.contacts.get_users(&missing).await.map_err(|e| store_error("enrich", e))?;
        if users.len() != missing.len() {
            return Err(short_answer("enrich", "contacts", missing.len(), users.len()));
        }
        for (id, user) in missing.into_iter().zip(users) {
            self.cache.insert(id.clone(), user.clone());
            resolved.insert(id, user);
        }
        Ok(resolved)
    }
}

#[async_trait]
impl Stage for EnrichStage {
    fn name(&self) -> &'static str {
        "enrich"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let users = self.resolve(&batch).await?;
        let now = self.clock.now_ms();
        out.items.reserve(batch.len());
        for mut item in batch {
            let e = &item.envelope;
            let event = |kind, channel, reason: &str| {
                DeliveryEvent::new(
                    &e.id,
                    &e.client_id,
                    &e.request.user_id,
                    kind,
                    channel,
                    Some(reason.to_string()),
                    now,
                )
            };
            let Some(user) = users.get(&e.request.user_id).cloned().flatten() else {
                out.events.push(event(EventKind::NoTarget, None, "unknown_user"));
                continue;
            };
            let mut targets = Vec::new();
            for &channel in &e.request.channels {
                let before = targets.len();
                targets_on(&user, channel, &mut targets);
                if targets.len() == before {
                    out.events.push(event(EventKind::NoTarget, Some(channel), no_target_reason(channel)));
                }
            }
            let mut fallback_targets = Vec::new();
            for &channel in &e.request.fallback {
                targets_on(&user, channel, &mut fallback_targets);
            }
            if !targets.iter().any(|t| t.channel() == ChannelKind::Push) {
                // No push target at all: the fallback goes out now, with the other channels.
                targets.append(&mut fallback_targets);
            }
            if targets.is_empty() {
                continue;
            }
            item.user = Some(user);
            item.targets = targets;
            item.fallback_targets = fallback_targets;
            out.items.push(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Contacts};
    use herald_schemas::Platform;
    use herald_schemas::stage::ManualClock;
    use std::sync::atomic::Ordering;

    struct Setup {
        contacts: Arc<Contacts>,
        cache: Arc<ContactCache>,
        clock: ManualClock,
        stage: EnrichStage,
    }

    fn setup(users: Vec<User>) -> Setup {
        let clock = ManualClock::new(1_000_000);
        let contacts = Arc::new(Contacts::with(users));
        let cache = Arc::new(ContactCacheConfig::default().build(Arc::new(clock.clone())));
        let stage = EnrichStage::new(contacts.clone(), cache.clone(), Arc::new(clock.clone()));
        Setup { contacts, cache, clock, stage }
    }

    async fn run(stage: &mut EnrichStage, batch: Vec<WorkItem>) -> StageOutput {
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        out
    }

    fn reasons(out: &StageOutput) -> Vec<(EventKind, Option<ChannelKind>, String)> {
        out.events.iter().map(|e| (e.kind, e.channel, e.reason.clone().unwrap_or_default())).collect()
    }

    #[tokio::test]
    async fn channels_expand_into_every_active_target() {
        let mut user = fakes::full_user("u1");
        user.devices.push(fakes::device("d3", Platform::Web, true));
        user.devices.push(fakes::device("dead", Platform::Ios, false));
        let mut s = setup(vec![user.clone()]);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![fakes::item("n1", fakes::request("u1", "t", &all))]).await;
        assert!(out.events.is_empty());
        let item = &out.items[0];
        assert_eq!(item.user.as_ref(), Some(&user));
        let routes: Vec<_> = item.targets.iter().map(|t| t.route().as_str()).collect();
        assert_eq!(routes, ["apns", "fcm", "webpush", "sms", "email"]);
        assert!(item.targets.iter().all(|t| t.address() != "token-dead"));
    }

    #[tokio::test]
    async fn addresses_reported_dead_are_not_targets() {
        let mut user = fakes::full_user("u1");
        user.unreachable = vec!["token-d1".into(), "u1@example.com".into()];
        let mut s = setup(vec![user]);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![fakes::item("n1", fakes::request("u1", "t", &all))]).await;
        let addresses: Vec<_> = out.items[0].targets.iter().map(|t| t.address()).collect();
        assert_eq!(addresses, ["token-d2", "+821012345678"]);
        assert_eq!(reasons(&out), vec![(EventKind::NoTarget, Some(ChannelKind::Email), "no_email".into())]);
    }

    #[tokio::test]
    async fn a_fallback_is_held_back_while_push_has_a_target_and_used_when_it_has_none() {
        let mut with_devices = fakes::full_user("u1");
        with_devices.email = None;
        let mut without = fakes::full_user("u2");
        without.devices.iter_mut().for_each(|d| d.active = false);
        let mut s = setup(vec![with_devices, without]);
        let request = |user: &str| {
            let mut r = fakes::request(user, "t", &[ChannelKind::Push]);
            r.fallback = vec![ChannelKind::Sms, ChannelKind::Email];
            r
        };
        let out = run(&mut s.stage, vec![fakes::item("n1", request("u1")), fakes::item("n2", request("u2"))]).await;
        let routes = |targets: &[Target]| targets.iter().map(|t| t.route().as_str()).collect::<Vec<_>>();
        assert_eq!(routes(&out.items[0].targets), ["apns", "fcm"]);
        assert_eq!(routes(&out.items[0].fallback_targets), ["sms"], "u1 has no email");
        assert_eq!(routes(&out.items[1].targets), ["sms", "email"], "no active device: the fallback goes now");
        assert!(out.items[1].fallback_targets.is_empty());
        assert_eq!(reasons(&out), vec![(EventKind::NoTarget, Some(ChannelKind::Push), "no_device".into())]);
    }

    #[tokio::test]
    async fn unknown_user_stops_the_item_with_one_event() {
        let mut s = setup(vec![]);
        let out = run(&mut s.stage, vec![fakes::item("n1", fakes::request("ghost", "t", &[ChannelKind::Push]))]).await;
        assert!(out.items.is_empty());
        assert_eq!(reasons(&out), vec![(EventKind::NoTarget, None, "unknown_user".into())]);
        assert_eq!(out.events[0].at_ms, 1_000_000);
    }

    #[tokio::test]
    async fn a_channel_without_target_is_reported_and_the_rest_goes_on() {
        let mut user = fakes::full_user("u1");
        user.phone = None;
        user.devices.iter_mut().for_each(|d| d.active = false);
        let mut s = setup(vec![user]);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![fakes::item("n1", fakes::request("u1", "t", &all))]).await;
        assert_eq!(
            reasons(&out),
            vec![
                (EventKind::NoTarget, Some(ChannelKind::Push), "no_device".into()),
                (EventKind::NoTarget, Some(ChannelKind::Sms), "no_phone".into())
            ]
        );
        assert_eq!(out.items.len(), 1);
        assert_eq!(out.items[0].targets, vec![Target::Email { address: "u1@example.com".into() }]);
    }

    #[tokio::test]
    async fn no_target_on_any_channel_stops_the_item() {
        let user = User { id: "bare".into(), ..Default::default() };
        let mut s = setup(vec![user]);
        let out = run(&mut s.stage, vec![fakes::item("n1", fakes::request("bare", "t", &[ChannelKind::Email]))]).await;
        assert!(out.items.is_empty());
        assert_eq!(reasons(&out), vec![(EventKind::NoTarget, Some(ChannelKind::Email), "no_email".into())]);
    }

    #[tokio::test]
    async fn one_deduplicated_lookup_per_batch_then_the_cache_answers() {
        let mut s = setup(vec![fakes::full_user("u1"), fakes::full_user("u2")]);
        let batch: Vec<_> = ["u1", "u2", "u1", "ghost", "ghost"]
            .iter()
            .enumerate()
            .map(|(i, u)| fakes::item(&format!("n{i}"), fakes::request(u, "t", &[ChannelKind::Sms])))
            .collect();
        let out = run(&mut s.stage, batch.clone()).await;
        assert_eq!(out.items.len(), 3);
        assert_eq!(*s.contacts.asked.lock().unwrap(), vec![vec!["u1".to_string(), "u2".into(), "ghost".into()]]);
        let out = run(&mut s.stage, batch.clone()).await;
        assert_eq!(out.items.len(), 3);
        assert_eq!(s.contacts.calls.load(Ordering::SeqCst), 1, "second batch served from the cache");

        // A write elsewhere is seen after the TTL, or at once after invalidate.
        s.contacts.put_users(&[fakes::full_user("ghost")]).await.unwrap();
        s.cache.invalidate("ghost");
        let out = run(&mut s.stage, batch.clone()).await;
        assert_eq!(out.items.len(), 5);
        assert_eq!(*s.contacts.asked.lock().unwrap().last().unwrap(), vec!["ghost".to_string()]);
        s.clock.advance_ms(5_000);
        run(&mut s.stage, batch).await;
        assert_eq!(s.contacts.calls.load(Ordering::SeqCst), 3);
        assert_eq!(s.contacts.asked.lock().unwrap().last().unwrap().len(), 3, "all expired");
    }

    #[tokio::test]
    async fn a_store_failure_fails_the_batch() {
        let mut s = setup(vec![fakes::full_user("u1")]);
        s.contacts.fail.store(true, Ordering::SeqCst);
        let mut out = StageOutput::default();
        let err = s.stage.process(vec![fakes::item("n1", fakes::request("u1", "t", &[ChannelKind::Sms]))], &mut out);
        assert!(err.await.unwrap_err().is_retryable());
        assert!(out.items.is_empty() && out.events.is_empty());
    }
}
