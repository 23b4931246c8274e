//! Render: one message per channel from the chosen locale variant of a template.
//!
//! Contract:
//! - Template source comes only from the [`TemplateStore`]; the request's
//!   `data` is only ever the render context (its top-level keys are the
//!   template's variables) and is never compiled, so `{{ 7*7 }}` in data is
//!   output as written.
//! - Undefined variables are errors ([`UndefinedBehavior::Strict`]): a message
//!   is rendered whole or not at all.
//! - Every part render has a fuel budget and an output cap, so a hostile
//!   template (`{% for i in range(100000000) %}…`) fails fast instead of
//!   stalling the partition.
//! - HTML auto-escaping applies to the email `html` part only; push, sms, the
//!   email subject and text get the data as is.
//! - Locale: the item's `locale` override, else the user's; exact variant
//!   (ASCII case-insensitive), then shorter prefixes (`ko-KR` → `ko`), then the
//!   variant marked `default`, else the first variant stored. One variant
//!   serves all channels of an item.
//! - Channel limits: push `{"title","body"}` JSON ≤ `max_push_payload_bytes`,
//!   sms ≤ `max_sms_chars` characters, email subject one line.
//! - A channel that fails emits one `render_failed` event (`missing_variable:<name>`,
//!   `fuel_exhausted`, `too_large`, `no_part`, `multiline_subject`,
//!   `unknown_template`, `template_error`) and loses its targets; the item
//!   stops when no target remains. Otherwise the stage sets `item.locale` and
//!   one `item.rendered` entry per channel that has targets.
//! - Compiled templates are cached per id for a short TTL in a [`TemplateCache`]
//!   that the API invalidates after a template write.

use crate::cache::ExpiringCache;
use crate::store_error;
use crate::validate::is_locale_tag;
use async_trait::async_trait;
use herald_schemas::store::TemplateStore;
use herald_schemas::template::Template;
use herald_schemas::{
    ChannelKind, Clock, DeliveryEvent, EventKind, RenderedContent, Stage, StageError, StageOutput, SystemClock,
    WorkItem,
};
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Part names, as used in errors and as template names inside the engine.
pub const PUSH_TITLE: &str = "push.title";
/// See [`PUSH_TITLE`].
pub const PUSH_BODY: &str = "push.body";
/// See [`PUSH_TITLE`].
pub const SMS_TEXT: &str = "sms.text";
/// See [`PUSH_TITLE`].
pub const EMAIL_SUBJECT: &str = "email.subject";
/// See [`PUSH_TITLE`].
pub const EMAIL_TEXT: &str = "email.text";
/// See [`PUSH_TITLE`]; the only part rendered with HTML escaping.
pub const EMAIL_HTML: &str = "email.html";

/// Longest source of one template part accepted by [`check_template`].
pub const MAX_PART_SOURCE_BYTES: usize = 64 * 1024;

/// Budgets and limits of rendering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderLimits {
    /// minijinja fuel per part render (about one per instruction and per 64
    /// bytes of data created); a template that burns it fails `fuel_exhausted`.
    pub fuel: u64,
    /// Largest rendered part in bytes; past it the render stops (`too_large`).
    pub max_output_bytes: usize,
    /// Largest push `{"title":…,"body":…}` JSON, leaving room in a 4 KiB APNs/FCM payload.
    pub max_push_payload_bytes: usize,
    /// Longest SMS in characters (ten concatenated segments).
    pub max_sms_chars: usize,
    /// Longest email subject in bytes (the RFC 5322 line limit).
    pub max_subject_bytes: usize,
    /// Template ids kept compiled.
    pub cache_capacity: usize,
    /// How long a compiled template is used before it is read again, so a
    /// template changed through another process is picked up. Written as in
    /// a humantime duration (`"30s"`).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for RenderLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000,
            max_output_bytes: 256 * 1024,
            max_push_payload_bytes: 4096,
            max_sms_chars: 1600,
            max_subject_bytes: 998,
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(30),
        }
    }
}

/// Why a template was refused when it was stored ([`check_template`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`id` must be 1 to 256 characters without control characters")]
    InvalidId,
    #[error("`locale` must be a BCP 47 language tag such as `en` or `ko-KR`")]
    InvalidLocale,
    #[error("a template needs at least one part: push, sms or email")]
    NoParts,
    #[error("{part} is longer than {max} bytes")]
    TooLarge { part: &'static str, max: usize },
    #[error("{part} does not compile: {detail}")]
    Syntax { part: &'static str, detail: String },
}

impl TemplateError {
    /// The part at fault (`push.title`, `email.html`, …), if one is.
    pub fn part(&self) -> Option<&'static str> {
        match self {
            TemplateError::TooLarge { part, .. } | TemplateError::Syntax { part, .. } => Some(part),
            _ => None,
        }
    }
}

/// Why one channel of an item could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderFailure {
    #[error("undefined variable {}", .0.as_deref().unwrap_or("(unknown)"))]
    MissingVariable(Option<String>),
    #[error("fuel exhausted")]
    FuelExhausted,
    #[error("rendered message too large")]
    TooLarge,
    #[error("the template variant has no part for this channel")]
    NoPart,
    #[error("the email subject spans several lines")]
    MultilineSubject,
    #[error("no such template")]
    UnknownTemplate,
    #[error("template error: {0}")]
    Template(String),
}

impl RenderFailure {
    /// The event's `reason`: `missing_variable:<name>`, `fuel_exhausted`, `too_large`, ….
    pub fn reason(&self) -> String {
        match self {
            RenderFailure::MissingVariable(Some(name)) => format!("missing_variable:{name}"),
            RenderFailure::MissingVariable(None) => "missing_variable".to_string(),
            RenderFailure::FuelExhausted => "fuel_exhausted".to_string(),
            RenderFailure::TooLarge => "too_large".to_string(),
            RenderFailure::NoPart => "no_part".to_string(),
            RenderFailure::MultilineSubject => "multiline_subject".to_string(),
            RenderFailure::UnknownTemplate => "unknown_template".to_string(),
            RenderFailure::Template(_) => "template_error".to_string(),
        }
    }
}

/// The parts a variant has, with their sources.
fn parts_of(t: &Template) -> Vec<(&'static str, &str)> {
    let mut parts = Vec::with_capacity(6);
    if let Some(p) = &t.push {
        parts.extend([(PUSH_TITLE, p.title.as_str()), (PUSH_BODY, p.body.as_str())]);
    }
    if let Some(p) = &t.sms {
        parts.push((SMS_TEXT, p.text.as_str()));
    }
    if let Some(p) = &t.email {
        parts.extend([
            (EMAIL_SUBJECT, p.subject.as_str()),
            (EMAIL_TEXT, p.text.as_str()),
            (EMAIL_HTML, p.html.as_str()),
        ]);
    }
    parts
}

/// An engine with Herald's rules: strict undefined, fuel, HTML escaping for `email.html` only.
fn new_env(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(fuel));
    env.set_debug(false);
    env.set_auto_escape_callback(|name| if name.ends_with(EMAIL_HTML) { AutoEscape::Html } else { AutoEscape::None });
    env
}

/// Checks a template before it is stored: id, locale, at least one part, and
/// every part compiles; the error names the failing part.
pub fn check_template(t: &Template) -> Result<(), TemplateError> {
    if t.id.is_empty() || t.id.chars().count() > 256 || t.id.chars().any(char::is_control) {
        return Err(TemplateError::InvalidId);
    }
    if !is_locale_tag(&t.locale) {
        return Err(TemplateError::InvalidLocale);
    }
    let parts = parts_of(t);
    if parts.is_empty() {
        return Err(TemplateError::NoParts);
    }
    let env = new_env(RenderLimits::default().fuel);
    for (part, source) in parts {
        if source.len() > MAX_PART_SOURCE_BYTES {
            return Err(TemplateError::TooLarge { part, max: MAX_PART_SOURCE_BYTES });
        }
        env.template_from_named_str(part, source).map_err(|e| TemplateError::Syntax { part, detail: e.to_string() })?;
    }
    Ok(())
}

/// Picks the variant for `wanted` among `(locale, default)` pairs (see the module doc).
fn select_index<'a>(variants: impl Iterator<Item = (&'a str, bool)> + Clone, wanted: Option<&str>) -> Option<usize> {
    if let Some(mut tag) = wanted {
        loop {
            if let Some(i) = variants.clone().position(|(l, _)| l.eq_ignore_ascii_case(tag)) {
                return Some(i);
            }
            match tag.rfind('-') {
                Some(cut) => tag = &tag[..cut],
                None => break,
            }
        }
    }
    let mut all = variants.clone();
    all.position(|(_, default)| default).or_else(|| variants.clone().next().map(|_| 0))
}

/// The index of the variant of `variants` used for `wanted` (a locale tag), `None` when empty.
pub fn select_variant(variants: &[Template], wanted: Option<&str>) -> Option<usize> {
    select_index(variants.iter().map(|t| (t.locale.as_str(), t.default)), wanted)
}

/// Which parts a stored variant has.
#[derive(Debug)]
struct Variant {
    locale: String,
    default: bool,
    push: bool,
    sms: bool,
    email: bool,
}

/// Every locale variant of one template id, compiled into one engine.
///
/// Part `p` of variant `i` is the engine template named `"{i}/{p}"`; a part
/// that did not compile is absent and renders as `template_error`.
pub struct CompiledTemplate {
    env: Environment<'static>,
    variants: Vec<Variant>,
}

impl fmt::Debug for CompiledTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledTemplate").field("variants", &self.variants).finish_non_exhaustive()
    }
}

/// A writer that refuses to grow past a cap, stopping the render at once.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.cap {
            return Err(io::Error::other("rendered part exceeds the output cap"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl CompiledTemplate {
    /// Compiles every part of every variant (non-empty `variants`) with the given fuel.
    pub fn compile(variants: &[Template], fuel: u64) -> Self {
        let mut env = new_env(fuel);
        let mut compiled = Vec::with_capacity(variants.len());
        for (i, t) in variants.iter().enumerate() {
            for (part, source) in parts_of(t) {
                if let Err(error) = env.add_template_owned(format!("{i}/{part}"), source.to_string()) {
                    tracing::warn!(template = %t.id, locale = %t.locale, part, %error, "stored template part does not compile");
                }
            }
            compiled.push(Variant {
                locale: t.locale.clone(),
                default: t.default,
                push: t.push.is_some(),
                sms: t.sms.is_some(),
                email: t.email.is_some(),
            });
        }
        Self { env, variants: compiled }
    }

    /// The variant used for `wanted`, as its index.
    fn select(&self, wanted: Option<&str>) -> Option<usize> {
        select_index(self.variants.iter().map(|v| (v.locale.as_str(), v.default)), wanted)
    }

    /// Renders one part of variant `i`.
    fn part(
        &self,
        i: usize,
        part: &'static str,
        ctx: &Value,
        data: &serde_json::Value,
        cap: usize,
    ) -> Result<String, RenderFailure> {
        let tmpl = self
            .env
            .get_template(&format!("{i}/{part}"))
            .map_err(|_| RenderFailure::Template(format!("{part} does not compile")))?;
        let mut out = CappedWriter { buf: Vec::new(), cap };
        match tmpl.render_captured_to(ctx.clone(), &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|_| RenderFailure::Template(format!("{part}: not UTF-8"))),
            Err(e) => Err(match e.kind() {
                ErrorKind::OutOfFuel => RenderFailure::FuelExhausted,
                ErrorKind::WriteFailure => RenderFailure::TooLarge,
                ErrorKind::UndefinedError => RenderFailure::MissingVariable(self.missing_variable(&tmpl, data)),
                _ => RenderFailure::Template(format!("{part}: {e}")),
            }),
        }
    }

    /// The first (alphabetically) variable the template reads that `data` lacks.
    fn missing_variable(&self, tmpl: &minijinja::Template<'_, '_>, data: &serde_json::Value) -> Option<String> {
        let mut names: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
        names.sort();
        names
            .into_iter()
            .find(|path| {
                let mut segments = path.split('.');
                let Some(first) = segments.next() else { return false };
                if self.env.globals().any(|(g, _)| g == first) {
                    return false;
                }
                let mut at = data;
                for segment in std::iter::once(first).chain(segments) {
                    match at {
                        serde_json::Value::Object(map) => match map.get(segment) {
                            Some(next) => at = next,
                            None => return true,
                        },
                        _ => return false,
                    }
                }
                false
            })
            .map(|p| p.chars().take(64).collect())
    }

    /// Renders the channel from variant `i`, checking the channel's limits.
    fn render(
        &self,
        i: usize,
        channel: ChannelKind,
        ctx: &Value,
        data: &serde_json::Value,
        limits: &RenderLimits,
    ) -> Result<RenderedContent, RenderFailure> {
        let v = &self.variants[i];
        let part = |name| self.part(i, name, ctx, data, limits.max_output_bytes);
        match channel {
            ChannelKind::Push => {
                if !v.push {
                    return Err(RenderFailure::NoPart);
                }
                let (title, body) = (part(PUSH_TITLE)?, part(PUSH_BODY)?);
                let payload = serde_json::json!({ "title": title, "body": body }).to_string();
                if payload.len() > limits.max_push_payload_bytes {
                    return Err(RenderFailure::TooLarge);
                }
                Ok(RenderedContent::Push { title, body })
            }
            ChannelKind::Sms => {
                if !v.sms {
                    return Err(RenderFailure::NoPart);
                }
                let text = part(SMS_TEXT)?;
                if text.chars().count() > limits.max_sms_chars {
                    return Err(RenderFailure::TooLarge);
                }
                Ok(RenderedContent::Sms { text })
            }
            ChannelKind::Email => {
                if !v.email {
                    return Err(RenderFailure::NoPart);
                }
                let subject = part(EMAIL_SUBJECT)?.trim().to_string();
                if subject.contains(['\r', '\n']) {
                    return Err(RenderFailure::MultilineSubject);
                }
                if subject.len() > limits.max_subject_bytes {
                    return Err(RenderFailure::TooLarge);
                }
                Ok(RenderedContent::Email { subject, text: part(EMAIL_TEXT)?, html: part(EMAIL_HTML)? })
            }
        }
    }
}

/// Compiled templates by id, bounded and with a TTL; shared with the API,
/// which invalidates an id after storing a variant of it.
pub type TemplateCache = ExpiringCache<Arc<CompiledTemplate>>;

/// Renders every item's channels.
pub struct RenderStage {
    templates: Arc<dyn TemplateStore>,
    limits: RenderLimits,
    cache: Arc<TemplateCache>,
    clock: Arc<dyn Clock>,
}

impl RenderStage {
    /// A stage with its own cache (sized by `limits`) on the system clock.
    pub fn new(templates: Arc<dyn TemplateStore>, limits: RenderLimits) -> Self {
        let cache = Arc::new(TemplateCache::new(limits.cache_capacity, limits.cache_ttl, Arc::new(SystemClock)));
        Self::with_cache(templates, limits, cache)
    }

    /// A stage using a given cache (shared with the API, or on a test clock);
    /// events are stamped with the cache's clock. Entries are compiled with the
    /// fuel of the stage that loaded them.
    pub fn with_cache(templates: Arc<dyn TemplateStore>, limits: RenderLimits, cache: Arc<TemplateCache>) -> Self {
        let clock = cache.clock();
        Self { templates, limits, cache, clock }
    }

    /// The cache, for the API to invalidate after a template write.
    pub fn cache(&self) -> Arc<TemplateCache> {
        self.cache.clone()
    }

    /// The limits it renders with.
    pub fn limits(&self) -> &RenderLimits {
        &self.limits
    }

    /// Compiled templates for every distinct id of the batch (`None`: no such template).
    async fn load(&self, batch: &[WorkItem]) -> Result<HashMap<String, Option<Arc<CompiledTemplate>>>, StageError> {
        let mut loaded = HashMap::new();
        for item in batch {
            let id = &item.envelope.request.template;
            if loaded.contains_key(id) {
                continue;
            }
            let compiled = match self.cache.get(id) {
                Some(c) => Some(c),
                None => {
                    let variants = self.templates.get_template(id).await.map_err(|e| store_error("render", e))?;
                    if variants.is_empty() {
                        None
                    } else {
                        let c = Arc::new(CompiledTemplate::compile(&variants, self.limits.fuel));
                        self.cache.insert(id.clone(), c.clone());
                        Some(c)
                    }
                }
            };
            loaded.insert(id.clone(), compiled);
        }
        Ok(loaded)
    }
}

#[async_trait]
impl Stage for RenderStage {
    fn name(&self) -> &'static str {
        "render"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let loaded = self.load(&batch).await?;
        let now = self.clock.now_ms();
        out.items.reserve(batch.len());
        for mut item in batch {
            let channels: Vec<ChannelKind> = ChannelKind::ALL
                .into_iter()
                .filter(|c| item.targets.iter().chain(&item.fallback_targets).any(|t| t.channel() == *c))
                .collect();
            let e = &item.envelope;
            let failed = |channel, failure: &RenderFailure| {
                DeliveryEvent::new(
                    &e.id,
                    &e.client_id,
                    &e.request.user_id,
                    EventKind::RenderFailed,
                    Some(channel),
                    Some(failure.reason()),
                    now,
                )
            };
            let compiled = loaded.get(&e.request.template).cloned().flatten();
            let chosen = compiled.as_ref().and_then(|c| {
                let wanted = e.request.locale.as_deref().or(item.user.as_ref().and_then(|u| u.locale.as_deref()));
                c.select(wanted).map(|i| (c, i))
            });
            let Some((compiled, i)) = chosen else {
                out.events.extend(channels.iter().map(|c| failed(*c, &RenderFailure::UnknownTemplate)));
                continue;
            };
            let ctx = Value::from(Serde(&e.request.data));
            let mut rendered = Vec::with_capacity(channels.len());
            let mut lost = Vec::new();
            for channel in channels {
                match compiled.render(i, channel, &ctx, &e.request.data, &self.limits) {
                    Ok(content) => rendered.push((channel, content)),
                    Err(failure) => {
                        out.events.push(failed(channel, &failure));
                        lost.push(channel);
                    }
                }
            }
            item.targets.retain(|t| !lost.contains(&t.channel()));
            item.fallback_targets.retain(|t| !lost.contains(&t.channel()));
            if item.targets.is_empty() {
                continue;
            }
            item.locale = Some(compiled.variants[i].locale.clone());
            item.rendered = rendered;
            out.items.push(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Templates};
    use herald_schemas::stage::ManualClock;
    use herald_schemas::template::{EmailPart, PushPart, SmsPart};
    use herald_schemas::{Platform, Target};
    use serde_json::json;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    fn sms_template(id: &str, text: &str) -> Template {
        Template {
            id: id.into(),
            locale: "en".into(),
            default: true,
            push: None,
            sms: Some(SmsPart { text: text.into() }),
            email: None,
        }
    }

    struct Setup {
        templates: Arc<Templates>,
        clock: ManualClock,
        stage: RenderStage,
    }

    fn setup_with(templates: Vec<Template>, limits: RenderLimits) -> Setup {
        let clock = ManualClock::new(7_000);
        let templates = Arc::new(Templates::with(templates));
        let cache = Arc::new(TemplateCache::new(16, Duration::from_secs(30), Arc::new(clock.clone())));
        let stage = RenderStage::with_cache(templates.clone(), limits, cache);
        Setup { templates, clock, stage }
    }

    fn setup(templates: Vec<Template>) -> Setup {
        setup_with(templates, RenderLimits::default())
    }

    /// An item after throttle: the user's targets on `channels`, with `data`.
    fn ready(id: &str, template: &str, channels: &[ChannelKind], data: serde_json::Value) -> WorkItem {
        let mut r = fakes::request("u1", template, channels);
        r.data = data;
        let mut item = fakes::item(id, r);
        let user = fakes::full_user("u1");
        for c in channels {
            match c {
                ChannelKind::Push => item.targets.push(Target::Device {
                    device_id: "d1".into(),
                    platform: Platform::Ios,
                    token: "t1".into(),
                }),
                ChannelKind::Sms => item.targets.push(Target::Phone { number: user.phone.clone().unwrap() }),
                ChannelKind::Email => item.targets.push(Target::Email { address: user.email.clone().unwrap() }),
            }
        }
        item.user = Some(user);
        item
    }

    async fn run(stage: &mut RenderStage, batch: Vec<WorkItem>) -> StageOutput {
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        out
    }

    fn reasons(out: &StageOutput) -> Vec<(Option<ChannelKind>, String)> {
        out.events.iter().map(|e| (e.channel, e.reason.clone().unwrap_or_default())).collect()
    }

    #[tokio::test]
    async fn renders_every_channel_and_sets_locale() {
        let mut s = setup(vec![fakes::template("welcome", "en", true)]);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![ready("n1", "welcome", &all, json!({"name": "Kim"}))]).await;
        assert!(out.events.is_empty(), "{:?}", out.events);
        let item = &out.items[0];
        assert_eq!(item.locale.as_deref(), Some("en"));
        assert_eq!(
            item.rendered,
            vec![
                (ChannelKind::Push, RenderedContent::Push { title: "[en] Hi".into(), body: "[en] Kim".into() }),
                (ChannelKind::Sms, RenderedContent::Sms { text: "[en] Kim".into() }),
                (
                    ChannelKind::Email,
                    RenderedContent::Email {
                        subject: "[en] Hello Kim".into(),
                        text: "[en] Kim".into(),
                        html: "<p>[en] Kim</p>".into()
                    }
                ),
            ]
        );
        assert_eq!(s.stage.name(), "render");
    }

    #[tokio::test]
    async fn a_missing_variable_fails_that_channel_only_and_names_the_variable() {
        let mut t = fakes::template("welcome", "en", true);
        t.sms = Some(SmsPart { text: "Your code is {{ code }}, {{ name }}".into() });
        t.push = Some(PushPart { title: "Hi".into(), body: "{{ order.id }}".into() });
        let mut s = setup(vec![t]);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![ready("n1", "welcome", &all, json!({"name": "Kim", "order": {}}))]).await;
        assert_eq!(
            reasons(&out),
            [
                (Some(ChannelKind::Push), "missing_variable:order.id".to_string()),
                (Some(ChannelKind::Sms), "missing_variable:code".to_string())
            ]
        );
        assert_eq!(out.events[0].kind, EventKind::RenderFailed);
        let item = &out.items[0];
        assert!(item.targets.iter().all(|t| t.channel() == ChannelKind::Email));
        assert_eq!(item.rendered.len(), 1, "no half-rendered message is kept");
    }

    #[tokio::test]
    async fn an_item_stops_when_every_channel_fails() {
        let mut s = setup(vec![sms_template("t", "{{ nope }}")]);
        let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))]).await;
        assert!(out.items.is_empty());
        assert_eq!(reasons(&out), [(Some(ChannelKind::Sms), "missing_variable:nope".to_string())]);
    }

    #[tokio::test]
    async fn fuel_exhaustion_ends_a_hostile_template_quickly() {
        let hostile = [
            "{% for i in range(100000) %}{{ i }}{% endfor %}",
            "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        ];
        for source in hostile {
            let mut s = setup(vec![sms_template("t", source)]);
            let started = Instant::now();
            let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))]).await;
            assert!(started.elapsed() < Duration::from_secs(2), "{source} took {:?}", started.elapsed());
            assert!(out.items.is_empty());
            assert_eq!(reasons(&out), [(Some(ChannelKind::Sms), "fuel_exhausted".to_string())], "{source}");
        }
        // Past minijinja's own range limit the render fails before it starts.
        let mut s = setup(vec![sms_template("t", "{% for i in range(100000000) %}x{% endfor %}")]);
        let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))]).await;
        assert_eq!(out.events[0].kind, EventKind::RenderFailed);
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_per_channel() {
        let mut t = fakes::template("welcome", "en", true);
        t.email.as_mut().unwrap().subject = "Hello".into();
        let mut s = setup(vec![t]);
        let big = "가".repeat(2_000);
        let all = [ChannelKind::Push, ChannelKind::Sms, ChannelKind::Email];
        let out = run(&mut s.stage, vec![ready("n1", "welcome", &all, json!({ "name": big }))]).await;
        assert_eq!(
            reasons(&out),
            [(Some(ChannelKind::Push), "too_large".to_string()), (Some(ChannelKind::Sms), "too_large".to_string())]
        );
        assert_eq!(out.items[0].rendered[0].0, ChannelKind::Email, "email has no such limit");

        let limits = RenderLimits { max_output_bytes: 1_000, fuel: 10_000_000, ..Default::default() };
        let mut s = setup_with(vec![sms_template("t", "{% for i in range(5000) %}xx{% endfor %}")], limits);
        let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))]).await;
        assert_eq!(reasons(&out), [(Some(ChannelKind::Sms), "too_large".to_string())], "output cap");
    }

    #[tokio::test]
    async fn a_subject_must_stay_on_one_line() {
        let mut s = setup(vec![fakes::template("welcome", "en", true)]);
        let data = json!({ "name": "Kim\r\nBcc: everyone@example.com" });
        let out = run(&mut s.stage, vec![ready("n1", "welcome", &[ChannelKind::Email], data)]).await;
        assert_eq!(reasons(&out), [(Some(ChannelKind::Email), "multiline_subject".to_string())]);
    }

    #[tokio::test]
    async fn a_variant_without_the_part_is_no_part() {
        let mut s = setup(vec![sms_template("t", "hi")]);
        let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Push, ChannelKind::Sms], json!({}))]).await;
        assert_eq!(reasons(&out), [(Some(ChannelKind::Push), "no_part".to_string())]);
        assert_eq!(out.items[0].rendered, vec![(ChannelKind::Sms, RenderedContent::Sms { text: "hi".into() })]);
    }

    #[tokio::test]
    async fn an_unknown_template_fails_each_channel() {
        let mut s = setup(vec![]);
        let out =
            run(&mut s.stage, vec![ready("n1", "gone", &[ChannelKind::Sms, ChannelKind::Email], json!({}))]).await;
        assert!(out.items.is_empty());
        assert_eq!(
            reasons(&out),
            [
                (Some(ChannelKind::Sms), "unknown_template".to_string()),
                (Some(ChannelKind::Email), "unknown_template".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_stored_part_that_does_not_compile_is_a_template_error() {
        let mut s = setup(vec![sms_template("t", "{% if %}")]);
        let out = run(&mut s.stage, vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))]).await;
        assert_eq!(reasons(&out), [(Some(ChannelKind::Sms), "template_error".to_string())]);
    }

    #[tokio::test]
    async fn locale_fallback_exact_then_language_then_default_then_first() {
        let variants = vec![
            fakes::template("t", "en", false),
            fakes::template("t", "ko", false),
            fakes::template("t", "ko-KR", false),
            fakes::template("t", "ja", true),
        ];
        assert_eq!(select_variant(&variants, Some("ko-KR")), Some(2));
        assert_eq!(select_variant(&variants, Some("KO-kr")), Some(2));
        assert_eq!(select_variant(&variants, Some("ko-KP")), Some(1));
        assert_eq!(select_variant(&variants, Some("ko-Kore-KP")), Some(1));
        assert_eq!(select_variant(&variants, Some("fr")), Some(3), "the default");
        assert_eq!(select_variant(&variants, None), Some(3));
        assert_eq!(select_variant(&variants[..3], Some("fr")), Some(0), "no default: the first stored");
        assert_eq!(select_variant(&[], Some("en")), None);

        // Through the stage: the item's locale overrides the user's.
        let mut s = setup(variants);
        let mut item = ready("n1", "t", &[ChannelKind::Sms], json!({"name": "Kim"}));
        item.user.as_mut().unwrap().locale = Some("ko-KP".into());
        let mut overridden = item.clone();
        overridden.envelope.id.0 = "n2".into();
        overridden.envelope.request.locale = Some("en-GB".into());
        let out = run(&mut s.stage, vec![item, overridden]).await;
        let got: Vec<_> = out.items.iter().map(|i| (i.locale.clone().unwrap(), i.rendered[0].1.clone())).collect();
        assert_eq!(
            got,
            [
                ("ko".to_string(), RenderedContent::Sms { text: "[ko] Kim".into() }),
                ("en".to_string(), RenderedContent::Sms { text: "[en] Kim".into() })
            ]
        );
    }

    #[tokio::test]
    async fn compiled_templates_are_cached_until_invalidated_or_expired() {
        let mut s = setup(vec![sms_template("t", "v1")]);
        let batch =
            || vec![ready("n1", "t", &[ChannelKind::Sms], json!({})), ready("n2", "t", &[ChannelKind::Sms], json!({}))];
        let text = |out: &StageOutput| out.items[0].rendered[0].1.clone();
        let out = run(&mut s.stage, batch()).await;
        assert_eq!(text(&out), RenderedContent::Sms { text: "v1".into() });
        assert_eq!(s.templates.calls.load(Ordering::SeqCst), 1, "one read per distinct id");
        s.templates.put_template(&sms_template("t", "v2")).await.unwrap();
        assert_eq!(text(&run(&mut s.stage, batch()).await), RenderedContent::Sms { text: "v1".into() });
        s.stage.cache().invalidate("t");
        assert_eq!(text(&run(&mut s.stage, batch()).await), RenderedContent::Sms { text: "v2".into() });
        s.templates.put_template(&sms_template("t", "v3")).await.unwrap();
        s.clock.advance_ms(30_000);
        assert_eq!(text(&run(&mut s.stage, batch()).await), RenderedContent::Sms { text: "v3".into() });
        assert_eq!(s.templates.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_store_failure_fails_the_batch() {
        let mut s = setup(vec![sms_template("t", "hi")]);
        s.templates.fail.store(true, Ordering::SeqCst);
        let mut out = StageOutput::default();
        let err = s.stage.process(vec![ready("n1", "t", &[ChannelKind::Sms], json!({}))], &mut out).await;
        assert!(err.unwrap_err().is_retryable());
        assert!(out.items.is_empty() && out.events.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let clock = ManualClock::new(0);
        let cache = TemplateCache::new(2, Duration::from_secs(30), Arc::new(clock.clone()));
        let c = Arc::new(CompiledTemplate::compile(&[sms_template("t", "x")], 100));
        for id in ["a", "b", "c"] {
            cache.insert(id.into(), c.clone());
            clock.advance_ms(1);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none() && cache.get("c").is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn check_template_names_the_failing_part() {
        check_template(&fakes::template("welcome", "ko-KR", true)).unwrap();
        let mut t = fakes::template("welcome", "en", true);
        t.email = Some(EmailPart { subject: "ok".into(), text: "ok".into(), html: "<p>{{ name </p>".into() });
        let err = check_template(&t).unwrap_err();
        assert_eq!(err.part(), Some(EMAIL_HTML));
        assert!(err.to_string().starts_with("email.html does not compile"), "{err}");
        let mut t = fakes::template("welcome", "en", true);
        t.push = Some(PushPart { title: "{% for %}".into(), body: "ok".into() });
        assert_eq!(check_template(&t).unwrap_err().part(), Some(PUSH_TITLE));
        let mut t = sms_template("t", "x");
        t.sms = None;
        assert_eq!(check_template(&t), Err(TemplateError::NoParts));
        t.sms = Some(SmsPart { text: "x".repeat(MAX_PART_SOURCE_BYTES + 1) });
        assert_eq!(check_template(&t), Err(TemplateError::TooLarge { part: SMS_TEXT, max: MAX_PART_SOURCE_BYTES }));
        assert_eq!(
            check_template(&Template { locale: "en_US".into(), ..sms_template("t", "x") }),
            Err(TemplateError::InvalidLocale)
        );
        assert_eq!(
            check_template(&Template { id: String::new(), ..sms_template("t", "x") }),
            Err(TemplateError::InvalidId)
        );
    }

    #[test]
    fn limits_serde_form() {
        let l: RenderLimits = serde_json::from_str(r#"{"fuel": 10, "cache_ttl": "2s"}"#).unwrap();
        assert_eq!((l.fuel, l.cache_ttl, l.max_sms_chars), (10, Duration::from_secs(2), 1600));
        assert_eq!(serde_json::to_value(RenderLimits::default()).unwrap()["cache_ttl"], "30s");
        assert!(serde_json::from_str::<RenderLimits>(r#"{"fuell": 1}"#).is_err());
    }
}
