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
//! - An item's held-back `fallback_targets` become jobs too, not sent: each push job of the
//!   item carries them, with the ids of all its push siblings, as its [`Fallback`].

use herald_schemas::job::Fallback;
use herald_schemas::{ChannelKind, DeliveryId, DeliveryJob, Target, WorkItem};
use std::collections::HashSet;

/// Turns rendered items into delivery jobs (first attempt).
pub fn fan_out(items: Vec<WorkItem>) -> Vec<DeliveryJob> {
    let mut jobs = Vec::with_capacity(items.iter().map(|i| i.targets.len()).sum());
    for item in items {
        let first = jobs.len();
        jobs.extend(jobs_for(&item, &item.targets));
        if item.fallback_targets.is_empty() {
            continue;
        }
        let fallback_jobs = jobs_for(&item, &item.fallback_targets);
        let is_push = |j: &DeliveryJob| j.target.channel() == ChannelKind::Push;
        let siblings: Vec<DeliveryId> =
            jobs[first..].iter().filter(|j| is_push(j)).map(|j| j.delivery_id.clone()).collect();
        if fallback_jobs.is_empty() || siblings.is_empty() {
            continue;
        }
        let fallback = Box::new(Fallback { siblings, jobs: fallback_jobs });
        for job in jobs[first..].iter_mut().filter(|j| is_push(j)) {
            job.fallback = Some(fallback.clone());
        }
    }
    jobs
}

/// One job per target of `item` with a rendering for its channel, each `(route, address)` once.
fn jobs_for(item: &WorkItem, targets: &[Target]) -> Vec<DeliveryJob> {
    let e = &item.envelope;
    let locale = item.locale.clone().unwrap_or_default();
    let mut seen = HashSet::with_capacity(targets.len());
    let mut jobs = Vec::with_capacity(targets.len());
    for target in targets {
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
            expires_at_ms: e.expires_at_ms,
            fallback: None,
        });
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
    fn push_jobs_carry_the_rendered_fallback_and_their_siblings() {
        let mut item = rendered_item("n1");
        item.targets.truncate(3);
        item.fallback_targets = vec![Target::Email { address: "u1@example.com".into() }];
        let jobs = fan_out(vec![item]);
        assert_eq!(jobs.len(), 2, "the fallback is not sent by itself");
        let fallback = jobs[0].fallback.as_deref().unwrap();
        assert_eq!(fallback.siblings, vec![jobs[0].delivery_id.clone(), jobs[1].delivery_id.clone()]);
        assert_eq!(fallback.jobs.len(), 1);
        let email = &fallback.jobs[0];
        assert_eq!(email.delivery_id, DeliveryId::derive(&email.notification_id, "email", "u1@example.com"));
        assert!(matches!(email.content, RenderedContent::Email { .. }));
        assert!(email.fallback.is_none());
        assert_eq!(jobs[1].fallback, jobs[0].fallback);
    }

    #[test]
    fn a_replay_yields_the_same_jobs() {
        assert_eq!(fan_out(vec![rendered_item("n1")]), fan_out(vec![rendered_item("n1")]));
        let other = fan_out(vec![rendered_item("n2")]);
        assert_ne!(fan_out(vec![rendered_item("n1")])[0].delivery_id, other[0].delivery_id);
        assert!(fan_out(Vec::new()).is_empty());
    }
}
