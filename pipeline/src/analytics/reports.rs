//! Canned reports for people who do not write SQL: `herald report <name> [--days N]`. Each is a
//! read-only query over the views of [`super::sql`], run like any other (`herald sql` prints the
//! query with `--show-sql`, to start one's own from it).

/// The reports `herald report` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    /// Per channel and provider: deliveries, how many were sent, delivered (a receipt said so)
    /// and failed for good, and the share sent.
    Delivery,
    /// The most frequent failure reasons (refused for good, undelivered, bounced, rejected, not
    /// renderable), per channel and provider.
    Failures,
    /// Per template and channel: requested, sent, opened and clicked, with open and click rates
    /// (of those sent).
    Funnel,
}

impl Report {
    /// The query, over the last `days` days (UTC, today included).
    pub fn sql(self, days: u32) -> String {
        let since = format!("date >= CAST(now() AS DATE) - INTERVAL '{} days'", days.saturating_sub(1));
        match self {
            Report::Delivery => format!(
                "SELECT channel, provider,
                        count(DISTINCT delivery_id) AS deliveries,
                        count(DISTINCT CASE WHEN status = 'sent' THEN delivery_id END) AS sent,
                        count(DISTINCT CASE WHEN status = 'delivered' THEN delivery_id END) AS delivered,
                        count(DISTINCT CASE WHEN status IN ('failed', 'undelivered', 'bounced') THEN delivery_id END)
                            AS failed,
                        round(100.0 * count(DISTINCT CASE WHEN status = 'sent' THEN delivery_id END)
                              / count(DISTINCT delivery_id), 1) AS sent_pct
                 FROM events
                 WHERE delivery_id IS NOT NULL AND {since}
                 GROUP BY channel, provider
                 ORDER BY channel, provider"
            ),
            Report::Failures => format!(
                "SELECT status, channel, provider, reason, count(*) AS events
                 FROM events
                 WHERE status IN ('failed', 'undelivered', 'bounced', 'rejected', 'render_failed') AND {since}
                 GROUP BY status, channel, provider, reason
                 ORDER BY events DESC, status, reason
                 LIMIT 50"
            ),
            Report::Funnel => format!(
                "SELECT template, channel,
                        sum(requested) AS requested, sum(sent) AS sent,
                        sum(opened) AS opened, sum(clicked) AS clicked,
                        round(100.0 * sum(opened) / nullif(sum(sent), 0), 1) AS open_pct,
                        round(100.0 * sum(clicked) / nullif(sum(sent), 0), 1) AS click_pct
                 FROM funnel
                 WHERE {since}
                 GROUP BY template, channel
                 ORDER BY requested DESC, template, channel"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::sql::{EventSource, Format, Limits, render, run};
    use crate::runtime::requests::event_appends;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::stage::now_ms;
    use herald_schemas::topic::{self, TopicLog};
    use herald_schemas::{DeliveryEvent, DeliveryId, EventKind, NotificationId, Route};
    use std::sync::Arc;

    /// Four email deliveries today: all sent, one delivered, opened and clicked; one failed for
    /// good; and one push sent eight days ago (outside a 7-day report).
    async fn log(dir: &std::path::Path) -> Arc<dyn TopicLog> {
        let db = Arc::new(EmbeddedDb::open(dir, EmbeddedOptions::default()).unwrap());
        db.ensure_topic(topic::EVENTS, 2).await.unwrap();
        let now = now_ms();
        let event = |n: usize, route: Route, kind: EventKind, reason: Option<&str>, at: u64| {
            let notification = NotificationId(format!("n-{n}"));
            let delivery = DeliveryId::derive(&notification, route.as_str(), "a");
            let mut e = DeliveryEvent::new(&notification, "c", "u", kind, None, reason.map(String::from), at)
                .for_delivery(&delivery, route, 1);
            e.template = Some("promo".into());
            e.requested_at_ms = Some(at);
            e
        };
        let mut events = Vec::new();
        for n in 0..3 {
            events.push(event(n, Route::Email, EventKind::Sent, None, now));
        }
        events.push(event(3, Route::Email, EventKind::Failed, Some("bad_address:550"), now));
        events.push(event(0, Route::Email, EventKind::Delivered, None, now));
        events.push(event(0, Route::Email, EventKind::Opened, None, now));
        events.push(event(0, Route::Email, EventKind::Clicked, None, now));
        events.push(event(9, Route::Fcm, EventKind::Sent, None, now - 8 * 86_400_000));
        db.append(event_appends(&events, 2)).await.unwrap();
        db
    }

    async fn report(dir: &std::path::Path, log: &Arc<dyn TopicLog>, report: Report) -> serde_json::Value {
        let root = dir.join("events");
        let source = EventSource { root: &root, log, partitions: 2 };
        let answer = run(&source, &report.sql(7), Limits::default()).await.unwrap();
        serde_json::from_str(&render(&answer, Format::Json).unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_report_runs_and_counts_the_last_days() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path()).await;
        let delivery = report(dir.path(), &log, Report::Delivery).await;
        assert_eq!(delivery.as_array().unwrap().len(), 1, "the push is older than 7 days: {delivery}");
        let row = &delivery[0];
        assert_eq!(
            (&row["channel"], &row["deliveries"], &row["sent"]),
            (&"email".into(), &4.into(), &3.into()),
            "{row}"
        );
        assert_eq!(
            (&row["delivered"], &row["failed"], &row["sent_pct"]),
            (&1.into(), &1.into(), &75.0.into()),
            "{row}"
        );
        let failures = report(dir.path(), &log, Report::Failures).await;
        assert_eq!(failures[0]["reason"], "bad_address:550", "{failures}");
        assert_eq!(failures[0]["events"], 1, "{failures}");
        let funnel = report(dir.path(), &log, Report::Funnel).await;
        let row = &funnel[0];
        assert_eq!(
            (&row["template"], &row["requested"], &row["sent"]),
            (&"promo".into(), &4.into(), &3.into()),
            "{row}"
        );
        assert_eq!((&row["opened"], &row["clicked"], &row["open_pct"]), (&1.into(), &1.into(), &33.3.into()), "{row}");
    }
}
