//! Identifiers.
//!
//! A notification id is assigned once, when a request is accepted; every id
//! derived from it (delivery ids, event ids) is a pure function of its inputs,
//! so a replayed record produces the same ids and idempotent consumers absorb
//! the replay.

use serde::{Deserialize, Serialize};
use std::fmt;
use xxhash_rust::xxh3::xxh3_128;

/// Identifies one accepted notification request (a UUIDv7, time ordered).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(pub String);

impl NotificationId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl NotificationId {
    /// The id of the digest a notification opens: a UUID (version 8) derived from the opening
    /// notification's id, so every backend names the same digest the same way.
    pub fn for_digest(first_member: &NotificationId) -> Self {
        let hash = xxh3_128(format!("digest\x1f{}", first_member.0).as_bytes());
        Self(uuid::Uuid::new_v8(hash.to_be_bytes()).to_string())
    }
}

impl NotificationId {
    /// The id of a broadcast's notification to one subscriber: a UUID (version 8) derived from
    /// the broadcast and the user, so fanning a broadcast out again yields the same ids.
    pub fn for_subscriber(broadcast: &NotificationId, user_id: &str) -> Self {
        let hash = xxh3_128(format!("broadcast\x1f{}\x1f{user_id}", broadcast.0).as_bytes());
        Self(uuid::Uuid::new_v8(hash.to_be_bytes()).to_string())
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one delivery: one notification to one target.
///
/// Derived from the notification id, the route and the target address, so a
/// replay of the same notification yields the same delivery ids and the
/// dispatcher ledger recognises them. It starts with the notification id
/// (time-ordered), so ledger keys arrive in near order and the LSM under the
/// embedded ledger flushes and compacts them cheaply; the tail is a hash of
/// route and address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub String);

impl DeliveryId {
    pub fn derive(notification: &NotificationId, route: &str, address: &str) -> Self {
        let tail = hash_hex(&[route.as_bytes(), address.as_bytes()]);
        Self(format!("{}.{}", notification.0, &tail[..16]))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 128-bit hex digest of the parts, separated so that ("ab","c") != ("a","bc").
/// A 128-bit fingerprint of an id: what a set of recently seen ids keeps instead of the id.
pub fn fingerprint(id: &str) -> u128 {
    xxh3_128(id.as_bytes())
}

pub fn hash_hex(parts: &[&[u8]]) -> String {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        buf.extend_from_slice(part);
        buf.push(0x1f);
    }
    format!("{:032x}", xxh3_128(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let n = NotificationId("n1".into());
        assert_eq!(DeliveryId::derive(&n, "apns", "t1"), DeliveryId::derive(&n, "apns", "t1"));
        assert_ne!(DeliveryId::derive(&n, "apns", "t1"), DeliveryId::derive(&n, "fcm", "t1"));
        assert_ne!(
            DeliveryId::derive(&n, "apns", "t1"),
            DeliveryId::derive(&NotificationId("n2".into()), "apns", "t1")
        );
        assert!(DeliveryId::derive(&n, "apns", "t1").0.starts_with("n1."));
        assert_ne!(hash_hex(&[b"ab", b"c"]), hash_hex(&[b"a", b"bc"]));
    }

    #[test]
    fn digest_ids_are_derived_uuids() {
        let first = NotificationId::generate();
        let digest = NotificationId::for_digest(&first);
        assert_eq!(digest, NotificationId::for_digest(&first));
        assert_ne!(digest, first);
        assert_eq!(uuid::Uuid::parse_str(&digest.0).map(|u| u.get_version_num()).ok(), Some(8));
    }

    #[test]
    fn generated_ids_are_unique() {
        assert_ne!(NotificationId::generate(), NotificationId::generate());
    }
}
