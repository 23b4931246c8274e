//! Provider failover: a route served by several providers in order of preference (Twilio then
//! Vonage, SMTP then SendGrid), each behind its own circuit breaker.
//!
//! A batch goes to the first provider whose breaker admits it. Jobs a breaker does not admit
//! (it is open, or half-open and probing with one job) are offered to the next provider, and so
//! on; jobs no provider admits are answered retryable with the shortest time until a breaker
//! may admit again. A provider's ordinary failures (a 503 here and there) do not move traffic:
//! they are retried on the same provider until its breaker opens. A job is offered to at most
//! one provider per batch, so it is never sent twice by the failover itself.

use super::breaker::Guarded;
use async_trait::async_trait;
use herald_schemas::DeliveryJob;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use std::time::Duration;

pub struct Failover {
    name: String,
    providers: Vec<Guarded>,
}

impl Failover {
    /// `providers` in order of preference; at least one.
    pub fn new(providers: Vec<Guarded>) -> Failover {
        let name = providers.iter().map(|p| p.name()).collect::<Vec<_>>().join(",");
        Failover { name, providers }
    }
}

#[async_trait]
impl Channel for Failover {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut wait: Option<Duration> = None;
        let mut refusal = None;
        for provider in &mut self.providers {
            let offered = jobs.len() - outcomes.len();
            if offered == 0 {
                break;
            }
            let sent = provider.send_admitted(&jobs[outcomes.len()..]).await?;
            let refused_some = sent.len() < offered;
            outcomes.extend(sent);
            if refused_some && let Some(SendOutcome::Retryable { reason, retry_after }) = provider.refused(1).next() {
                let after = retry_after.unwrap_or_default();
                wait = Some(wait.map_or(after, |w| w.min(after)));
                refusal.get_or_insert(reason);
            }
        }
        let left = jobs.len() - outcomes.len();
        let reason = refusal.unwrap_or_else(|| format!("circuit open: {} is failing", self.name));
        outcomes.extend((0..left).map(|_| SendOutcome::Retryable { reason: reason.clone(), retry_after: wait }));
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::breaker::BreakerConfig;
    use herald_schemas::{DeliveryId, NotificationId, RenderedContent, Target};
    use std::sync::{Arc, Mutex};

    /// A provider that answers every job the same way and records what it was sent.
    struct Scripted {
        name: &'static str,
        answer: SendOutcome,
        sent: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Channel for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            let mut sent = self.sent.lock().unwrap();
            sent.extend(jobs.iter().map(|j| format!("{}:{}", self.name, j.delivery_id.0)));
            Ok(vec![self.answer.clone(); jobs.len()])
        }
    }

    fn jobs(n: usize) -> Vec<DeliveryJob> {
        (0..n)
            .map(|i| {
                let notification_id = NotificationId(format!("n{i}"));
                DeliveryJob {
                    delivery_id: DeliveryId(format!("d{i}")),
                    notification_id,
                    client_id: "c".into(),
                    user_id: "u".into(),
                    category: "transactional".into(),
                    template: "t".into(),
                    locale: "en".into(),
                    target: Target::Phone { number: "+15551230000".into() },
                    content: RenderedContent::Sms { text: "hi".into() },
                    attempt: 1,
                    requested_at_ms: 0,
                    expires_at_ms: None,
                    fallback: None,
                }
            })
            .collect()
    }

    fn guarded(name: &'static str, answer: SendOutcome, sent: &Arc<Mutex<Vec<String>>>) -> Guarded {
        let config = BreakerConfig { min_requests: 4, failure_ratio: 0.5, ..BreakerConfig::default() };
        let inner = Scripted { name, answer, sent: Arc::clone(sent) };
        Guarded::new(Box::new(inner), config, Box::new(|_, _| {}))
    }

    #[tokio::test]
    async fn the_first_provider_takes_everything_until_its_breaker_opens_then_the_next_does() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let down = SendOutcome::Retryable { reason: "http 503".into(), retry_after: None };
        let ok = SendOutcome::Delivered { provider_id: None };
        let mut failover = Failover::new(vec![guarded("twilio", down, &sent), guarded("vonage", ok, &sent)]);
        assert_eq!(failover.name(), "twilio,vonage");

        // Ordinary failures stay on the first provider: they are retried, not moved.
        let first = failover.send(&jobs(4)).await.unwrap();
        assert!(first.iter().all(|o| matches!(o, SendOutcome::Retryable { reason, .. } if reason == "http 503")));
        // Its breaker is open now: the next batch goes, whole, to the second provider.
        let second = failover.send(&jobs(3)).await.unwrap();
        assert_eq!(second, vec![SendOutcome::Delivered { provider_id: None }; 3]);
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.iter().filter(|s| s.starts_with("twilio:")).count(), 4);
        assert_eq!(sent.iter().filter(|s| s.starts_with("vonage:")).count(), 3, "{sent:?}");
    }

    #[tokio::test]
    async fn when_every_breaker_is_open_jobs_wait_for_the_first_to_admit_again() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let down = || SendOutcome::Retryable { reason: "http 503".into(), retry_after: None };
        let mut failover = Failover::new(vec![guarded("smtp", down(), &sent), guarded("sendgrid", down(), &sent)]);
        failover.send(&jobs(4)).await.unwrap(); // opens smtp's breaker
        failover.send(&jobs(4)).await.unwrap(); // all to sendgrid, which opens too
        let waiting = failover.send(&jobs(2)).await.unwrap();
        for outcome in waiting {
            let SendOutcome::Retryable { reason, retry_after } = outcome else { panic!("{outcome:?}") };
            assert!(reason.starts_with("circuit open: smtp"), "{reason}");
            assert!(retry_after.is_some_and(|d| d > Duration::ZERO && d <= BreakerConfig::default().cooldown));
        }
        assert_eq!(sent.lock().unwrap().len(), 8, "no job reached a provider whose breaker was open");
    }
}
