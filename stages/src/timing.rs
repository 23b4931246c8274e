//! When a notification may go, as a producer writes it: `send_at`, `expires_at` or `ttl`, and a
//! digest's `window`.
//!
//! Contract: [`check`] is pure (formats and ranges that do not depend on the time of day) and is
//! part of schema validation; [`resolve`] turns the fields into instants once, at acceptance, and
//! refuses what only the acceptance time shows to be wrong (a `send_at` too far ahead, an expiry
//! before the send time). Stages and dispatchers read only the resolved instants of the
//! [`RequestEnvelope`](herald_schemas::RequestEnvelope).

use crate::validate::Rejection;
use herald_schemas::NotificationRequest;
use herald_schemas::request::DigestSpec;
use std::time::Duration;

/// The furthest ahead a notification may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest and longest digest windows.
pub const DIGEST_WINDOW: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

/// The instants of a request, resolved at acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    /// When to send it; `None`: now (absent, or not in the future).
    pub send_at_ms: Option<u64>,
    /// When it goes stale.
    pub expires_at_ms: Option<u64>,
}

fn invalid(message: String) -> Rejection {
    Rejection::new(Rejection::INVALID_FIELD, message)
}

/// An RFC 3339 instant (`2026-12-24T18:00:00+09:00`, `2026-12-24T09:00:00Z`) as ms since the epoch.
pub fn parse_instant(field: &str, value: &str) -> Result<u64, Rejection> {
    let at: jiff::Timestamp = value.parse().map_err(|_| {
        invalid(format!("`{field}` must be an RFC 3339 time with an offset, such as 2026-12-24T18:00:00+09:00"))
    })?;
    u64::try_from(at.as_millisecond()).map_err(|_| invalid(format!("`{field}` is before 1970")))
}

/// A duration such as `"15m"`, `"2h 30m"`, `"7days"` (humantime), at least one second.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, Rejection> {
    let d = humantime::parse_duration(value)
        .map_err(|_| invalid(format!("`{field}` must be a duration such as \"90s\", \"15m\" or \"2h\"")))?;
    if d < Duration::from_secs(1) {
        return Err(invalid(format!("`{field}` must be at least one second")));
    }
    Ok(d)
}

/// A digest's window, within [`DIGEST_WINDOW`].
pub fn digest_window(spec: &DigestSpec) -> Result<Duration, Rejection> {
    let window = parse_duration("digest.window", &spec.window)?;
    let (min, max) = DIGEST_WINDOW;
    if window < min || window > max {
        return Err(invalid("`digest.window` must be between 1s and 7 days".into()));
    }
    Ok(window)
}

/// The pure checks of the time fields.
pub fn check(r: &NotificationRequest) -> Result<(), Rejection> {
    if let Some(at) = &r.send_at {
        parse_instant("send_at", at)?;
    }
    if r.expires_at.is_some() && r.ttl.is_some() {
        return Err(invalid("give `expires_at` or `ttl`, not both".into()));
    }
    if let Some(at) = &r.expires_at {
        parse_instant("expires_at", at)?;
    }
    if let Some(ttl) = &r.ttl {
        parse_duration("ttl", ttl)?;
    }
    if let Some(digest) = &r.digest {
        digest_window(digest)?;
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The request's instants for acceptance at `now_ms` (after [`check`]).
pub fn resolve(r: &NotificationRequest, now_ms: u64) -> Result<Timing, Rejection> {
    check(r)?;
    let send_at_ms = match &r.send_at {
        Some(at) => {
            let at = parse_instant("send_at", at)?;
            if at > now_ms.saturating_add(millis(MAX_SCHEDULE_AHEAD)) {
                return Err(invalid("`send_at` is more than 366 days ahead".into()));
            }
            (at > now_ms).then_some(at)
        }
        None => None,
    };
    let expires_at_ms = match (&r.expires_at, &r.ttl) {
        (Some(at), _) => Some(parse_instant("expires_at", at)?),
        (None, Some(ttl)) => Some(now_ms.saturating_add(millis(parse_duration("ttl", ttl)?))),
        (None, None) => None,
    };
    if let (Some(send), Some(expires)) = (send_at_ms, expires_at_ms)
        && expires <= send
    {
        return Err(invalid("`expires_at` (or `ttl`) ends before `send_at`: it would never be sent".into()));
    }
    Ok(Timing { send_at_ms, expires_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes;
    use herald_schemas::ChannelKind;

    fn request() -> NotificationRequest {
        fakes::request("u1", "welcome", &[ChannelKind::Push])
    }

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn instants_need_an_offset_and_resolve_to_milliseconds() {
        assert_eq!(parse_instant("send_at", "2026-12-24T09:00:00Z"), Ok(1_798_102_800_000));
        assert_eq!(parse_instant("send_at", "2026-12-24T18:00:00+09:00"), Ok(1_798_102_800_000));
        for bad in ["2026-12-24T18:00:00", "tomorrow", "", "2026-13-01T00:00:00Z"] {
            let err = parse_instant("send_at", bad).unwrap_err();
            assert!(err.message.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn send_at_in_the_past_means_now_and_too_far_ahead_is_refused() {
        let mut r = request();
        r.send_at = Some("2020-01-01T00:00:00Z".into());
        assert_eq!(resolve(&r, NOW).unwrap().send_at_ms, None);
        r.send_at = Some("2030-01-01T00:00:00Z".into());
        assert!(resolve(&r, NOW).unwrap_err().message.contains("366 days"));
        r.send_at = Some("2026-09-30T00:00:00Z".into());
        assert_eq!(resolve(&r, NOW).unwrap().send_at_ms, Some(1_790_726_400_000));
    }

    #[test]
    fn expiry_from_either_field_and_never_before_the_send_time() {
        let mut r = request();
        r.ttl = Some("15m".into());
        assert_eq!(resolve(&r, NOW).unwrap().expires_at_ms, Some(NOW + 900_000));
        r.expires_at = Some("2026-09-30T00:00:00Z".into());
        assert!(check(&r).unwrap_err().message.contains("not both"));
        r.ttl = None;
        assert_eq!(resolve(&r, NOW).unwrap().expires_at_ms, Some(1_790_726_400_000));
        r.send_at = Some("2026-10-01T00:00:00Z".into());
        assert!(resolve(&r, NOW).unwrap_err().message.contains("would never be sent"));
        r.ttl = Some("0s".into());
        r.expires_at = None;
        assert!(check(&r).unwrap_err().message.contains("at least one second"));
    }

    #[test]
    fn digest_windows_are_bounded() {
        let spec = |w: &str| DigestSpec { key: "k".into(), window: w.into(), template: "t".into() };
        assert_eq!(digest_window(&spec("10m")), Ok(Duration::from_secs(600)));
        assert!(digest_window(&spec("8days")).is_err());
        assert!(digest_window(&spec("ten minutes")).is_err());
    }
}
