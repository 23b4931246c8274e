//! A provider's rate limit in messages per second, around any channel: FCM's 600,000 messages a
//! minute per project, an SMTP relay's hourly quota, a push service's throttle.
//!
//! A batch is sent in chunks of at most one second's worth, each after the limiter (a GCRA
//! token bucket, `governor`) has that many tokens, so a burst never exceeds the rate and a slow
//! second does not save up more than a second's worth. The SMS providers pace in segments
//! instead ([`super::sms::SegmentPacer`]), inside their connectors.

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_schemas::DeliveryJob;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use std::num::NonZeroU32;

pub struct Paced {
    inner: Box<dyn Channel>,
    limiter: DefaultDirectRateLimiter,
    per_second: NonZeroU32,
}

impl Paced {
    pub fn new(inner: Box<dyn Channel>, per_second: NonZeroU32) -> Paced {
        Paced { inner, limiter: RateLimiter::direct(Quota::per_second(per_second)), per_second }
    }
}

#[async_trait]
impl Channel for Paced {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(self.per_second.get() as usize) {
            let n = NonZeroU32::new(chunk.len() as u32).unwrap_or(NonZeroU32::MIN);
            // Cannot fail: a chunk is at most the bucket's size.
            let _ = self.limiter.until_n_ready(n).await;
            outcomes.extend(self.inner.send(chunk).await?);
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::{DeliveryId, NotificationId, RenderedContent, Target};
    use std::time::{Duration, Instant};

    struct Accept;

    #[async_trait]
    impl Channel for Accept {
        fn name(&self) -> &str {
            "accept"
        }
        async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            Ok(vec![SendOutcome::Delivered { provider_id: None }; jobs.len()])
        }
    }

    fn jobs(n: usize) -> Vec<DeliveryJob> {
        (0..n)
            .map(|i| DeliveryJob {
                delivery_id: DeliveryId(format!("d{i}")),
                notification_id: NotificationId(format!("n{i}")),
                client_id: "c".into(),
                user_id: "u".into(),
                category: "transactional".into(),
                template: "t".into(),
                locale: "en".into(),
                target: Target::Email { address: "a@example.org".into() },
                content: RenderedContent::Sms { text: "hi".into() },
                attempt: 1,
                requested_at_ms: 0,
                expires_at_ms: None,
                fallback: None,
            })
            .collect()
    }

    /// Paces on the real clock (governor's). Only a lower bound is checked: the limiter must hold
    /// the second batch back, however fast the machine is.
    #[tokio::test]
    async fn a_batch_larger_than_a_seconds_worth_waits_for_the_rest() {
        let mut paced = Paced::new(Box::new(Accept), NonZeroU32::new(50).unwrap());
        let started = Instant::now();
        let outcomes = paced.send(&jobs(50)).await.unwrap();
        assert_eq!(outcomes.len(), 50);
        let outcomes = paced.send(&jobs(100)).await.unwrap();
        assert_eq!(outcomes.len(), 100);
        assert!(started.elapsed() >= Duration::from_millis(1_500), "150 at 50/s take about 2 s");
    }
}
