//! Delivery events as Arrow rows: the schema the analytics files (Parquet, `events/`) and SQL
//! tables use, and the builder that turns [`DeliveryEvent`]s into a [`RecordBatch`].
//!
//! One row per event. Low-cardinality text (channel, provider, status, template, locale,
//! category, client) is dictionary encoded: small in memory and in Parquet, and fast to group by.
//! Recipients are never stored: `recipient` is a keyed hash ([`RecipientHasher`]), the same for
//! one address within one installation, so "how many distinct recipients" can be answered
//! without anyone reading an address back.
//!
//! | column | type | null | meaning |
//! |---|---|---|---|
//! | `event_id` | utf8 | no | the event's id, derived from what it says (a replay repeats it) |
//! | `notification_id` | utf8 | no | the notification (UUIDv7, time ordered) |
//! | `delivery_id` | utf8 | yes | the delivery (one notification × one target), for delivery events |
//! | `client` | dict utf8 | no | the API client that sent the notification |
//! | `user_id` | utf8 | no | the recipient user |
//! | `channel` | dict utf8 | yes | `push`, `sms` or `email`; empty for events about the whole request |
//! | `provider` | dict utf8 | yes | the route a delivery went by: `apns`, `fcm`, `webpush`, `sms`, `email` |
//! | `template` | dict utf8 | yes | the template named by the request |
//! | `locale` | dict utf8 | yes | the locale of the template variant rendered |
//! | `category` | dict utf8 | yes | `transactional`, `marketing`, … (opt-outs and caps go by it) |
//! | `status` | dict utf8 | no | what happened: `accepted`, `sent`, `failed`, `delivered`, `opened`, … |
//! | `reason` | utf8 | yes | machine-readable reason (`invalid_phone`, `cap:marketing`, `http 410 …`) |
//! | `attempt` | uint32 | no | the delivery attempt (1 for the first send; 0 for request events) |
//! | `event_time` | timestamp ms UTC | no | when it happened |
//! | `request_time` | timestamp ms UTC | yes | when Herald accepted the notification |
//! | `latency_ms` | int64 | yes | `event_time − request_time` |
//! | `recipient` | utf8 | yes | keyed hash of the address (device token, phone, email), hex |

use crate::event::DeliveryEvent;
use arrow::array::{
    ArrayRef, Int64Builder, StringBuilder, StringDictionaryBuilder, TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use std::sync::{Arc, LazyLock};

fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static EVENT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("notification_id", DataType::Utf8, false),
        Field::new("delivery_id", DataType::Utf8, true),
        Field::new("client", dictionary(), false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("channel", dictionary(), true),
        Field::new("provider", dictionary(), true),
        Field::new("template", dictionary(), true),
        Field::new("locale", dictionary(), true),
        Field::new("category", dictionary(), true),
        Field::new("status", dictionary(), false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("attempt", DataType::UInt32, false),
        Field::new("event_time", timestamp(), false),
        Field::new("request_time", timestamp(), true),
        Field::new("latency_ms", DataType::Int64, true),
        Field::new("recipient", DataType::Utf8, true),
    ]))
});

/// The Arrow schema of an event row (see the module documentation for each column).
pub fn event_schema() -> SchemaRef {
    Arc::clone(&EVENT_SCHEMA)
}

/// Hashes recipient addresses with a key of the installation (HMAC-SHA-256, first 16 bytes, hex):
/// one address always gives the same value here, and the value does not give the address back
/// without the key.
#[derive(Clone)]
pub struct RecipientHasher {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for RecipientHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecipientHasher(..)")
    }
}

impl RecipientHasher {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self { key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_ref()) }
    }

    pub fn hash(&self, address: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, address.as_bytes());
        tag.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Rows of events, column by column, until [`EventRows::finish`] makes them a batch.
pub struct EventRows {
    event_id: StringBuilder,
    notification_id: StringBuilder,
    delivery_id: StringBuilder,
    client: StringDictionaryBuilder<Int32Type>,
    user_id: StringBuilder,
    channel: StringDictionaryBuilder<Int32Type>,
    provider: StringDictionaryBuilder<Int32Type>,
    template: StringDictionaryBuilder<Int32Type>,
    locale: StringDictionaryBuilder<Int32Type>,
    category: StringDictionaryBuilder<Int32Type>,
    status: StringDictionaryBuilder<Int32Type>,
    reason: StringBuilder,
    attempt: UInt32Builder,
    event_time: TimestampMillisecondBuilder,
    request_time: TimestampMillisecondBuilder,
    latency_ms: Int64Builder,
    recipient: StringBuilder,
    rows: usize,
}

impl Default for EventRows {
    fn default() -> Self {
        Self::new()
    }
}

impl EventRows {
    pub fn new() -> Self {
        Self {
            event_id: StringBuilder::new(),
            notification_id: StringBuilder::new(),
            delivery_id: StringBuilder::new(),
            client: StringDictionaryBuilder::new(),
            user_id: StringBuilder::new(),
            channel: StringDictionaryBuilder::new(),
            provider: StringDictionaryBuilder::new(),
            template: StringDictionaryBuilder::new(),
            locale: StringDictionaryBuilder::new(),
            category: StringDictionaryBuilder::new(),
            status: StringDictionaryBuilder::new(),
            reason: StringBuilder::new(),
            attempt: UInt32Builder::new(),
            event_time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            request_time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            latency_ms: Int64Builder::new(),
            recipient: StringBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one event; `recipient` is already hashed.
    pub fn push(&mut self, e: &DeliveryEvent) {
        self.event_id.append_value(&e.event_id);
        self.notification_id.append_value(&e.notification_id.0);
        self.delivery_id.append_option(e.delivery_id.as_ref().map(|d| d.0.as_str()));
        self.client.append_value(&e.client_id);
        self.user_id.append_value(&e.user_id);
        self.channel.append_option(e.channel.map(|c| c.as_str()));
        self.provider.append_option(e.route.map(|r| r.as_str()));
        self.template.append_option(e.template.as_deref());
        self.locale.append_option(e.locale.as_deref());
        self.category.append_option(e.category.as_deref());
        self.status.append_value(e.kind.as_str());
        self.reason.append_option(e.reason.as_deref());
        self.attempt.append_value(e.attempt);
        let at = i64::try_from(e.at_ms).unwrap_or(i64::MAX);
        self.event_time.append_value(at);
        let requested = e.requested_at_ms.and_then(|r| i64::try_from(r).ok());
        self.request_time.append_option(requested);
        self.latency_ms.append_option(requested.map(|r| at.saturating_sub(r)));
        self.recipient.append_option(e.recipient.as_deref());
        self.rows += 1;
    }

    /// The rows so far as one batch; the builder is empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.notification_id.finish()),
            Arc::new(self.delivery_id.finish()),
            Arc::new(self.client.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.template.finish()),
            Arc::new(self.locale.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.attempt.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.request_time.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.recipient.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(event_schema(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::ids::{DeliveryId, NotificationId};
    use crate::job::Route;
    use arrow::array::{Array, AsArray};

    #[test]
    fn events_become_rows_with_every_column() {
        let n = NotificationId("n-1".into());
        let accepted = DeliveryEvent::new(&n, "shop", "u1", EventKind::Accepted, None, None, 1_000);
        let mut sent = DeliveryEvent::new(&n, "shop", "u1", EventKind::Sent, None, None, 1_250).for_delivery(
            &DeliveryId("d-1".into()),
            Route::Sms,
            1,
        );
        sent.template = Some("welcome".into());
        sent.category = Some("transactional".into());
        sent.requested_at_ms = Some(1_000);
        sent.recipient = Some(RecipientHasher::new("k").hash("+821012345678"));
        let mut rows = EventRows::new();
        rows.push(&accepted);
        rows.push(&sent);
        assert_eq!(rows.len(), 2);
        let batch = rows.finish().unwrap();
        assert!(rows.is_empty());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), event_schema());
        let latency = batch.column_by_name("latency_ms").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert!(latency.is_null(0));
        assert_eq!(latency.value(1), 250);
        let status = batch.column_by_name("status").unwrap().as_dictionary::<Int32Type>();
        let values = status.values().as_string::<i32>();
        assert_eq!(values.value(status.keys().value(1) as usize), "sent");
        let recipient = batch.column_by_name("recipient").unwrap().as_string::<i32>();
        assert!(recipient.is_null(0));
        assert_eq!(recipient.value(1).len(), 32);
        assert!(!recipient.value(1).contains("8210"));
    }

    #[test]
    fn recipient_hashes_depend_on_the_key() {
        let a = RecipientHasher::new("one");
        assert_eq!(a.hash("a@example.org"), a.hash("a@example.org"));
        assert_ne!(a.hash("a@example.org"), a.hash("b@example.org"));
        assert_ne!(a.hash("a@example.org"), RecipientHasher::new("two").hash("a@example.org"));
    }
}
