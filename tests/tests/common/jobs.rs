//! Delivery jobs for the connector tests, which call a channel directly (no server).

use herald_schemas::{DeliveryId, DeliveryJob, NotificationId, RenderedContent, Target};

/// Job `n` to `target` with `content`, in `category`; its delivery id is derived as the fan-out
/// derives it.
pub fn job(n: u32, route: &str, target: Target, content: RenderedContent, category: &str) -> DeliveryJob {
    let notification_id = NotificationId(format!("n-{n}"));
    DeliveryJob {
        delivery_id: DeliveryId::derive(&notification_id, route, target.address()),
        notification_id,
        client_id: "c".into(),
        user_id: format!("u-{n}"),
        category: category.into(),
        template: "t".into(),
        locale: "en".into(),
        target,
        content,
        attempt: 1,
        requested_at_ms: 0,
        expires_at_ms: None,
        fallback: None,
    }
}
