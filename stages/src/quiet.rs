//! Quiet hours: a notification other than `transactional` that falls inside the recipient's quiet
//! window waits for the window's end in the schedule index; it is deferred, never dropped.
//!
//! Contract, per item:
//! - The window is the user's own (`preferences.quiet_hours`), else the default of the item's
//!   category (`[quiet_hours]`); none: the item passes. `transactional` always passes, and so does
//!   an item the scheduler released at the end of its window (`quiet_released`).
//! - Times are wall-clock times in the user's `timezone` (IANA; the configured default when the
//!   user has none), with the time zone database's rules, so a window is correct across a DST
//!   change: its end is the first instant the local clock shows the end time on the day the
//!   window closes; an end time skipped by a spring-forward gap is read with the offset before the
//!   gap (02:30 becomes 03:30, as calendars do, RFC 5545), and an end time repeated by a fall-back
//!   is its first occurrence still ahead.
//! - A deferred item becomes a hold ([`HoldReason::QuietHours`]) due at the window's end, in the
//!   user's partition, and a `deferred` event (`reason: quiet_hours`). The hold is written once
//!   per notification: a replay finds it and only repeats the (same) event.
//!
//! The store is called once per batch with deferrals.

use crate::{short_answer, store_error};
use async_trait::async_trait;
use herald_schemas::codec;
use herald_schemas::contacts::QuietWindow;
use herald_schemas::store::{Hold, HoldReason, ScheduleStore};
use herald_schemas::topic::partition_for_key;
use herald_schemas::{Clock, DeliveryEvent, EventKind, Stage, StageError, StageOutput, TRANSACTIONAL, WorkItem};
use jiff::Timestamp;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A category's default quiet window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryQuietHours {
    /// The category (`[a-z0-9_-]{1,64}`); `transactional` is refused.
    pub category: String,
    /// Local start, `"HH:MM"` or `"HH:MM:SS"`.
    pub start: String,
    /// Local end; before `start`, the window spans midnight.
    pub end: String,
}

/// Quiet hours. In TOML:
///
/// ```toml
/// [quiet_hours]
/// default_timezone = "UTC"
/// [[quiet_hours.categories]]
/// category = "marketing"
/// start = "21:00"
/// end = "08:00"
/// ```
///
/// Absent: no category has a default window, and only users' own windows apply (a default that
/// holds back marketing everywhere is the operator's choice, not a surprise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHoursConfig {
    /// The time zone of users who have none (IANA name).
    pub default_timezone: String,
    /// Default windows per category.
    pub categories: Vec<CategoryQuietHours>,
}

impl Default for QuietHoursConfig {
    fn default() -> Self {
        Self { default_timezone: "UTC".into(), categories: Vec::new() }
    }
}

/// A mistake in [`QuietHoursConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursConfigError {
    #[error("quiet_hours.default_timezone {0:?} is not an IANA time zone name")]
    BadTimezone(String),
    #[error("quiet hours category {0:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-', and not transactional")]
    BadCategory(String),
    #[error("quiet hours for {0:?} are given twice")]
    Duplicate(String),
    #[error("quiet hours for {category:?}: {message}")]
    BadWindow { category: String, message: String },
}

impl QuietHoursConfig {
    /// Checks the section (for `herald config check`).
    pub fn validate(&self) -> Result<(), QuietHoursConfigError> {
        self.compile().map(|_| ())
    }

    /// The section as the stage applies it.
    pub fn compile(&self) -> Result<QuietHours, QuietHoursConfigError> {
        if !crate::validate::is_timezone(&self.default_timezone) {
            return Err(QuietHoursConfigError::BadTimezone(self.default_timezone.clone()));
        }
        let default_tz = TimeZone::get(&self.default_timezone)
            .map_err(|_| QuietHoursConfigError::BadTimezone(self.default_timezone.clone()))?;
        let mut categories = HashMap::new();
        for c in &self.categories {
            if !crate::validate::is_category(&c.category) || c.category == TRANSACTIONAL {
                return Err(QuietHoursConfigError::BadCategory(c.category.clone()));
            }
            let window = QuietWindow { start: c.start.clone(), end: c.end.clone() };
            let window = parse_window(&window)
                .map_err(|message| QuietHoursConfigError::BadWindow { category: c.category.clone(), message })?;
            if categories.insert(c.category.clone(), window).is_some() {
                return Err(QuietHoursConfigError::Duplicate(c.category.clone()));
            }
        }
        Ok(QuietHours { default_tz, categories })
    }
}

/// [`QuietHoursConfig`], checked and parsed.
#[derive(Debug, Clone)]
pub struct QuietHours {
    default_tz: TimeZone,
    categories: HashMap<String, (Time, Time)>,
}

/// A window's start and end as civil times, or what is wrong with them.
pub fn parse_window(window: &QuietWindow) -> Result<(Time, Time), String> {
    let time = |field: &str, s: &str| {
        let ok = s.len() >= 5 && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_digit() || b == b':');
        ok.then(|| s.parse::<Time>().ok())
            .flatten()
            .ok_or_else(|| format!("`{field}` must be a local time such as \"22:00\" or \"07:30:00\""))
    };
    Ok((time("start", &window.start)?, time("end", &window.end)?))
}

/// When the window around `now` ends, if `now` is inside it (see the module doc for DST).
pub fn window_end(now: Timestamp, tz: &TimeZone, (start, end): (Time, Time)) -> Option<Timestamp> {
    if start == end {
        return None;
    }
    let local = now.to_zoned(tz.clone());
    let (date, time) = (local.date(), local.time());
    let end_date = if start < end {
        (start <= time && time < end).then_some(date)
    } else if time >= start {
        date.tomorrow().ok()
    } else {
        (time < end).then_some(date)
    }?;
    let at = tz.to_ambiguous_zoned(end_date.to_datetime(end));
    let first = at.clone().compatible().ok()?.timestamp();
    if first > now {
        return Some(first);
    }
    // Inside the second pass of a repeated hour: the end's first occurrence is behind.
    at.later().ok().map(|z| z.timestamp()).filter(|t| *t > now)
}

/// Defers what falls inside quiet hours.
pub struct QuietHoursStage {
    store: Arc<dyn ScheduleStore>,
    config: QuietHours,
    /// Partitions of `herald-requests`, to put each hold in its user's partition.
    partitions: u32,
    clock: Arc<dyn Clock>,
    zones: HashMap<String, TimeZone>,
}

impl QuietHoursStage {
    /// A stage over `store` applying `config`.
    pub fn new(store: Arc<dyn ScheduleStore>, config: QuietHours, partitions: u32, clock: Arc<dyn Clock>) -> Self {
        Self { store, config, partitions, clock, zones: HashMap::new() }
    }

    /// The window and time zone that apply to `item`, if any.
    fn window_of(&mut self, item: &WorkItem) -> Option<((Time, Time), TimeZone)> {
        let request = &item.envelope.request;
        if request.category == TRANSACTIONAL || item.envelope.quiet_released {
            return None;
        }
        let user = item.user.as_ref();
        let own = user.and_then(|u| u.preferences.quiet_hours.as_ref()).and_then(|w| parse_window(w).ok());
        let window = own.or_else(|| self.config.categories.get(&request.category).copied())?;
        let tz = match user.and_then(|u| u.timezone.as_deref()) {
            Some(name) => match self.zones.get(name) {
                Some(tz) => tz.clone(),
                None => {
                    let tz = TimeZone::get(name).unwrap_or_else(|_| self.config.default_tz.clone());
                    self.zones.insert(name.to_string(), tz.clone());
                    tz
                }
            },
            None => self.config.default_tz.clone(),
        };
        Some((window, tz))
    }
}

#[async_trait]
impl Stage for QuietHoursStage {
    fn name(&self) -> &'static str {
        "quiet_hours"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        let now_ms = self.clock.now_ms();
        let now = Timestamp::from_millisecond(now_ms as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut holds = Vec::new();
        for item in batch {
            let end = self.window_of(&item).and_then(|(window, tz)| window_end(now, &tz, window));
            let Some(end) = end else {
                out.items.push(item);
                continue;
            };
            let mut envelope = item.envelope;
            envelope.quiet_released = true;
            let e = &envelope;
            out.events.push(DeliveryEvent::new(
                &e.id,
                &e.client_id,
                &e.request.user_id,
                EventKind::Deferred,
                None,
                Some("quiet_hours".into()),
                now_ms,
            ));
            holds.push(Hold {
                id: e.id.clone(),
                reason: HoldReason::QuietHours,
                partition: partition_for_key(e.request.user_id.as_bytes(), self.partitions),
                due_at_ms: u64::try_from(end.as_millisecond()).unwrap_or(now_ms),
                client_id: e.client_id.clone(),
                envelope: codec::encode(&envelope),
            });
        }
        if !holds.is_empty() {
            // A hold found already (a replay) stays as it is; its event repeats with the same id.
            let states = self.store.hold(&holds).await.map_err(|e| store_error("quiet_hours", e))?;
            if states.len() != holds.len() {
                return Err(short_answer("quiet_hours", "schedule", holds.len(), states.len()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(start: &str, end: &str) -> (Time, Time) {
        parse_window(&QuietWindow { start: start.into(), end: end.into() }).unwrap()
    }

    fn end_of(now: &str, tz: &str, w: (Time, Time)) -> Option<String> {
        window_end(at(now), &TimeZone::get(tz).unwrap(), w).map(|t| t.to_string())
    }

    #[test]
    fn windows_parse_local_times_only() {
        assert!(parse_window(&QuietWindow { start: "22:00".into(), end: "07:30:15".into() }).is_ok());
        for bad in ["7:00", "25:00", "22h", "22:00:00.5", ""] {
            let err = parse_window(&QuietWindow { start: bad.into(), end: "07:00".into() }).unwrap_err();
            assert!(err.contains("`start` must be a local time"), "{bad}: {err}");
        }
    }

    #[test]
    fn inside_an_overnight_window_the_end_is_the_next_morning_and_outside_there_is_none() {
        let w = window("22:00", "07:00");
        // Seoul has no DST: 23:30 local = 14:30Z; the window ends at 07:00 local = 22:00Z.
        assert_eq!(end_of("2026-06-10T14:30:00Z", "Asia/Seoul", w).as_deref(), Some("2026-06-10T22:00:00Z"));
        // 06:59 local, the same morning.
        assert_eq!(end_of("2026-06-10T21:59:00Z", "Asia/Seoul", w).as_deref(), Some("2026-06-10T22:00:00Z"));
        assert_eq!(end_of("2026-06-10T22:00:00Z", "Asia/Seoul", w), None, "the end itself is outside");
        assert_eq!(end_of("2026-06-10T03:00:00Z", "Asia/Seoul", w), None, "noon");
        // A daytime window, and an empty one.
        assert_eq!(
            end_of("2026-06-10T03:00:00Z", "Asia/Seoul", window("11:00", "13:00")).as_deref(),
            Some("2026-06-10T04:00:00Z")
        );
        assert_eq!(end_of("2026-06-10T03:00:00Z", "Asia/Seoul", window("12:00", "12:00")), None);
    }

    #[test]
    fn spring_forward_in_new_york_and_berlin_moves_the_end_by_the_new_offset() {
        let w = window("22:00", "08:00");
        // New York, night of 7→8 March 2026 (EST −5 → EDT −4): 08:00 EDT is 12:00Z, not 13:00Z.
        assert_eq!(end_of("2026-03-08T04:00:00Z", "America/New_York", w).as_deref(), Some("2026-03-08T12:00:00Z"));
        // Berlin, night of 28→29 March 2026 (CET +1 → CEST +2): 08:00 CEST is 06:00Z.
        assert_eq!(end_of("2026-03-28T22:00:00Z", "Europe/Berlin", w).as_deref(), Some("2026-03-29T06:00:00Z"));
        // A window ending inside the gap (02:30 does not exist that night): 02:30 read with the
        // offset before the jump, which the clock shows as 03:30.
        let gap = window("22:00", "02:30");
        assert_eq!(end_of("2026-03-08T05:00:00Z", "America/New_York", gap).as_deref(), Some("2026-03-08T07:30:00Z"));
        assert_eq!(end_of("2026-03-28T23:00:00Z", "Europe/Berlin", gap).as_deref(), Some("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn fall_back_in_new_york_and_berlin_ends_at_the_first_occurrence_still_ahead() {
        let w = window("22:00", "08:00");
        // New York, night of 31 Oct → 1 Nov 2026 (EDT −4 → EST −5): 08:00 EST is 13:00Z.
        assert_eq!(end_of("2026-11-01T03:00:00Z", "America/New_York", w).as_deref(), Some("2026-11-01T13:00:00Z"));
        // Berlin, night of 24→25 October 2026 (CEST +2 → CET +1): 08:00 CET is 07:00Z.
        assert_eq!(end_of("2026-10-24T21:00:00Z", "Europe/Berlin", w).as_deref(), Some("2026-10-25T07:00:00Z"));
        // A window ending at 01:30, which happens twice that night in New York.
        let twice = window("22:00", "01:30");
        // 01:10 EDT (05:10Z): ends at the first 01:30, EDT (05:30Z).
        assert_eq!(end_of("2026-11-01T05:10:00Z", "America/New_York", twice).as_deref(), Some("2026-11-01T05:30:00Z"));
        // 01:10 EST, the second pass (06:10Z): the first 01:30 is behind; ends at 01:30 EST (06:30Z).
        assert_eq!(end_of("2026-11-01T06:10:00Z", "America/New_York", twice).as_deref(), Some("2026-11-01T06:30:00Z"));
        // Berlin's repeated hour is 02:00–03:00: 02:15 CET (the second pass, 01:15Z) ends at 02:30 CET.
        let berlin = window("22:00", "02:30");
        assert_eq!(end_of("2026-10-25T01:15:00Z", "Europe/Berlin", berlin).as_deref(), Some("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn the_section_is_checked() {
        assert!(QuietHoursConfig::default().validate().is_ok());
        let bad = |f: &dyn Fn(&mut QuietHoursConfig)| {
            let mut c = QuietHoursConfig {
                default_timezone: "UTC".into(),
                categories: vec![CategoryQuietHours {
                    category: "marketing".into(),
                    start: "21:00".into(),
                    end: "08:00".into(),
                }],
            };
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(&|c| c.default_timezone = "Mars/Olympus".into()).contains("default_timezone"));
        assert!(bad(&|c| c.categories[0].category = TRANSACTIONAL.into()).contains("not transactional"));
        assert!(bad(&|c| c.categories[0].end = "8am".into()).contains("`end` must be a local time"));
        assert!(bad(&|c| c.categories.push(c.categories[0].clone())).contains("twice"));
    }

    fn user_item(id: &str, tz: Option<&str>, category: &str) -> WorkItem {
        let mut request = crate::fakes::request("u1", "promo", &[herald_schemas::ChannelKind::Push]);
        request.category = category.into();
        let mut item = crate::fakes::item(id, request);
        item.user = Some(herald_schemas::User { id: "u1".into(), timezone: tz.map(Into::into), ..Default::default() });
        item
    }

    #[tokio::test]
    async fn the_stage_defers_into_the_schedule_across_dst_in_two_zones_and_lets_the_rest_pass() {
        use herald_schemas::stage::ManualClock;
        let store = Arc::new(crate::fakes::Schedule::default());
        // 2026-03-08T04:00Z: 23:00 EST in New York on the night the clocks spring forward; 05:00 CET
        // in Berlin (no change that night; Berlin's is three weeks later).
        let clock = ManualClock::new(at("2026-03-08T04:00:00Z").as_millisecond() as u64);
        let config = QuietHoursConfig {
            default_timezone: "UTC".into(),
            categories: vec![CategoryQuietHours {
                category: "marketing".into(),
                start: "22:00".into(),
                end: "08:00".into(),
            }],
        };
        let mut stage = QuietHoursStage::new(store.clone(), config.compile().unwrap(), 8, Arc::new(clock.clone()));
        let mut berlin_own = user_item("berlin-own", Some("Europe/Berlin"), "general");
        if let Some(u) = berlin_own.user.as_mut() {
            u.preferences.quiet_hours = Some(QuietWindow { start: "04:00".into(), end: "06:30".into() });
        }
        let mut released = user_item("released", Some("America/New_York"), "marketing");
        released.envelope.quiet_released = true;
        let batch = vec![
            user_item("ny", Some("America/New_York"), "marketing"),
            user_item("berlin", Some("Europe/Berlin"), "marketing"),
            berlin_own,
            user_item("otp", Some("America/New_York"), TRANSACTIONAL),
            user_item("general", Some("America/New_York"), "general"),
            released,
            user_item("no-zone", None, "marketing"),
        ];
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        let passed: Vec<_> = out.items.iter().map(|i| i.envelope.id.0.as_str()).collect();
        assert_eq!(passed, ["otp", "general", "released"]);
        let holds = store.holds.lock().unwrap().clone();
        let due: Vec<(&str, String)> = holds
            .iter()
            .map(|h| (h.id.0.as_str(), Timestamp::from_millisecond(h.due_at_ms as i64).unwrap().to_string()))
            .collect();
        assert_eq!(
            due,
            [
                // 08:00 EDT, the new offset.
                ("ny", "2026-03-08T12:00:00Z".to_string()),
                // 08:00 CET.
                ("berlin", "2026-03-08T07:00:00Z".to_string()),
                // The user's own window (04:00–06:30 CET) replaces marketing's.
                ("berlin-own", "2026-03-08T05:30:00Z".to_string()),
                // No time zone: the default, UTC; 04:00Z is inside 22:00–08:00.
                ("no-zone", "2026-03-08T08:00:00Z".to_string()),
            ]
        );
        assert!(holds.iter().all(|h| h.reason == HoldReason::QuietHours));
        let envelope: herald_schemas::RequestEnvelope = codec::decode(&holds[0].envelope).unwrap();
        assert!(envelope.quiet_released, "released once, never deferred again");
        assert_eq!(holds[0].partition, partition_for_key(b"u1", 8));
        assert_eq!(out.events.len(), 4);
        assert!(out.events.iter().all(|e| e.kind == EventKind::Deferred && e.reason.as_deref() == Some("quiet_hours")));

        // Berlin's own spring-forward night: 23:30 CET on 28 March; marketing ends at 08:00 CEST.
        clock.advance_ms(
            (at("2026-03-28T22:30:00Z").as_millisecond() - at("2026-03-08T04:00:00Z").as_millisecond()) as u64,
        );
        let mut out = StageOutput::default();
        stage.process(vec![user_item("berlin-2", Some("Europe/Berlin"), "marketing")], &mut out).await.unwrap();
        let last = store.holds.lock().unwrap().last().cloned().unwrap();
        assert_eq!(Timestamp::from_millisecond(last.due_at_ms as i64).unwrap().to_string(), "2026-03-29T06:00:00Z");
    }
}
