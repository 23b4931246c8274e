//! Encoding of records on internal topics: one version byte, then the body.
//!
//! Version 2 (written) is MessagePack with field names, so optional fields
//! may be absent and fields may be added; version 1 (JSON) is still read.
//! The version byte lets a release change the body while still reading what
//! an older release left in a topic.

use serde::Serialize;
use serde::de::DeserializeOwned;

const V1_JSON: u8 = 1;
const V2_MSGPACK: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown record encoding version {0}")]
    UnknownVersion(u8),
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("malformed record: {0}")]
    MalformedBinary(#[from] rmp_serde::decode::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(V2_MSGPACK);
    // Serializing our own types to a Vec cannot fail: no I/O, and every type is plain data.
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .expect("internal record types serialize to MessagePack");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&V2_MSGPACK, body)) => Ok(rmp_serde::from_slice(body)?),
        Some((&V1_JSON, body)) => Ok(serde_json::from_slice(body)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let bytes = encode(&vec![1, 2, 3]);
        assert_eq!(decode::<Vec<i32>>(&bytes).unwrap(), vec![1, 2, 3]);
        assert!(matches!(decode::<Vec<i32>>(&[9, b'1']), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode::<Vec<i32>>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<Vec<i32>>(&[1, b'{']), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<Vec<i32>>(&[2, 0xc1]), Err(CodecError::MalformedBinary(_))));
        // Version 1 (JSON) written by an earlier release is still read.
        assert_eq!(decode::<Vec<i32>>(b"\x01[4,5]").unwrap(), vec![4, 5]);
    }

    #[test]
    fn every_internal_record_type_round_trips() {
        use crate::contacts::Platform;
        use crate::job::{DeliveryJob, Target};
        use crate::request::{ChannelKind, NotificationRequest, RequestEnvelope};
        use crate::{DeliveryEvent, DeliveryId, EventKind, NotificationId, RenderedContent, job::Route};
        let id = NotificationId("n".into());
        let envelope = RequestEnvelope {
            id: id.clone(),
            client_id: "c".into(),
            received_at_ms: 7,
            request: NotificationRequest {
                user_id: "u".into(),
                topic: None,
                template: "t".into(),
                data: serde_json::json!({"a": [1, 2.5, null, {"b": "x"}], "c": true}),
                channels: vec![ChannelKind::Push, ChannelKind::Email],
                fallback: Vec::new(),
                category: "marketing".into(),
                idempotency_key: None,
                locale: Some("ko-KR".into()),
                send_at: Some("2026-12-24T18:00:00+09:00".into()),
                expires_at: None,
                ttl: Some("1h".into()),
                digest: Some(crate::request::DigestSpec {
                    key: "k".into(),
                    window: "10m".into(),
                    template: "t-digest".into(),
                }),
            },
            send_at_ms: Some(9),
            expires_at_ms: Some(10),
            quiet_released: true,
            digest_of: Some(3),
        };
        assert_eq!(decode::<RequestEnvelope>(&encode(&envelope)).unwrap(), envelope);
        let job = DeliveryJob {
            delivery_id: DeliveryId("d".into()),
            notification_id: id.clone(),
            client_id: "c".into(),
            user_id: "u".into(),
            category: "general".into(),
            template: "t".into(),
            locale: "en".into(),
            target: Target::Device { device_id: "d1".into(), platform: Platform::Web, token: "{}".into() },
            content: RenderedContent::Email { subject: "s".into(), text: "t".into(), html: "<b>h</b>".into() },
            attempt: 1,
            requested_at_ms: 9,
            expires_at_ms: None,
            fallback: None,
        };
        assert_eq!(decode::<DeliveryJob>(&encode(&job)).unwrap(), job);
        let event = DeliveryEvent::new(&id, "c", "u", EventKind::OptedOut, Some(ChannelKind::Sms), Some("r".into()), 3)
            .for_delivery(&DeliveryId("d".into()), Route::Sms, 2);
        assert_eq!(decode::<DeliveryEvent>(&encode(&event)).unwrap(), event);
        let bare = DeliveryEvent::new(&id, "c", "u", EventKind::Accepted, None, None, 3);
        assert_eq!(decode::<DeliveryEvent>(&encode(&bare)).unwrap(), bare);
    }
}
