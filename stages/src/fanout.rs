//! Fan-out: one delivery job per target.
//!
//! Contract:
//! - Each target with a rendering for its channel becomes one [`DeliveryJob`]
//!   with `delivery_id = DeliveryId::derive(notification_id, route, address)`,
//!   so a replayed notification yields the same ids and the dispatcher ledger
//!   absorbs the repeat. Two targets of one item with the same route and
//!   address (a token registered twice) yield one job.
//! - A target whose channel has no rendering is skipped: render already
//!   emitted its `render_failed` event.
//! - Jobs keep item order, then target order. The caller groups them by
//!   `job.target.route()` into the `herald-deliveries-<route>` topics.

use herald_schemas::{DeliveryId, DeliveryJob, WorkItem};
use std::collections::HashSet;

/// Turns rendered items into delivery jobs (first attempt).
pub fn fan_out(items: Vec<WorkItem>) -> Vec<DeliveryJob> {
    let mut jobs = Vec::with_capacity(items.iter().map(|i| i.targets.len()).sum());
    for item in items {
        let e = &item.envelope;
        let locale = item.locale.clone().unwrap_or_default();
        let mut seen = HashSet::with_capacity(item.targets.len());
        for target in &item.targets {
            let Some(content) = item.rendered_for(target.channel()) else { continue };
            let delivery_id = DeliveryId::derive(&e.id, target.route().as_str(), target.address());
            if !seen.insert(delivery_id.clone()) {
                continue;
            }
            jobs.push(DeliveryJob {
                delivery_id,
                notification_id: e.id.clone(),
                client_id: e.client_id.clone(),
                user_id: e.request.user_id.clone(),
                category: e.request.category.clone(),
                template: e.request.template.clone(),
                locale: locale.clone(),
                target: target.clone(),
                content: content.clone(),
                attempt: 1,
                requested_at_ms: e.received_at_ms,
            });
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes;
    use herald_schemas::{ChannelKind, Platform, RenderedContent, Route, Target};

    fn rendered_item(id: &str) -> WorkItem {
        let mut item = fakes::item(id, fakes::request("u1", "welcome", &[ChannelKind::Push, ChannelKind::Email]));
        let device =
            |id: &str, platform, token: &str| Target::Device { device_id: id.into(), platform, token: token.into() };
        item.targets = vec![
            device("d1", Platform::Ios, "tok-a"),
            device("d2", Platform::Android, "tok-b"),
            device("d3", Platform::Ios, "tok-a"),
            Target::Phone { number: "+821012345678".into() },
            Target::Email { address: "u1@example.com".into() },
        ];
        item.locale = Some("ko".into());
        item.rendered = vec![
            (ChannelKind::Push, RenderedContent::Push { title: "t".into(), body: "b".into() }),
            (ChannelKind::Email, RenderedContent::Email { subject: "s".into(), text: "x".into(), html: "h".into() }),
        ];
        item
    }

    #[test]
    fn one_job_per_rendered_target_with_derived_ids() {
        let jobs = fan_out(vec![rendered_item("n1")]);
        let routes: Vec<_> = jobs.iter().map(|j| j.target.route()).collect();
        assert_eq!(routes, [Route::Apns, Route::Fcm, Route::Email], "sms has no rendering; tok-a once");
        let j = &jobs[0];
        assert_eq!(j.delivery_id, DeliveryId::derive(&j.notification_id, "apns", "tok-a"));
        assert_eq!((j.attempt, j.locale.as_str(), j.template.as_str()), (1, "ko", "welcome"));
        assert_eq!((j.client_id.as_str(), j.user_id.as_str(), j.category.as_str()), ("client-a", "u1", "general"));
        assert_eq!(j.requested_at_ms, 1_000);
        assert_eq!(j.content, RenderedContent::Push { title: "t".into(), body: "b".into() });
        assert!(matches!(jobs[2].content, RenderedContent::Email { .. }));
    }

    #[test]
    fn a_replay_yields_the_same_jobs() {
        assert_eq!(fan_out(vec![rendered_item("n1")]), fan_out(vec![rendered_item("n1")]));
        let other = fan_out(vec![rendered_item("n2")]);
        assert_ne!(fan_out(vec![rendered_item("n1")])[0].delivery_id, other[0].delivery_id);
        assert!(fan_out(Vec::new()).is_empty());
    }
}
