//! What happens to a delivery a provider refused for now: when to try it again, or when to give
//! up and dead-letter it.
//!
//! The delay is exponential backoff with *full jitter* (a uniformly random delay between zero and
//! `base · 2^(attempt-1)`, capped at `max_delay`), so a provider coming back from an outage is not
//! hit by every retry at the same instant; it is never shorter than the provider's `Retry-After`.
//! A delivery is given up when its next attempt would exceed `max_attempts` or start after
//! `max_age` from the request: the limits are per channel, and the defaults retry for a long time
//! rather than a handful of times, since a notification is never to be lost to a short outage.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The retry limits of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Upper bound of the first retry's delay; each further attempt doubles it.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// No delay is longer (unless the provider's `Retry-After` asks for longer).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Attempts in all, the first included; the next failure dead-letters the delivery.
    pub max_attempts: u32,
    /// A delivery whose next attempt would start later than this after the request is dead-lettered.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

/// The cap is 10 s. A provider back from an outage sees every waiting delivery again within ten
/// seconds; while it is down, the circuit breaker, not the backoff, keeps the load off it. With
/// 30% of requests failing, the unluckiest of 20,000 deliveries (eight or nine failures in a row)
/// waits about half a minute in all; with a 60 s cap it waited up to two and a half minutes.
impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            max_attempts: 100,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// What to do with a delivery that failed with a retryable outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at `due_at_ms`, as attempt `attempt`.
    Retry { attempt: u32, due_at_ms: u64 },
    /// Give up: dead-letter it with this reason.
    GiveUp { reason: String },
}

impl RetryPolicy {
    /// The decision for a delivery whose attempt `attempt` (1 for the first) failed at `now_ms`.
    /// `jitter` is a uniform random number in `[0, 1)`, taken as an argument so tests choose it.
    pub fn decide(
        &self,
        attempt: u32,
        requested_at_ms: u64,
        now_ms: u64,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp { reason: format!("gave up after {attempt} attempts") };
        }
        let delay = self.delay(attempt, retry_after, jitter);
        let due_at_ms = now_ms.saturating_add(millis(delay));
        let deadline = requested_at_ms.saturating_add(millis(self.max_age));
        if due_at_ms > deadline {
            let age = humantime_serde::re::humantime::format_duration(self.max_age);
            return RetryDecision::GiveUp {
                reason: format!("not delivered within max_age {age} ({attempt} attempts)"),
            };
        }
        RetryDecision::Retry { attempt: attempt + 1, due_at_ms }
    }

    /// The delay before the attempt after `attempt`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let ceiling = self.base_delay.saturating_mul(1u32 << doublings).min(self.max_delay);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        let jittered = ceiling.mul_f64(jitter);
        jittered.max(retry_after.unwrap_or_default())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: 10,
            max_age: Duration::from_secs(600),
        }
    }

    #[test]
    fn delay_is_full_jitter_under_a_doubling_capped_ceiling() {
        let p = policy();
        assert_eq!(p.delay(1, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(1, None, 0.5), Duration::from_millis(500));
        assert_eq!(p.delay(3, None, 0.5), Duration::from_secs(2));
        // The ceiling stops at max_delay, however many attempts.
        assert_eq!(p.delay(7, None, 0.999_999), Duration::from_secs(60).mul_f64(0.999_999));
        assert_eq!(p.delay(u32::MAX, None, 1.0), Duration::from_secs(60));
        // Out-of-range jitter is clamped, never a panic.
        assert_eq!(p.delay(2, None, 7.0), Duration::from_secs(2));
        assert_eq!(p.delay(2, None, -1.0), Duration::ZERO);
        assert_eq!(p.delay(2, None, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        assert_eq!(p.delay(1, Some(Duration::from_secs(30)), 0.5), Duration::from_secs(30));
        // Longer than max_delay when the provider says so.
        assert_eq!(p.delay(9, Some(Duration::from_secs(120)), 0.1), Duration::from_secs(120));
        assert_eq!(p.delay(9, Some(Duration::from_secs(1)), 0.5), Duration::from_secs(30));
    }

    #[test]
    fn retries_until_max_attempts_then_gives_up() {
        let p = policy();
        assert_eq!(p.decide(1, 0, 1_000, None, 0.5), RetryDecision::Retry { attempt: 2, due_at_ms: 1_500 });
        assert!(matches!(p.decide(9, 0, 1_000, None, 0.0), RetryDecision::Retry { attempt: 10, .. }));
        let RetryDecision::GiveUp { reason } = p.decide(10, 0, 1_000, None, 0.0) else { panic!("should give up") };
        assert!(reason.contains("10 attempts"), "{reason}");
    }

    #[test]
    fn gives_up_when_the_next_attempt_would_be_past_max_age() {
        let p = policy();
        // Requested at 0, max_age 600 s: a retry due at 599.5 s is fine, one due after 600 s is not.
        assert!(matches!(p.decide(1, 0, 599_000, None, 0.5), RetryDecision::Retry { due_at_ms: 599_500, .. }));
        let RetryDecision::GiveUp { reason } = p.decide(1, 0, 599_000, Some(Duration::from_secs(2)), 0.5) else {
            panic!("should give up")
        };
        assert!(reason.contains("max_age 10m"), "{reason}");
    }
}
