//! One channel over several routes: the push dispatcher's jobs go to APNs, FCM or Web Push by
//! their target's route, each route to its own connector (or several routes to one, such as the
//! file outbox for the routes with no provider).
//!
//! A batch is split by route; outcomes come back in job order. At most one of the connectors is
//! a sink Herald owns (the outbox): its position is the channel's position, and `recover`
//! reaches every connector. The sink's part is sent first, alone: a sink can fail the whole
//! batch (a disk error), and the dispatcher then replays it, so nothing may have gone to a
//! provider yet. The providers' parts then go concurrently; a provider connector reports its
//! failures as outcomes, never as an error.

use async_trait::async_trait;
use futures_util::future::try_join_all;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use herald_schemas::{DeliveryJob, Route};

pub struct Routed {
    name: String,
    channels: Vec<Box<dyn Channel>>,
    /// Which of `channels` serves each route.
    routes: Vec<(Route, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutedError {
    #[error("route {0} is mapped to connector {1}, but there are only {2}")]
    NoSuchChannel(&'static str, usize, usize),
    #[error("more than one connector is a sink with a position; the ledger can keep only one")]
    TwoSinks,
}

impl Routed {
    pub fn new(
        name: impl Into<String>,
        channels: Vec<Box<dyn Channel>>,
        routes: Vec<(Route, usize)>,
    ) -> Result<Routed, RoutedError> {
        if let Some((route, i)) = routes.iter().find(|(_, i)| *i >= channels.len()) {
            return Err(RoutedError::NoSuchChannel(route.as_str(), *i, channels.len()));
        }
        if channels.iter().filter(|c| c.position().is_some()).count() > 1 {
            return Err(RoutedError::TwoSinks);
        }
        Ok(Routed { name: name.into(), channels, routes })
    }

    fn channel_of(&self, route: Route) -> Option<usize> {
        self.routes.iter().find(|(r, _)| *r == route).map(|(_, i)| *i)
    }
}

#[async_trait]
impl Channel for Routed {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; jobs.len()];
        let mut parts: Vec<(Vec<usize>, Vec<DeliveryJob>)> = vec![(Vec::new(), Vec::new()); self.channels.len()];
        for (i, job) in jobs.iter().enumerate() {
            let route = job.target.route();
            match self.channel_of(route) {
                Some(c) => {
                    parts[c].0.push(i);
                    parts[c].1.push(job.clone());
                }
                None => {
                    let reason = format!("no connector serves route {}", route.as_str());
                    outcomes[i] = Some(SendOutcome::Permanent { reason });
                }
            }
        }
        let is_sink: Vec<bool> = self.channels.iter().map(|c| c.position().is_some()).collect();
        for (channel, (positions, part)) in self.channels.iter_mut().zip(&parts).filter(|(c, _)| c.position().is_some())
        {
            if !part.is_empty() {
                for (i, outcome) in positions.iter().zip(channel.send(part).await?) {
                    outcomes[*i] = Some(outcome);
                }
            }
        }
        let sends = self
            .channels
            .iter_mut()
            .zip(&parts)
            .zip(is_sink)
            .filter(|((_, (_, part)), sink)| !sink && !part.is_empty())
            .map(|((channel, (positions, part)), _)| async move {
                channel.send(part).await.map(|answers| positions.iter().copied().zip(answers).collect::<Vec<_>>())
            });
        for (i, outcome) in try_join_all(sends).await?.into_iter().flatten() {
            outcomes[i] = Some(outcome);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(SendOutcome::Retryable { reason: "connector gave no answer".into(), retry_after: None })
            })
            .collect())
    }

    fn position(&self) -> Option<u64> {
        self.channels.iter().find_map(|c| c.position())
    }

    async fn recover(&mut self, committed: Option<u64>) -> Result<(), ChannelError> {
        for channel in &mut self.channels {
            channel.recover(committed).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::{DeliveryId, NotificationId, Platform, RenderedContent, Target};

    /// Delivers everything and answers with its own name as the provider id.
    struct Named(&'static str);

    #[async_trait]
    impl Channel for Named {
        fn name(&self) -> &str {
            self.0
        }
        async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            Ok(jobs.iter().map(|_| SendOutcome::Delivered { provider_id: Some(self.0.into()) }).collect())
        }
    }

    fn push(n: usize, platform: Platform) -> DeliveryJob {
        let target = Target::Device { device_id: format!("d{n}"), platform, token: format!("t{n}") };
        DeliveryJob {
            delivery_id: DeliveryId(format!("d{n}")),
            notification_id: NotificationId(format!("n{n}")),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "transactional".into(),
            template: "t".into(),
            locale: "en".into(),
            target,
            content: RenderedContent::Push { title: "t".into(), body: "b".into() },
            attempt: 1,
            requested_at_ms: 0,
            expires_at_ms: None,
            fallback: None,
        }
    }

    #[tokio::test]
    async fn each_job_goes_to_its_routes_connector_and_outcomes_keep_job_order() {
        let channels: Vec<Box<dyn Channel>> = vec![Box::new(Named("apns")), Box::new(Named("outbox"))];
        let routes = vec![(Route::Apns, 0), (Route::Fcm, 1)];
        let mut routed = Routed::new("push", channels, routes).unwrap();
        let jobs =
            [push(0, Platform::Android), push(1, Platform::Ios), push(2, Platform::Android), push(3, Platform::Web)];
        let answers = routed.send(&jobs).await.unwrap();
        let ids: Vec<_> = answers
            .iter()
            .map(|o| match o {
                SendOutcome::Delivered { provider_id } => provider_id.clone().unwrap_or_default(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(ids[..3], ["outbox", "apns", "outbox"]);
        assert!(ids[3].contains("no connector serves route webpush"), "{}", ids[3]);
    }

    /// A sink Herald owns whose disk fails.
    struct BrokenSink;

    #[async_trait]
    impl Channel for BrokenSink {
        fn name(&self) -> &str {
            "outbox"
        }
        async fn send(&mut self, _: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            Err(ChannelError::Unavailable { channel: "outbox".into(), detail: "disk full".into() })
        }
        fn position(&self) -> Option<u64> {
            Some(0)
        }
    }

    /// Counts what it is sent.
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait]
    impl Channel for Counting {
        fn name(&self) -> &str {
            "apns"
        }
        async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
            self.0.fetch_add(jobs.len(), std::sync::atomic::Ordering::SeqCst);
            Ok(vec![SendOutcome::Delivered { provider_id: None }; jobs.len()])
        }
    }

    #[tokio::test]
    async fn a_failing_sink_fails_the_batch_before_anything_reaches_a_provider() {
        let sent = std::sync::Arc::default();
        let channels: Vec<Box<dyn Channel>> =
            vec![Box::new(Counting(std::sync::Arc::clone(&sent))), Box::new(BrokenSink)];
        let mut routed = Routed::new("push", channels, vec![(Route::Apns, 0), (Route::Fcm, 1)]).unwrap();
        let jobs = [push(0, Platform::Ios), push(1, Platform::Android)];
        assert!(routed.send(&jobs).await.is_err(), "the batch is replayed whole");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0, "so nothing may have been sent");
    }

    #[test]
    fn a_route_to_a_missing_connector_is_refused() {
        let channels: Vec<Box<dyn Channel>> = vec![Box::new(Named("apns"))];
        assert!(matches!(Routed::new("push", channels, vec![(Route::Fcm, 1)]), Err(RoutedError::NoSuchChannel(..))));
    }
}
