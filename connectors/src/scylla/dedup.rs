//! [`DedupStore`] on `dedup`: a claim is an `INSERT … IF NOT EXISTS`; the answer names the holder
//! when the key is taken, and [`judge`] decides from the holder's stored expiry.

use super::ScyllaError;
use super::state::{CAS_ATTEMPTS, ScyllaState, cas_backoff, each_in_key_order};
use super::statements::Stmt;
use super::values::{LwtRow, bigint, ttl_until};
use async_trait::async_trait;
use herald_schemas::ids::NotificationId;
use herald_schemas::store::{DedupClaim, DedupDecision, DedupStore, StoreError};

const TABLE: &str = "dedup";

/// Who holds a key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub notification: NotificationId,
    pub expires_at_ms: u64,
}

/// What a claim on a held key comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Decided(DedupDecision),
    /// The holder's claim expired (its row outlives it by the TTL's grace): take the key over, if
    /// the holder is still the same when the conditional update runs.
    TakeOver,
}

/// The embedded store's rule: a live claim is a replay for its own notification and a duplicate
/// for any other; an expired one (`expires_at_ms <= now_ms`) is free for anyone.
pub fn judge(holder: &Holder, claim: &DedupClaim, now_ms: u64) -> Judgement {
    if holder.expires_at_ms <= now_ms {
        Judgement::TakeOver
    } else if holder.notification == claim.notification {
        Judgement::Decided(DedupDecision::Replay)
    } else {
        Judgement::Decided(DedupDecision::Duplicate { original: holder.notification.clone() })
    }
}

/// The holder in a claim's answer (`None`: no row).
pub fn holder_of(row: &LwtRow) -> Result<Option<Holder>, String> {
    match (row.text("notification")?, row.bigint("expires_at_ms")?) {
        (Some(notification), Some(expires_at_ms)) => Ok(Some(Holder {
            notification: NotificationId(notification.to_string()),
            expires_at_ms: u64::try_from(expires_at_ms).map_err(|_| format!("negative expiry {expires_at_ms}"))?,
        })),
        (None, None) => Ok(None),
        _ => Err("a claim with only one of notification and expires_at_ms".into()),
    }
}

impl ScyllaState {
    async fn claim_one(&self, claim: &DedupClaim, now_ms: u64) -> Result<DedupDecision, ScyllaError> {
        let key = claim.key.as_str();
        let notification = claim.notification.0.as_str();
        let expires = bigint("expires_at_ms", claim.expires_at_ms)?;
        let ttl = ttl_until(claim.expires_at_ms, now_ms);
        let unreadable = |detail: String| ScyllaError::corrupt(TABLE, format!("key {key:?}: {detail}"));
        for round in 0..CAS_ATTEMPTS {
            cas_backoff(round).await;
            let answer = self.lwt(Stmt::DedupInsert, (key, notification, expires, ttl)).await?;
            if answer.applied {
                return Ok(DedupDecision::First);
            }
            let holder = holder_of(&answer)
                .map_err(unreadable)?
                .ok_or_else(|| unreadable("a refused claim names no holder".into()))?;
            match judge(&holder, claim, now_ms) {
                Judgement::Decided(decision) => return Ok(decision),
                Judgement::TakeOver => {
                    let held_until = bigint("expires_at_ms", holder.expires_at_ms)?;
                    let values = (ttl, notification, expires, key, holder.notification.0.as_str(), held_until);
                    if self.lwt(Stmt::DedupTakeOver, values).await?.applied {
                        return Ok(DedupDecision::First);
                    }
                    // Another claim took it over first, or the row's TTL ran out: claim again.
                }
            }
        }
        Err(ScyllaError::Contention { table: TABLE, key: key.to_string(), attempts: CAS_ATTEMPTS })
    }
}

#[async_trait]
impl DedupStore for ScyllaState {
    /// Claims of one key run in order (a later one sees the earlier), distinct keys concurrently.
    async fn claim(&self, claims: &[DedupClaim], now_ms: u64) -> Result<Vec<DedupDecision>, StoreError> {
        let decisions = each_in_key_order(claims, |c| c.key.as_str(), |claim| self.claim_one(claim, now_ms)).await?;
        Ok(decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::scylla::value::CqlValue;

    fn nid(s: &str) -> NotificationId {
        NotificationId(s.to_string())
    }

    fn claim(notification: &str, expires_at_ms: u64) -> DedupClaim {
        DedupClaim { key: "k1".into(), notification: nid(notification), expires_at_ms }
    }

    #[test]
    fn a_live_claim_is_a_replay_for_its_notification_and_a_duplicate_for_others() {
        let holder = Holder { notification: nid("n1"), expires_at_ms: 1_000 };
        assert_eq!(judge(&holder, &claim("n1", 2_000), 999), Judgement::Decided(DedupDecision::Replay));
        assert_eq!(
            judge(&holder, &claim("n2", 2_000), 100),
            Judgement::Decided(DedupDecision::Duplicate { original: nid("n1") })
        );
    }

    #[test]
    fn at_its_expiry_a_key_is_free_for_anyone_even_its_holder() {
        let holder = Holder { notification: nid("n1"), expires_at_ms: 1_000 };
        assert_eq!(judge(&holder, &claim("n2", 2_000), 1_000), Judgement::TakeOver);
        assert_eq!(judge(&holder, &claim("n1", 2_000), 1_500), Judgement::TakeOver);
    }

    #[test]
    fn the_holder_is_read_from_a_refused_claims_answer() {
        let names = vec!["[applied]".to_string(), "dedup_key".into(), "expires_at_ms".into(), "notification".into()];
        let refused = LwtRow::new(
            names.clone(),
            vec![
                Some(CqlValue::Boolean(false)),
                Some(CqlValue::Text("k1".into())),
                Some(CqlValue::BigInt(1_000)),
                Some(CqlValue::Text("n1".into())),
            ],
        )
        .unwrap();
        assert_eq!(holder_of(&refused).unwrap(), Some(Holder { notification: nid("n1"), expires_at_ms: 1_000 }));

        let empty = LwtRow::new(names.clone(), vec![Some(CqlValue::Boolean(true)), None, None, None]).unwrap();
        assert_eq!(holder_of(&empty).unwrap(), None);

        let half = LwtRow::new(
            names.clone(),
            vec![Some(CqlValue::Boolean(false)), None, None, Some(CqlValue::Text("n".into()))],
        );
        assert!(holder_of(&half.unwrap()).is_err());
        let negative = LwtRow::new(
            names,
            vec![Some(CqlValue::Boolean(false)), None, Some(CqlValue::BigInt(-1)), Some(CqlValue::Text("n".into()))],
        );
        assert!(holder_of(&negative.unwrap()).is_err());
    }
}
