//! Dedup: drop a repeat of the same notification inside a window.
//!
//! Contract:
//! - The key is `client_id` + `U+001F` + `idempotency_key`, or the
//!   notification id when the request has no key (which still absorbs a
//!   replayed record). Client ids never contain `U+001F` and notification ids
//!   never do, so the two forms cannot collide.
//! - One [`DedupStore::claim`] per batch, in batch order, each claim held until
//!   `now + window`; the store is durable before it answers, so the window
//!   survives restarts.
//! - `First` and `Replay` go on. `Replay` is the same notification claiming its
//!   own key again (a crash replay from the last committed offset): it must
//!   pass so its outputs are produced again, under the same derived ids.
//! - `Duplicate` stops the item with a `deduplicated` event whose reason is
//!   `duplicate_of:<original notification id>` (never the key, which is the
//!   producer's and may be sensitive).

use crate::{short_answer, store_error};
use async_trait::async_trait;
use herald_schemas::store::{DedupClaim, DedupDecision, DedupStore};
use herald_schemas::{Clock, DeliveryEvent, EventKind, RequestEnvelope, Stage, StageError, StageOutput, WorkItem};
use std::sync::Arc;
use std::time::Duration;

/// The window used when configuration does not say otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The dedup key of a request (see the module doc).
pub fn dedup_key(envelope: &RequestEnvelope) -> String {
    match &envelope.request.idempotency_key {
        Some(key) => {
            let mut k = String::with_capacity(envelope.client_id.len() + 1 + key.len());
            k.push_str(&envelope.client_id);
            k.push('\u{1f}');
            k.push_str(key);
            k
        }
        None => envelope.id.0.clone(),
    }
}

/// Drops repeats inside the window.
pub struct DedupStage {
    store: Arc<dyn DedupStore>,
    window: Duration,
    clock: Arc<dyn Clock>,
}

impl DedupStage {
    /// A stage claiming keys in `store` for `window` (usually [`DEFAULT_WINDOW`]).
    pub fn new(store: Arc<dyn DedupStore>, window: Duration, clock: Arc<dyn Clock>) -> Self {
        Self { store, window, clock }
    }

    /// The window claims are held for.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[async_trait]
impl Stage for DedupStage {
    fn name(&self) -> &'static str {
        "dedup"
    }

    async fn process(&mut self, batch: Vec<WorkItem>, out: &mut StageOutput) -> Result<(), StageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let window_ms = self.window.as_millis().min(u128::from(u64::MAX)) as u64;
        let expires_at_ms = now.saturating_add(window_ms);
        let claims: Vec<DedupClaim> = batch
            .iter()
            .map(|item| DedupClaim {
                key: dedup_key(&item.envelope),
                notification: item.envelope.id.clone(),
                expires_at_ms,
            })
            .collect();
        let decisions = self.store.claim(&claims, now).await.map_err(|e| store_error("dedup", e))?;
        if decisions.len() != claims.len() {
            return Err(short_answer("dedup", "dedup", claims.len(), decisions.len()));
        }
        out.items.reserve(batch.len());
        for (item, decision) in batch.into_iter().zip(decisions) {
            match decision {
                DedupDecision::First | DedupDecision::Replay => out.items.push(item),
                DedupDecision::Duplicate { original } => {
                    let e = &item.envelope;
                    out.events.push(DeliveryEvent::new(
                        &e.id,
                        &e.client_id,
                        &e.request.user_id,
                        EventKind::Deduplicated,
                        None,
                        Some(format!("duplicate_of:{original}")),
                        now,
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Dedup};
    use herald_schemas::ChannelKind;
    use herald_schemas::stage::ManualClock;
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;

    fn keyed(id: &str, key: Option<&str>) -> WorkItem {
        let mut r = fakes::request("u1", "t", &[ChannelKind::Push]);
        r.idempotency_key = key.map(str::to_string);
        fakes::item(id, r)
    }

    fn setup() -> (Arc<Dedup>, ManualClock, DedupStage) {
        let store = Arc::new(Dedup::default());
        let clock = ManualClock::new(10_000);
        let stage = DedupStage::new(store.clone(), Duration::from_secs(3600), Arc::new(clock.clone()));
        (store, clock, stage)
    }

    async fn ids(stage: &mut DedupStage, batch: Vec<WorkItem>) -> (Vec<String>, Vec<String>) {
        let mut out = StageOutput::default();
        stage.process(batch, &mut out).await.unwrap();
        let passed = out.items.iter().map(|i| i.envelope.id.0.clone()).collect();
        let reasons =
            out.events.iter().map(|e| format!("{}:{}", e.notification_id, e.reason.clone().unwrap())).collect();
        (passed, reasons)
    }

    #[test]
    fn keys_are_scoped_by_client_or_fall_back_to_the_id() {
        let a = keyed("n1", Some("k"));
        let mut b = keyed("n2", Some("k"));
        assert_eq!(dedup_key(&a.envelope), "client-a\u{1f}k");
        b.envelope.client_id = "client-b".into();
        assert_ne!(dedup_key(&a.envelope), dedup_key(&b.envelope));
        assert_eq!(dedup_key(&keyed("n3", None).envelope), "n3");
    }

    #[tokio::test]
    async fn a_duplicate_inside_the_window_stops_even_within_one_batch() {
        let (store, _, mut stage) = setup();
        let (passed, reasons) = ids(&mut stage, vec![keyed("n1", Some("k")), keyed("n2", Some("k"))]).await;
        assert_eq!(passed, ["n1"]);
        assert_eq!(reasons, ["n2:duplicate_of:n1"]);
        let (passed, reasons) = ids(&mut stage, vec![keyed("n3", Some("k")), keyed("n4", Some("other"))]).await;
        assert_eq!(passed, ["n4"]);
        assert_eq!(reasons, ["n3:duplicate_of:n1"]);
        assert_eq!(store.calls.load(Ordering::SeqCst), 2, "one claim call per batch");
    }

    #[tokio::test]
    async fn the_same_key_is_accepted_again_after_the_window() {
        let (_, clock, mut stage) = setup();
        assert_eq!(ids(&mut stage, vec![keyed("n1", Some("k"))]).await.0, ["n1"]);
        clock.advance_ms(3_600_000 - 1);
        assert_eq!(ids(&mut stage, vec![keyed("n2", Some("k"))]).await.0, Vec::<String>::new());
        clock.advance_ms(1);
        assert_eq!(ids(&mut stage, vec![keyed("n3", Some("k"))]).await.0, ["n3"]);
    }

    #[tokio::test]
    async fn a_replay_of_the_same_record_passes() {
        let (_, clock, mut stage) = setup();
        let batch = vec![keyed("n1", Some("k")), keyed("n2", None)];
        assert_eq!(ids(&mut stage, batch.clone()).await.0, ["n1", "n2"]);
        clock.advance_ms(60_000);
        let (passed, reasons) = ids(&mut stage, batch).await;
        assert_eq!(passed, ["n1", "n2"]);
        assert!(reasons.is_empty());
    }

    #[tokio::test]
    async fn a_store_failure_fails_the_batch() {
        let (store, _, mut stage) = setup();
        store.fail.store(true, Ordering::SeqCst);
        let mut out = StageOutput::default();
        assert!(stage.process(vec![keyed("n1", None)], &mut out).await.unwrap_err().is_retryable());
        assert!(out.items.is_empty() && out.events.is_empty());
    }

    proptest! {
        /// However sends of one key are spread over time, at most one new
        /// notification passes per window, and every replay of a passed one passes.
        #[test]
        fn at_most_one_new_notification_per_window(gaps in prop::collection::vec(0u64..3_000, 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = Arc::new(Dedup::default());
                let clock = ManualClock::new(0);
                let mut stage = DedupStage::new(store, Duration::from_millis(1_000), Arc::new(clock.clone()));
                let mut passed_at: Vec<(u64, String)> = Vec::new();
                for (i, gap) in gaps.iter().enumerate() {
                    clock.advance_ms(*gap);
                    let id = format!("n{i}");
                    let (passed, _) = ids(&mut stage, vec![keyed(&id, Some("k"))]).await;
                    if !passed.is_empty() {
                        if let Some((t, _)) = passed_at.last() {
                            prop_assert!(clock.now_ms() - t >= 1_000);
                        }
                        passed_at.push((clock.now_ms(), id.clone()));
                        let (again, _) = ids(&mut stage, vec![keyed(&id, Some("k"))]).await;
                        prop_assert_eq!(again, vec![id]);
                    }
                }
                prop_assert!(!passed_at.is_empty());
                Ok(())
            })?;
        }
    }
}
