//! In-memory test doubles of the schemas store traits, and item builders.
//! Test-only: stages never hold a store implementation.

use async_trait::async_trait;
use herald_schemas::store::{
    CapHit, ContactStore, DedupClaim, DedupDecision, DedupStore, DigestJoin, DigestJoined, Hold, HoldKey, HoldState,
    ScheduleStore, StoreError, TemplateStore, ThrottleStore,
};
use herald_schemas::template::{EmailPart, PushPart, SmsPart};
use herald_schemas::{
    ChannelKind, Device, NotificationId, NotificationRequest, Platform, RequestEnvelope, Template, User, WorkItem,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn unavailable(fail: &AtomicBool) -> Result<(), StoreError> {
    if fail.load(Ordering::SeqCst) { Err(StoreError::Backend("injected".into())) } else { Ok(()) }
}

#[derive(Default)]
pub struct Contacts {
    pub users: Mutex<HashMap<String, User>>,
    pub calls: AtomicUsize,
    pub asked: Mutex<Vec<Vec<String>>>,
    pub fail: AtomicBool,
}

impl Contacts {
    pub fn with(users: Vec<User>) -> Self {
        let c = Self::default();
        c.users.lock().unwrap().extend(users.into_iter().map(|u| (u.id.clone(), u)));
        c
    }
}

#[async_trait]
impl ContactStore for Contacts {
    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<User>>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        unavailable(&self.fail)?;
        self.asked.lock().unwrap().push(ids.to_vec());
        let users = self.users.lock().unwrap();
        Ok(ids.iter().map(|id| users.get(id).cloned()).collect())
    }

    async fn put_users(&self, users: &[User]) -> Result<Vec<bool>, StoreError> {
        let mut map = self.users.lock().unwrap();
        Ok(users.iter().map(|u| map.insert(u.id.clone(), u.clone()).is_none()).collect())
    }

    async fn mark_unreachable(&self, user_id: &str, address: &str) -> Result<bool, StoreError> {
        let mut map = self.users.lock().unwrap();
        let Some(user) = map.get_mut(user_id).filter(|u| u.has_address(address) && u.reaches(address)) else {
            return Ok(false);
        };
        user.unreachable.push(address.to_string());
        Ok(true)
    }

    async fn add_opt_out(&self, user_id: &str, category: &str) -> Result<bool, StoreError> {
        let mut map = self.users.lock().unwrap();
        let Some(user) = map.get_mut(user_id) else { return Ok(false) };
        Ok(user.preferences.opt_out.add_category(category))
    }
}

#[derive(Default)]
pub struct Templates {
    pub variants: Mutex<HashMap<String, Vec<Template>>>,
    pub calls: AtomicUsize,
    pub fail: AtomicBool,
}

impl Templates {
    pub fn with(templates: Vec<Template>) -> Self {
        let t = Self::default();
        for template in templates {
            t.variants.lock().unwrap().entry(template.id.clone()).or_default().push(template);
        }
        t
    }
}

#[async_trait]
impl TemplateStore for Templates {
    async fn put_template(&self, template: &Template) -> Result<bool, StoreError> {
        let mut map = self.variants.lock().unwrap();
        let list = map.entry(template.id.clone()).or_default();
        match list.iter_mut().find(|t| t.locale == template.locale) {
            Some(old) => {
                *old = template.clone();
                Ok(false)
            }
            None => {
                list.push(template.clone());
                Ok(true)
            }
        }
    }

    async fn get_template(&self, id: &str) -> Result<Vec<Template>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        unavailable(&self.fail)?;
        Ok(self.variants.lock().unwrap().get(id).cloned().unwrap_or_default())
    }
}

/// Claims keyed by string; a claim holds until its expiry.
#[derive(Default)]
pub struct Dedup {
    pub claims: Mutex<HashMap<String, (NotificationId, u64)>>,
    pub calls: AtomicUsize,
    pub fail: AtomicBool,
}

#[async_trait]
impl DedupStore for Dedup {
    async fn claim(&self, claims: &[DedupClaim], now_ms: u64) -> Result<Vec<DedupDecision>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        unavailable(&self.fail)?;
        let mut map = self.claims.lock().unwrap();
        Ok(claims
            .iter()
            .map(|c| match map.get(&c.key) {
                Some((holder, expires)) if *expires > now_ms => {
                    if *holder == c.notification {
                        DedupDecision::Replay
                    } else {
                        DedupDecision::Duplicate { original: holder.clone() }
                    }
                }
                _ => {
                    map.insert(c.key.clone(), (c.notification.clone(), c.expires_at_ms));
                    DedupDecision::First
                }
            })
            .collect())
    }
}

#[derive(Default)]
pub struct Throttle {
    pub hits: Mutex<HashMap<String, Vec<CapHit>>>,
    pub hits_calls: AtomicUsize,
    pub record_calls: AtomicUsize,
    pub fail: AtomicBool,
}

#[async_trait]
impl ThrottleStore for Throttle {
    async fn hits(&self, keys: &[String], since_ms: u64) -> Result<Vec<Vec<CapHit>>, StoreError> {
        self.hits_calls.fetch_add(1, Ordering::SeqCst);
        unavailable(&self.fail)?;
        let map = self.hits.lock().unwrap();
        Ok(keys
            .iter()
            .map(|k| {
                map.get(k).map(|v| v.iter().filter(|h| h.at_ms >= since_ms).cloned().collect()).unwrap_or_default()
            })
            .collect())
    }

    async fn record_hits(&self, hits: &[(String, CapHit)], prune_before_ms: u64) -> Result<(), StoreError> {
        self.record_calls.fetch_add(1, Ordering::SeqCst);
        unavailable(&self.fail)?;
        let mut map = self.hits.lock().unwrap();
        for (key, hit) in hits {
            let list = map.entry(key.clone()).or_default();
            if !list.iter().any(|h| h.notification == hit.notification) {
                list.push(hit.clone());
            }
        }
        for list in map.values_mut() {
            list.retain(|h| h.at_ms >= prune_before_ms);
        }
        Ok(())
    }
}

pub fn request(user: &str, template: &str, channels: &[ChannelKind]) -> NotificationRequest {
    NotificationRequest {
        user_id: user.to_string(),
        topic: None,
        template: template.to_string(),
        data: serde_json::json!({}),
        channels: channels.to_vec(),
        fallback: Vec::new(),
        category: "general".to_string(),
        idempotency_key: None,
        locale: None,
        send_at: None,
        expires_at: None,
        ttl: None,
        digest: None,
    }
}

pub fn item(id: &str, request: NotificationRequest) -> WorkItem {
    WorkItem::new(RequestEnvelope::new(NotificationId(id.to_string()), "client-a".to_string(), 1_000, request))
}

pub fn device(id: &str, platform: Platform, active: bool) -> Device {
    Device { id: id.to_string(), platform, token: format!("token-{id}"), active }
}

/// A user reachable on every channel: one iOS and one Android device.
pub fn full_user(id: &str) -> User {
    User {
        id: id.to_string(),
        email: Some(format!("{id}@example.com")),
        phone: Some("+821012345678".to_string()),
        locale: Some("en".to_string()),
        timezone: Some("Asia/Seoul".to_string()),
        devices: vec![device("d1", Platform::Ios, true), device("d2", Platform::Android, true)],
        preferences: Default::default(),
        unreachable: Vec::new(),
    }
}

/// A template variant with every part, each part a short line naming the locale.
pub fn template(id: &str, locale: &str, default: bool) -> Template {
    Template {
        id: id.to_string(),
        locale: locale.to_string(),
        default,
        push: Some(PushPart { title: format!("[{locale}] Hi"), body: format!("[{locale}] {{{{ name }}}}") }),
        sms: Some(SmsPart { text: format!("[{locale}] {{{{ name }}}}") }),
        email: Some(EmailPart {
            subject: format!("[{locale}] Hello {{{{ name }}}}"),
            text: format!("[{locale}] {{{{ name }}}}"),
            html: format!("<p>[{locale}] {{{{ name }}}}</p>"),
        }),
    }
}

/// The schedule index as the stages use it: holds kept once per `(id, reason)`, digests per
/// user and key. The scheduler's calls are not needed by any stage.
#[derive(Default)]
pub struct Schedule {
    pub holds: Mutex<Vec<Hold>>,
    /// `(user, key)` → the open digest's id; member → digest.
    pub open: Mutex<HashMap<(String, String), NotificationId>>,
    pub member_of: Mutex<HashMap<NotificationId, NotificationId>>,
    pub calls: AtomicUsize,
}

#[async_trait]
impl ScheduleStore for Schedule {
    async fn hold(&self, holds: &[Hold]) -> Result<Vec<Option<HoldState>>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut stored = self.holds.lock().unwrap();
        Ok(holds
            .iter()
            .map(|h| {
                if stored.iter().any(|s| s.id == h.id && s.reason == h.reason) {
                    Some(HoldState::Waiting)
                } else {
                    stored.push(h.clone());
                    None
                }
            })
            .collect())
    }

    async fn due(&self, _: u32, _: u64, _: usize) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }

    async fn begin_release(&self, _: &[HoldKey]) -> Result<Vec<bool>, StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }

    async fn finish_release(&self, _: &[HoldKey]) -> Result<(), StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }

    async fn cancel(&self, _: &NotificationId, _: Option<&str>) -> Result<Vec<(Hold, HoldState)>, StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }

    async fn finish_cancel(&self, _: &[HoldKey]) -> Result<(), StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }

    async fn join_digests(&self, joins: &[DigestJoin], now_ms: u64) -> Result<Vec<DigestJoined>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        let mut member_of = self.member_of.lock().unwrap();
        Ok(joins
            .iter()
            .map(|j| {
                if let Some(digest) = member_of.get(&j.member) {
                    return DigestJoined::AlreadyMember { digest: digest.clone() };
                }
                let joined = match open.get(&(j.user_id.clone(), j.key.clone())) {
                    Some(digest) => DigestJoined::Joined { digest: digest.clone() },
                    None => {
                        let digest = NotificationId::for_digest(&j.member);
                        open.insert((j.user_id.clone(), j.key.clone()), digest.clone());
                        DigestJoined::Opened { digest, due_at_ms: now_ms + j.window_ms }
                    }
                };
                member_of.insert(j.member.clone(), joined.digest().clone());
                joined
            })
            .collect())
    }

    async fn digest_members(&self, _: &NotificationId, _: usize) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        Err(StoreError::Backend("not a stage's call".into()))
    }
}
