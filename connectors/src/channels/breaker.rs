//! A circuit breaker around a provider's channel: stop calling a provider that is failing, and
//! probe until it recovers.
//!
//! - **Closed** (normal): every outcome is counted over a sliding `window`. Once it has seen at
//!   least `min_requests` and more than `failure_ratio` of them were retryable failures (5xx, 429,
//!   timeouts, resets; a bad address or a permanent refusal is the message's fault, not the
//!   provider's), it opens.
//! - **Open**: nothing reaches the provider; every job is answered retryable ("circuit open")
//!   with `Retry-After` the time left, so it waits on `herald-retry`, not lost. After `cooldown`
//!   the breaker half-opens.
//! - **Half-open**: one job of the next batch is sent as a probe (the rest are answered like
//!   when open). A delivered or non-retryable probe closes the breaker; a retryable one opens it
//!   for another cooldown.
//!
//! The defaults stay closed at the 30% failure rate issue 3's acceptance injects and open when
//! most requests fail.

use async_trait::async_trait;
use herald_schemas::DeliveryJob;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `[breaker]`: when to stop calling a failing provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Outcomes counted are those of the last `window`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer outcomes than this in the window never open the breaker.
    pub min_requests: usize,
    /// Opens when more than this share of the window's outcomes are retryable failures.
    pub failure_ratio: f64,
    /// How long it stays open before a probe.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 20,
            failure_ratio: 0.6,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// The breaker's state, as exported: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// Told of every change of state (for a metric and a log line).
pub type OnChange = Box<dyn Fn(&str, BreakerState) + Send + Sync>;

/// The state machine alone, on explicit instants (so tests choose the time).
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// (when, failed) of the window's outcomes while closed.
    outcomes: VecDeque<(Instant, bool)>,
    failures: usize,
    opened_at: Option<Instant>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, state: BreakerState::Closed, outcomes: VecDeque::new(), failures: 0, opened_at: None }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many jobs of a batch of `n` may go to the provider at `now`.
    pub fn admit(&mut self, n: usize, now: Instant) -> usize {
        if self.state == BreakerState::Open
            && self.opened_at.is_some_and(|at| now.duration_since(at) >= self.config.cooldown)
        {
            self.state = BreakerState::HalfOpen;
        }
        match self.state {
            BreakerState::Closed => n,
            BreakerState::Open => 0,
            BreakerState::HalfOpen => n.min(1),
        }
    }

    /// How long until a probe, when not closed.
    pub fn retry_after(&self, now: Instant) -> Duration {
        match self.opened_at {
            Some(at) => self.config.cooldown.saturating_sub(now.duration_since(at)),
            None => Duration::ZERO,
        }
    }

    /// Counts the outcomes of what was admitted.
    pub fn record(&mut self, outcomes: &[SendOutcome], now: Instant) {
        let failed = |o: &SendOutcome| matches!(o, SendOutcome::Retryable { .. });
        match self.state {
            BreakerState::HalfOpen => match outcomes.first() {
                Some(probe) if failed(probe) => self.open(now),
                Some(_) => self.close(),
                None => {}
            },
            BreakerState::Open => {}
            BreakerState::Closed => {
                for outcome in outcomes {
                    let failed = failed(outcome);
                    self.outcomes.push_back((now, failed));
                    self.failures += usize::from(failed);
                }
                while let Some(&(at, failed)) = self.outcomes.front() {
                    if now.duration_since(at) <= self.config.window {
                        break;
                    }
                    self.outcomes.pop_front();
                    self.failures -= usize::from(failed);
                }
                let total = self.outcomes.len();
                if total >= self.config.min_requests && self.failures as f64 > self.config.failure_ratio * total as f64
                {
                    self.open(now);
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
        self.failures = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
    }
}

/// A channel behind a [`Breaker`].
pub struct Guarded {
    inner: Box<dyn Channel>,
    breaker: Breaker,
    on_change: OnChange,
}

impl Guarded {
    pub fn new(inner: Box<dyn Channel>, config: BreakerConfig, on_change: OnChange) -> Guarded {
        on_change(inner.name(), BreakerState::Closed);
        Guarded { inner, breaker: Breaker::new(config), on_change }
    }

    /// Sends the prefix of `jobs` the breaker admits and returns its outcomes: all of them when
    /// closed, none when open, one probe when half-open. The caller decides what becomes of the
    /// rest (a [`super::failover::Failover`] offers them to the next provider).
    pub async fn send_admitted(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let before = self.breaker.state();
        let admitted = self.breaker.admit(jobs.len(), Instant::now());
        let outcomes = if admitted > 0 { self.inner.send(&jobs[..admitted]).await? } else { Vec::new() };
        self.breaker.record(&outcomes, Instant::now());
        let after = self.breaker.state();
        if after != before {
            (self.on_change)(self.inner.name(), after);
        }
        Ok(outcomes)
    }

    /// The answer for `n` jobs the breaker did not admit: retryable once it may admit again.
    pub fn refused(&self, n: usize) -> impl Iterator<Item = SendOutcome> + use<> {
        let outcome = SendOutcome::Retryable {
            reason: format!("circuit open: {} is failing", self.inner.name()),
            retry_after: Some(self.breaker.retry_after(Instant::now())),
        };
        std::iter::repeat_n(outcome, n)
    }
}

#[async_trait]
impl Channel for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let mut outcomes = self.send_admitted(jobs).await?;
        let refused = self.refused(jobs.len() - outcomes.len());
        outcomes.extend(refused);
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 10,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(5),
        }
    }

    fn outcomes(failed: usize, ok: usize) -> Vec<SendOutcome> {
        let fail = SendOutcome::Retryable { reason: "http 503".into(), retry_after: None };
        let good = SendOutcome::Delivered { provider_id: None };
        std::iter::repeat_n(fail, failed).chain(std::iter::repeat_n(good, ok)).collect()
    }

    #[test]
    fn stays_closed_at_thirty_percent_and_opens_when_most_fail() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..100 {
            b.record(&outcomes(3, 7), t0 + Duration::from_millis(i * 100));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // Permanent refusals are the messages' fault: answers from a working provider.
        b.record(&vec![SendOutcome::Permanent { reason: "x".into() }; 50], t0 + Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::Closed);
        // The provider goes down: once the window holds mostly failures, it opens.
        b.record(&outcomes(40, 0), t0 + Duration::from_secs(21));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(50, t0 + Duration::from_secs(22)), 0);
        assert_eq!(b.retry_after(t0 + Duration::from_secs(22)), Duration::from_secs(4));
    }

    #[test]
    fn too_few_requests_never_open_it_and_old_ones_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.record(&outcomes(9, 0), t0);
        assert_eq!(b.state(), BreakerState::Closed, "9 < min_requests");
        // 11 s later the 9 failures are out of the window: 1 failure in 11 is not enough.
        b.record(&outcomes(1, 10), t0 + Duration::from_secs(11));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_probes_one_job_then_closes_or_opens_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.record(&outcomes(10, 0), t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(8, t0 + Duration::from_secs(4)), 0);
        assert_eq!(b.admit(8, t0 + Duration::from_secs(5)), 1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(&outcomes(1, 0), t0 + Duration::from_secs(5));
        assert_eq!(b.state(), BreakerState::Open, "a failed probe opens it again");
        assert_eq!(b.admit(8, t0 + Duration::from_secs(9)), 0, "for a whole new cooldown");
        assert_eq!(b.admit(8, t0 + Duration::from_secs(10)), 1);
        b.record(&outcomes(0, 1), t0 + Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(8, t0 + Duration::from_secs(10)), 8);
    }
}
