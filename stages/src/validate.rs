//! Validate: is a request (or a user record) well formed and meaningful?
//!
//! Contract:
//! - [`Validator::check`] turns the producer's JSON (an item of
//!   `POST /v1/notifications` or a record of `herald-ingest`) into a
//!   [`NotificationRequest`], or a [`Rejection`] whose `code` is machine
//!   readable and whose `message` names the offending field. Nothing in a
//!   message repeats a field's value except unknown field and channel names
//!   (cut to 64 characters), so a message is safe to log and to answer with.
//! - Schema checks are pure; the semantic check (the template exists and has a
//!   part for a requested channel) reads the [`TemplateStore`] and caches only
//!   positive answers, so a template created a moment ago is never refused
//!   because of a stale cache entry.
//! - A store failure is not the producer's fault: it surfaces as the code
//!   [`Rejection::UNAVAILABLE`] ([`Rejection::is_retryable`]; answer 503) from
//!   the API-facing functions, and as a retryable [`StageError`] from
//!   [`ValidateStage`], which never turns it into a `rejected` event.
//! - [`validate_user`] checks a contact record before the API stores it.
//! - [`ValidateStage`] re-checks each item on `herald-requests` (records
//!   written by an older release, or straight into the topic) and emits a
//!   `rejected` event with `reason = code` for each one it stops.

use crate::store_error;
use async_trait::async_trait;
use herald_schemas::request::{DigestSpec, default_category};
use herald_schemas::store::{StoreError, TemplateStore};
use herald_schemas::{
    ChannelKind, Clock, DeliveryEvent, EventKind, NotificationRequest, Stage, StageError, StageOutput, SystemClock,
    User, WorkItem,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Why a request or user was refused: a stable `code` and a human message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Machine-readable, one of the `Rejection::*` constants; becomes the event's `reason`.
    pub code: &'static str,
    /// For people: names the field and the rule it broke.
    pub message: String,
}

impl Rejection {
    /// The bytes are not JSON, or the JSON is not an object.
    pub const INVALID_JSON: &'static str = "invalid_json";
    /// A field the contract does not know.
    pub const UNKNOWN_FIELD: &'static str = "unknown_field";
    /// A required field is absent.
    pub const MISSING_FIELD: &'static str = "missing_field";
    /// A field has the wrong type, length or characters.
    pub const INVALID_FIELD: &'static str = "invalid_field";
    /// `channels` names something other than `push`, `sms`, `email`.
    pub const UNKNOWN_CHANNEL: &'static str = "unknown_channel";
    /// No template with that id.
    pub const UNKNOWN_TEMPLATE: &'static str = "unknown_template";
    /// The template has no part for any requested channel.
    pub const NO_TEMPLATE_PART: &'static str = "no_template_part";
    /// Not a BCP 47 language tag.
    pub const INVALID_LOCALE: &'static str = "invalid_locale";
    /// Not E.164.
    pub const INVALID_PHONE: &'static str = "invalid_phone";
    /// Not a plausible address.
    pub const INVALID_EMAIL: &'static str = "invalid_email";
    /// Not an IANA time zone name.
    pub const INVALID_TIMEZONE: &'static str = "invalid_timezone";
    /// A device with a repeated id, or an empty or oversized token.
    pub const INVALID_DEVICE: &'static str = "invalid_device";
    /// Ours or a store's, not the producer's: retry later (HTTP 503).
    pub const UNAVAILABLE: &'static str = "unavailable";

    /// A rejection with a code (one of the constants) and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// True only for [`Rejection::UNAVAILABLE`]: the request itself may be fine.
    pub fn is_retryable(&self) -> bool {
        self.code == Self::UNAVAILABLE
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_FIELD, message)
    }
}

/// Limits on what a request may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateLimits {
    /// Largest `data`, counted as its compact JSON encoding; it is copied into
    /// every stage and rendered once per channel.
    pub max_data_bytes: usize,
    /// Deepest nesting of objects and arrays in `data`.
    pub max_data_depth: usize,
    /// Longest `user_id`, `template` and `idempotency_key`, in characters.
    pub max_id_chars: usize,
    /// Template ids remembered as existing (with their channels) before the
    /// memory is cleared; it only saves store reads.
    pub template_cache_entries: usize,
}

impl Default for ValidateLimits {
    fn default() -> Self {
        Self { max_data_bytes: 64 * 1024, max_data_depth: 16, max_id_chars: 256, template_cache_entries: 10_000 }
    }
}

/// Most devices a user record may hold: each active one becomes a delivery.
pub const MAX_DEVICES_PER_USER: usize = 100;
/// Longest device token (an FCM token is ~160 bytes, a Web Push subscription ~500).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest category name.
pub const MAX_CATEGORY_CHARS: usize = 64;

const FIELDS: [&str; 13] = [
    "user_id",
    "topic",
    "template",
    "data",
    "channels",
    "fallback",
    "category",
    "idempotency_key",
    "locale",
    "send_at",
    "expires_at",
    "ttl",
    "digest",
];

/// The channels a template has parts for, as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChannelSet(u8);

impl ChannelSet {
    fn bit(c: ChannelKind) -> u8 {
        match c {
            ChannelKind::Push => 1,
            ChannelKind::Sms => 2,
            ChannelKind::Email => 4,
        }
    }

    fn of(channels: &[ChannelKind]) -> Self {
        Self(channels.iter().fold(0, |acc, c| acc | Self::bit(*c)))
    }

    fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

/// A check that failed either because of the request or because of a store.
enum Failure {
    Rejected(Rejection),
    Store(StoreError),
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Failure::Rejected(r)
    }
}

impl Failure {
    fn into_rejection(self) -> Rejection {
        match self {
            Failure::Rejected(r) => r,
            Failure::Store(e) => {
                Rejection::new(Rejection::UNAVAILABLE, format!("templates cannot be read right now ({e}); retry later"))
            }
        }
    }
}

/// Checks requests. Shared (`Arc<Validator>`) by the API and [`ValidateStage`].
pub struct Validator {
    templates: Arc<dyn TemplateStore>,
    limits: ValidateLimits,
    /// Template id → channels it has parts for (union over locale variants).
    known: Mutex<HashMap<String, ChannelSet>>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator reading templates from `templates`.
    pub fn new(templates: Arc<dyn TemplateStore>, limits: ValidateLimits) -> Self {
        Self { templates, limits, known: Mutex::new(HashMap::new()) }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &ValidateLimits {
        &self.limits
    }

    /// Parses and checks raw bytes (a `herald-ingest` record): `invalid_json` if they are not JSON.
    pub async fn check_slice(&self, raw: &[u8]) -> Result<NotificationRequest, Rejection> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|e| Rejection::new(Rejection::INVALID_JSON, format!("not valid JSON: {e}")))?;
        self.check(&value).await
    }

    /// Schema and semantic checks of one notification as the producer sent it.
    pub async fn check(&self, raw: &Value) -> Result<NotificationRequest, Rejection> {
        let request = self.parse(raw)?;
        self.check_template(&request).await.map_err(Failure::into_rejection)?;
        Ok(request)
    }

    /// Schema checks only (no store access): the request, or the first problem found.
    pub fn parse(&self, raw: &Value) -> Result<NotificationRequest, Rejection> {
        let obj = raw
            .as_object()
            .ok_or_else(|| Rejection::new(Rejection::INVALID_JSON, "a notification must be a JSON object"))?;
        if let Some(key) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Rejection::new(
                Rejection::UNKNOWN_FIELD,
                format!("unknown field {:?}; expected one of {}", cut(key), FIELDS.join(", ")),
            ));
        }
        let data = match obj.get("data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(Rejection::invalid("`data` must be an object")),
        };
        let topic = optional_string(obj, "topic")?;
        let request = NotificationRequest {
            user_id: match &topic {
                Some(_) => optional_string(obj, "user_id")?.unwrap_or_default(),
                None => required_string(obj, "user_id")?,
            },
            topic,
            template: required_string(obj, "template")?,
            data,
            channels: parse_channels("channels", obj.get("channels"))?,
            fallback: match obj.get("fallback") {
                None | Some(Value::Null) => Vec::new(),
                value => parse_channels("fallback", value)?,
            },
            category: optional_string(obj, "category")?.unwrap_or_else(default_category),
            idempotency_key: optional_string(obj, "idempotency_key")?,
            locale: optional_string(obj, "locale")?,
            send_at: optional_string(obj, "send_at")?,
            expires_at: optional_string(obj, "expires_at")?,
            ttl: optional_string(obj, "ttl")?,
            digest: parse_digest(obj.get("digest"))?,
        };
        self.check_fields(&request)?;
        Ok(request)
    }

    /// Schema and semantic checks of a typed request (records already on `herald-requests`).
    pub async fn check_request(&self, request: &NotificationRequest) -> Result<(), Rejection> {
        self.check_all(request).await.map_err(Failure::into_rejection)
    }

    /// Forgets what is cached about a template (call after it is stored or changed).
    pub fn invalidate_template(&self, id: &str) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    async fn check_all(&self, request: &NotificationRequest) -> Result<(), Failure> {
        self.check_fields(request)?;
        self.check_template(request).await
    }

    /// The pure checks of every field of a typed request.
    fn check_fields(&self, r: &NotificationRequest) -> Result<(), Rejection> {
        let max = self.limits.max_id_chars;
        match &r.topic {
            Some(topic) => {
                if !r.user_id.is_empty() {
                    return Err(Rejection::invalid("give `user_id` or `topic`, not both"));
                }
                if !is_category(topic) {
                    return Err(Rejection::invalid(format!(
                        "`topic` must be 1 to {MAX_CATEGORY_CHARS} characters of a-z, 0-9, '_' and '-'"
                    )));
                }
                if r.digest.is_some() {
                    return Err(Rejection::invalid("a broadcast (`topic`) cannot be folded into a digest"));
                }
            }
            None => check_id("user_id", &r.user_id, max)?,
        }
        check_id("template", &r.template, max)?;
        if let Some(key) = &r.idempotency_key {
            check_id("idempotency_key", key, max)?;
        }
        if !is_category(&r.category) {
            return Err(Rejection::invalid(format!(
                "`category` must be 1 to {MAX_CATEGORY_CHARS} characters of a-z, 0-9, '_' and '-'"
            )));
        }
        if let Some(locale) = &r.locale
            && !is_locale_tag(locale)
        {
            return Err(Rejection::new(
                Rejection::INVALID_LOCALE,
                "`locale` must be a BCP 47 language tag such as `en` or `ko-KR`",
            ));
        }
        if r.channels.is_empty() {
            return Err(Rejection::invalid("`channels` must name at least one of push, sms, email"));
        }
        let mut seen = ChannelSet::default();
        for c in &r.channels {
            let bit = ChannelSet::of(&[*c]);
            if seen.intersects(bit) {
                return Err(Rejection::invalid(format!("`channels` lists {c} more than once")));
            }
            seen.0 |= bit.0;
        }
        if !r.fallback.is_empty() {
            if !r.channels.contains(&ChannelKind::Push) {
                return Err(Rejection::invalid("`fallback` is for when push fails: `channels` must include push"));
            }
            let mut fallback = ChannelSet::default();
            for c in &r.fallback {
                let bit = ChannelSet::of(&[*c]);
                if *c == ChannelKind::Push || seen.intersects(bit) || fallback.intersects(bit) {
                    return Err(Rejection::invalid(format!(
                        "`fallback` lists {c}, which is push, already in `channels`, or listed twice"
                    )));
                }
                fallback.0 |= bit.0;
            }
        }
        if !r.data.is_object() {
            return Err(Rejection::invalid("`data` must be an object"));
        }
        crate::timing::check(r)?;
        if let Some(digest) = &r.digest {
            check_id("digest.key", &digest.key, max)?;
            check_id("digest.template", &digest.template, max)?;
        }
        if depth(&r.data) > self.limits.max_data_depth {
            return Err(Rejection::invalid(format!(
                "`data` is nested deeper than {} levels",
                self.limits.max_data_depth
            )));
        }
        let size = json_size(&r.data);
        if size > self.limits.max_data_bytes {
            return Err(Rejection::invalid(format!(
                "`data` is {size} bytes as JSON; the limit is {}",
                self.limits.max_data_bytes
            )));
        }
        Ok(())
    }

    /// The template (and the digest's) exists and has a part for at least one requested channel.
    async fn check_template(&self, r: &NotificationRequest) -> Result<(), Failure> {
        self.check_template_id("template", &r.template, &r.channels).await?;
        match &r.digest {
            Some(digest) => self.check_template_id("digest.template", &digest.template, &r.channels).await,
            None => Ok(()),
        }
    }

    async fn check_template_id(&self, field: &str, template: &str, channels: &[ChannelKind]) -> Result<(), Failure> {
        let wanted = ChannelSet::of(channels);
        let cached = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(template).copied();
        if cached.is_some_and(|have| have.intersects(wanted)) {
            return Ok(());
        }
        let variants = self.templates.get_template(template).await.map_err(Failure::Store)?;
        if variants.is_empty() {
            return Err(
                Rejection::new(Rejection::UNKNOWN_TEMPLATE, format!("`{field}` names no stored template")).into()
            );
        }
        let mut have = ChannelSet::default();
        for v in &variants {
            let parts = [(v.push.is_some(), ChannelKind::Push), (v.sms.is_some(), ChannelKind::Sms)];
            for (present, c) in parts.into_iter().chain([(v.email.is_some(), ChannelKind::Email)]) {
                if present {
                    have.0 |= ChannelSet::bit(c);
                }
            }
        }
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= self.limits.template_cache_entries {
                known.clear();
            }
            if self.limits.template_cache_entries > 0 {
                known.insert(template.to_string(), have);
            }
        }
        if have.intersects(wanted) {
            Ok(())
        } else {
            let names: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
            Err(Rejection::new(
                Rejection::NO_TEMPLATE_PART,
                format!("the `{field}` template has no part for any requested channel ({})", names.join(", ")),
            )
            .into())
        }
    }
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn required_string(obj: &Map<String, Value>, field: &str) -> Result<String, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(Rejection::new(Rejection::MISSING_FIELD, format!("`{field}` is required"))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Rejection::invalid(format!("`{field}` must be a string"))),
    }
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::invalid(format!("`{field}` must be a string"))),
    }
}

/// `digest` as `{"key", "window", "template"}`, all strings.
fn parse_digest(value: Option<&Value>) -> Result<Option<DigestSpec>, Rejection> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(Rejection::invalid("`digest` must be an object with key, window and template")),
    };
    if let Some(key) = obj.keys().find(|k| !["key", "window", "template"].contains(&k.as_str())) {
        return Err(Rejection::new(
            Rejection::UNKNOWN_FIELD,
            format!("unknown field digest.{}; expected key, window, template", cut(key)),
        ));
    }
    let field = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => {
            Err(Rejection::new(Rejection::MISSING_FIELD, format!("`digest.{name}` is required")))
        }
        Some(_) => Err(Rejection::invalid(format!("`digest.{name}` must be a string"))),
    };
    Ok(Some(DigestSpec { key: field("key")?, window: field("window")?, template: field("template")? }))
}

/// `field` (`channels` or `fallback`) as a list of channel names.
fn parse_channels(field: &str, value: Option<&Value>) -> Result<Vec<ChannelKind>, Rejection> {
    let not_a_list = || Rejection::invalid(format!("`{field}` must be an array of channel names"));
    let items = match value {
        None | Some(Value::Null) => {
            return Err(Rejection::new(Rejection::MISSING_FIELD, format!("`{field}` is required")));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(not_a_list()),
    };
    items
        .iter()
        .map(|v| {
            let name = v.as_str().ok_or_else(not_a_list)?;
            ChannelKind::parse(name).ok_or_else(|| {
                Rejection::new(
                    Rejection::UNKNOWN_CHANNEL,
                    format!("`{field}` names {:?}; expected push, sms or email", cut(name)),
                )
            })
        })
        .collect()
}

/// Non-empty, at most `max` characters, no control characters.
fn check_id(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(format!("`{field}` must not be empty")));
    }
    if value.chars().count() > max {
        return Err(Rejection::invalid(format!("`{field}` is longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::invalid(format!("`{field}` contains control characters")));
    }
    Ok(())
}

/// `[a-z0-9_-]{1,64}`.
pub fn is_category(s: &str) -> bool {
    (1..=MAX_CATEGORY_CHARS).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Syntax of a BCP 47 language tag: a language subtag of 2 to 8 letters, then
/// subtags of 1 to 8 letters or digits separated by `-` (`en`, `ko-KR`,
/// `zh-Hant-TW`, `es-419`); at most 35 characters.
pub fn is_locale_tag(s: &str) -> bool {
    if s.is_empty() || s.len() > 35 {
        return false;
    }
    let mut subtags = s.split('-');
    let language_ok =
        subtags.next().is_some_and(|l| (2..=8).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    language_ok && subtags.all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// E.164: `+`, then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// One `@`, a local part of 1 to 64 bytes, a dotted domain with no empty
/// label, no whitespace or control characters, at most 254 bytes in all.
pub fn is_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

/// A name in the IANA time zone database (`Asia/Seoul`, `UTC`); `Etc/Unknown` is refused.
pub fn is_timezone(s: &str) -> bool {
    let plausible = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('/')
        && !s.contains("..")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
    plausible && jiff::tz::TimeZone::get(s).is_ok_and(|tz| !tz.is_unknown())
}

/// Checks a contact record before it is stored; call after `id` is set from the path.
pub fn validate_user(user: &User) -> Result<(), Rejection> {
    check_id("id", &user.id, 256)?;
    if let Some(phone) = &user.phone
        && !is_e164(phone)
    {
        return Err(Rejection::new(
            Rejection::INVALID_PHONE,
            "`phone` must be E.164: '+' then 8 to 15 digits, not starting with 0",
        ));
    }
    if let Some(email) = &user.email
        && !is_email(email)
    {
        return Err(Rejection::new(Rejection::INVALID_EMAIL, "`email` is not a valid address"));
    }
    if let Some(locale) = &user.locale
        && !is_locale_tag(locale)
    {
        return Err(Rejection::new(
            Rejection::INVALID_LOCALE,
            "`locale` must be a BCP 47 language tag such as `en` or `ko-KR`",
        ));
    }
    if let Some(tz) = &user.timezone
        && !is_timezone(tz)
    {
        return Err(Rejection::new(
            Rejection::INVALID_TIMEZONE,
            "`timezone` must be an IANA time zone name such as `Asia/Seoul`",
        ));
    }
    if let Some(window) = &user.preferences.quiet_hours {
        crate::quiet::parse_window(window)
            .map_err(|message| Rejection::invalid(format!("`preferences.quiet_hours`: {message}")))?;
    }
    if user.devices.len() > MAX_DEVICES_PER_USER {
        return Err(Rejection::new(
            Rejection::INVALID_DEVICE,
            format!("`devices` holds more than {MAX_DEVICES_PER_USER} devices"),
        ));
    }
    let mut ids = HashSet::with_capacity(user.devices.len());
    for (i, device) in user.devices.iter().enumerate() {
        check_id(&format!("devices[{i}].id"), &device.id, 256)
            .map_err(|r| Rejection::new(Rejection::INVALID_DEVICE, r.message))?;
        if !ids.insert(device.id.as_str()) {
            return Err(Rejection::new(Rejection::INVALID_DEVICE, format!("`devices[{i}].id` repeats an earlier id")));
        }
        if device.token.trim().is_empty() || device.token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::new(
                Rejection::INVALID_DEVICE,
                format!("`devices[{i}].token` must be 1 to {MAX_TOKEN_BYTES} bytes"),
            ));
        }
    }
    if let Some(i) = user.preferences.opt_out.categories.iter().position(|c| !is_category(c)) {
        return Err(Rejection::invalid(format!(
            "`preferences.opt_out.categories[{i}]` must be 1 to {MAX_CATEGORY_CHARS} characters of a-z, 0-9, '_' and '-'"
        )));
    }
    Ok(())
}

/// Nesting depth of arrays and objects (a scalar is 0, `{}` is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Length of the compact JSON encoding, without building it.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// Re-checks every item; a refused item becomes a `rejected` event (`reason` = code).
pub struct ValidateStage {
    validator: Arc<Validator>,
    clock: Arc<dyn Clock>,
}

impl ValidateStage {
    /// A stage sharing `validator` (and its template cache) with the API;
    /// events are stamped with the system clock.
    pub fn new(validator: Arc<Validator>) -> Self {
        Self::with_clock(validator, Arc::new(SystemClock))
    }

    /// Like [`new`](Self::new), stamping events with `clock`.
    pub fn with_clock(validator: Arc<Validator>, clock: Arc<dyn Clock>) -> Self {
        Self { validator, clock }
    }
}

#[async_trait]
impl Stage for ValidateStage {
    fn name(&self) -> &'static str {
        "validate"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let now = self.clock.now_ms();
        let mut passed = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        for item in batch {
            if item.envelope.expired_at(now) {
                let e = &item.envelope;
                events.push(DeliveryEvent::new(
                    &e.id,
                    &e.client_id,
                    &e.request.user_id,
                    EventKind::Expired,
                    None,
                    None,
                    now,
                ));
                continue;
            }
            match self.validator.check_all(&item.envelope.request).await {
                Ok(()) => passed.push(item),
                Err(Failure::Rejected(r)) => {
                    let e = &item.envelope;
                    events.push(DeliveryEvent::new(
                        &e.id,
                        &e.client_id,
                        &e.request.user_id,
                        EventKind::Rejected,
                        None,
                        Some(r.code.to_string()),
                        now,
                    ));
                }
                Err(Failure::Store(source)) => return Err(store_error("validate", source)),
            }
        }
        out.items.extend(passed);
        out.events.extend(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Templates};
    use herald_schemas::Platform;
    use herald_schemas::stage::ManualClock;
    use herald_schemas::template::SmsPart;
    use serde_json::json;
    use std::sync::atomic::Ordering;

    fn validator(templates: Arc<Templates>) -> Validator {
        Validator::new(templates, ValidateLimits::default())
    }

    fn store() -> Arc<Templates> {
        Arc::new(Templates::with(vec![fakes::template("welcome", "en", true)]))
    }

    fn good() -> Value {
        json!({"user_id": "u1", "template": "welcome", "channels": ["push", "email"], "data": {"name": "Kim"}})
    }

    async fn code_of(v: &Validator, raw: Value) -> &'static str {
        v.check(&raw).await.unwrap_err().code
    }

    #[test]
    fn fallback_is_for_push_and_names_other_channels_once() {
        let v = validator(store());
        let with = |channels: Value, fallback: Value| {
            let mut raw = good();
            raw["channels"] = channels;
            raw["fallback"] = fallback;
            v.parse(&raw).map(|r| r.fallback).map_err(|e| e.message)
        };
        assert_eq!(with(json!(["push"]), json!(["sms", "email"])), Ok(vec![ChannelKind::Sms, ChannelKind::Email]));
        assert_eq!(with(json!(["push"]), Value::Null), Ok(vec![]));
        let err = with(json!(["email"]), json!(["sms"])).unwrap_err();
        assert!(err.contains("must include push"), "{err}");
        for bad in [json!(["push"]), json!(["email"]), json!(["sms", "sms"])] {
            let err = with(json!(["push", "email"]), bad.clone()).unwrap_err();
            assert!(err.contains("`fallback` lists"), "{bad}: {err}");
        }
        assert!(with(json!(["push"]), json!("sms")).unwrap_err().contains("`fallback` must be an array"));
        assert!(with(json!(["push"]), json!(["fax"])).unwrap_err().contains("`fallback` names \"fax\""));
    }

    #[test]
    fn a_broadcast_names_a_topic_instead_of_a_user() {
        let v = validator(store());
        let mut raw = good();
        raw.as_object_mut().unwrap().remove("user_id");
        raw["topic"] = json!("news");
        let r = v.parse(&raw).unwrap();
        assert_eq!((r.user_id.as_str(), r.topic.as_deref()), ("", Some("news")));
        raw["user_id"] = json!("u1");
        assert!(v.parse(&raw).unwrap_err().message.contains("not both"));
        raw.as_object_mut().unwrap().remove("user_id");
        raw["topic"] = json!("News!");
        assert!(v.parse(&raw).unwrap_err().message.contains("`topic` must be"));
        raw.as_object_mut().unwrap().remove("topic");
        assert_eq!(v.parse(&raw).unwrap_err().code, Rejection::MISSING_FIELD);
    }

    #[tokio::test]
    async fn a_good_request_passes_with_defaults_filled_in() {
        let v = validator(store());
        let r = v.check(&good()).await.unwrap();
        assert_eq!(r.user_id, "u1");
        assert_eq!(r.category, "general");
        assert_eq!(r.channels, vec![ChannelKind::Push, ChannelKind::Email]);
        assert_eq!(r.data, json!({"name": "Kim"}));
        let r = v.check(&json!({"user_id": "u1", "template": "welcome", "channels": ["sms"]})).await.unwrap();
        assert_eq!(r.data, json!({}));
    }

    #[tokio::test]
    async fn invalid_fields_are_named() {
        let v = validator(store());
        let cases = [
            (json!([1]), Rejection::INVALID_JSON, "object"),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "colour": 1}),
                "unknown_field",
                "colour",
            ),
            (json!({"template": "welcome", "channels": ["push"]}), "missing_field", "user_id"),
            (json!({"user_id": 7, "template": "welcome", "channels": ["push"]}), "invalid_field", "user_id"),
            (json!({"user_id": "", "template": "welcome", "channels": ["push"]}), "invalid_field", "user_id"),
            (json!({"user_id": "a\u{7}b", "template": "welcome", "channels": ["push"]}), "invalid_field", "control"),
            (json!({"user_id": "x".repeat(257), "template": "welcome", "channels": ["push"]}), "invalid_field", "256"),
            (json!({"user_id": "u1", "channels": ["push"]}), "missing_field", "template"),
            (json!({"user_id": "u1", "template": "welcome"}), "missing_field", "channels"),
            (json!({"user_id": "u1", "template": "welcome", "channels": []}), "invalid_field", "channels"),
            (json!({"user_id": "u1", "template": "welcome", "channels": "push"}), "invalid_field", "channels"),
            (json!({"user_id": "u1", "template": "welcome", "channels": ["fax"]}), "unknown_channel", "fax"),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push", "push"]}),
                "invalid_field",
                "more than once",
            ),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "data": [1]}),
                "invalid_field",
                "data",
            ),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "category": "Promo!"}),
                "invalid_field",
                "category",
            ),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "idempotency_key": 5}),
                "invalid_field",
                "idempotency_key",
            ),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "idempotency_key": "k".repeat(300)}),
                "invalid_field",
                "idempotency_key",
            ),
            (
                json!({"user_id": "u1", "template": "welcome", "channels": ["push"], "locale": "en_US"}),
                "invalid_locale",
                "locale",
            ),
        ];
        for (raw, code, needle) in cases {
            let r = v.check(&raw).await.unwrap_err();
            assert_eq!(r.code, code, "{raw}");
            assert!(r.message.contains(needle), "{raw}: {}", r.message);
        }
    }

    #[tokio::test]
    async fn data_size_and_depth_are_limited() {
        let v =
            Validator::new(store(), ValidateLimits { max_data_bytes: 100, max_data_depth: 3, ..Default::default() });
        let mut raw = good();
        raw["data"] = json!({"blob": "x".repeat(200)});
        assert!(v.check(&raw).await.unwrap_err().message.contains("bytes"));
        raw["data"] = json!({"a": {"b": {"c": {"d": 1}}}});
        assert!(v.check(&raw).await.unwrap_err().message.contains("nested"));
        raw["data"] = json!({"a": {"b": {"c": 1}}});
        v.check(&raw).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_template_and_missing_parts_are_refused() {
        let templates = Arc::new(Templates::with(vec![herald_schemas::Template {
            id: "sms-only".into(),
            locale: "en".into(),
            default: true,
            push: None,
            sms: Some(SmsPart { text: "hi".into() }),
            email: None,
        }]));
        let v = validator(templates);
        assert_eq!(
            code_of(&v, json!({"user_id": "u", "template": "nope", "channels": ["push"]})).await,
            "unknown_template"
        );
        assert_eq!(
            code_of(&v, json!({"user_id": "u", "template": "sms-only", "channels": ["push", "email"]})).await,
            "no_template_part"
        );
        v.check(&json!({"user_id": "u", "template": "sms-only", "channels": ["push", "sms"]})).await.unwrap();
    }

    #[tokio::test]
    async fn positive_lookups_are_cached_negative_ones_are_not() {
        let templates = store();
        let v = validator(templates.clone());
        v.check(&good()).await.unwrap();
        v.check(&good()).await.unwrap();
        assert_eq!(templates.calls.load(Ordering::SeqCst), 1);
        let raw = json!({"user_id": "u", "template": "later", "channels": ["sms"]});
        assert_eq!(code_of(&v, raw.clone()).await, "unknown_template");
        templates.put_template(&fakes::template("later", "en", true)).await.unwrap();
        v.check(&raw).await.unwrap();
        v.invalidate_template("welcome");
        v.check(&good()).await.unwrap();
        assert_eq!(templates.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn store_failures_are_retryable_not_rejections_of_the_request() {
        let templates = store();
        templates.fail.store(true, Ordering::SeqCst);
        let v = validator(templates);
        let r = v.check(&good()).await.unwrap_err();
        assert_eq!(r.code, Rejection::UNAVAILABLE);
        assert!(r.is_retryable());
        assert!(!Rejection::invalid("x").is_retryable());
    }

    #[tokio::test]
    async fn bad_bytes_are_invalid_json() {
        let v = validator(store());
        assert_eq!(v.check_slice(b"{nope").await.unwrap_err().code, "invalid_json");
        v.check_slice(good().to_string().as_bytes()).await.unwrap();
    }

    #[test]
    fn rejections_serialize_with_code_and_message() {
        let r = Rejection::new(Rejection::INVALID_PHONE, "bad");
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"code": "invalid_phone", "message": "bad"}));
    }

    #[test]
    fn syntax_helpers() {
        for ok in ["+821012345678", "+14155550100", "+12345678"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["821012345678", "+0123456789", "+1234567", "+1234567890123456", "+1 415 555", "+"] {
            assert!(!is_e164(bad), "{bad}");
        }
        for ok in ["a@b.co", "first.last+tag@mail.example.com"] {
            assert!(is_email(ok), "{ok}");
        }
        let long_local = format!("{}@b.co", "x".repeat(65));
        let long_all = format!("a@{}.com", "d".repeat(260));
        for bad in
            ["", "a", "@b.co", "a@b", "a@@b.co", "a@b@c.co", "a b@c.co", "a@.co", "a@b..co", &long_local, &long_all]
        {
            assert!(!is_email(bad), "{bad}");
        }
        for ok in ["en", "ko-KR", "zh-Hant-TW", "es-419"] {
            assert!(is_locale_tag(ok), "{ok}");
        }
        for bad in ["", "e", "en_US", "en-", "-en", "en--US", "ko-KR-toolongsubtag", "12"] {
            assert!(!is_locale_tag(bad), "{bad}");
        }
        for ok in ["Asia/Seoul", "America/Argentina/Buenos_Aires", "UTC", "Europe/London"] {
            assert!(is_timezone(ok), "{ok}");
        }
        for bad in ["", "Mars/Olympus", "Etc/Unknown", "../etc/passwd", "/etc/localtime", "Asia/Seoul "] {
            assert!(!is_timezone(bad), "{bad}");
        }
        assert!(is_category("marketing") && is_category("a_b-1") && !is_category("") && !is_category("Big"));
    }

    #[test]
    fn users_are_checked_field_by_field() {
        let good = fakes::full_user("u1");
        validate_user(&good).unwrap();
        let with = |f: &dyn Fn(&mut User)| {
            let mut u = good.clone();
            f(&mut u);
            validate_user(&u).unwrap_err().code
        };
        assert_eq!(with(&|u| u.id.clear()), "invalid_field");
        assert_eq!(with(&|u| u.phone = Some("010-1234-5678".into())), "invalid_phone");
        assert_eq!(with(&|u| u.email = Some("kim at example.com".into())), "invalid_email");
        assert_eq!(with(&|u| u.locale = Some("korean!".into())), "invalid_locale");
        assert_eq!(with(&|u| u.timezone = Some("Asia/Nowhere".into())), "invalid_timezone");
        assert_eq!(with(&|u| u.devices[1].id = "d1".into()), "invalid_device");
        assert_eq!(with(&|u| u.devices[0].token.clear()), "invalid_device");
        assert_eq!(with(&|u| u.devices[0].token = "t".repeat(MAX_TOKEN_BYTES + 1)), "invalid_device");
        assert_eq!(
            with(&|u| u.devices =
                (0..=MAX_DEVICES_PER_USER).map(|i| fakes::device(&i.to_string(), Platform::Web, true)).collect()),
            "invalid_device"
        );
        assert_eq!(with(&|u| u.preferences.opt_out.categories = vec!["Promo".into()]), "invalid_field");
        let mut bare = User { id: "u2".into(), ..Default::default() };
        validate_user(&bare).unwrap();
        bare.devices.push(fakes::device("d", Platform::Web, false));
        validate_user(&bare).unwrap();
    }

    #[tokio::test]
    async fn the_stage_turns_rejections_into_events_and_store_failures_into_errors() {
        let templates = store();
        let clock = ManualClock::new(5_000);
        let mut stage = ValidateStage::with_clock(Arc::new(validator(templates.clone())), Arc::new(clock.clone()));
        assert_eq!(stage.name(), "validate");
        let ok = fakes::item("n1", fakes::request("u1", "welcome", &[ChannelKind::Push]));
        let mut bad_req = fakes::request("u1", "welcome", &[ChannelKind::Push]);
        bad_req.category = "NOT OK".into();
        let bad = fakes::item("n2", bad_req);
        let unknown = fakes::item("n3", fakes::request("u1", "missing", &[ChannelKind::Push]));
        let mut out = StageOutput::default();
        stage.process(vec![ok.clone(), bad, unknown], &mut out).await.unwrap();
        assert_eq!(out.items, vec![ok.clone()]);
        let reasons: Vec<_> =
            out.events.iter().map(|e| (e.notification_id.0.as_str(), e.kind, e.reason.as_deref())).collect();
        assert_eq!(
            reasons,
            vec![
                ("n2", EventKind::Rejected, Some("invalid_field")),
                ("n3", EventKind::Rejected, Some("unknown_template"))
            ]
        );
        assert!(out.events.iter().all(|e| e.at_ms == 5_000));

        templates.fail.store(true, Ordering::SeqCst);
        let fresh = fakes::item("n4", fakes::request("u1", "other", &[ChannelKind::Push]));
        let mut out = StageOutput::default();
        let err = stage.process(vec![ok, fresh], &mut out).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(out.items.is_empty() && out.events.is_empty(), "nothing of a failed batch is passed on");
    }
}
