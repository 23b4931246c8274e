//! The dead-letter queue, `herald-dead`: what is in it, and replaying it.
//!
//! A delivery lands there once per failure: permanently refused, or out of attempts or time
//! (see [`herald_stages::retry`]). [`open_letters`] lists the latest letter of each delivery the
//! ledger does not have as sent, so a delivery replayed and then sent drops out of the list, and
//! one that failed again appears once, with its latest reason.
//!
//! [`replay`] makes each letter's delivery sendable again in the ledger and appends its job to the
//! delivery topic with a fresh retry budget (attempt 1, age counted from the replay). A delivery
//! sent meanwhile is skipped. A replay cut short (a crash between the ledger and the append)
//! leaves its letters listed, and replaying again enqueues them; a copy enqueued twice is sent
//! once, since the dispatcher's ledger sends a delivery id at most once.

use herald_schemas::codec;
use herald_schemas::job::DeadLetter;
use herald_schemas::stage::now_ms;
use herald_schemas::store::{LedgerState, LedgerStore, StoreError};
use herald_schemas::topic::{self, LogError, TopicLog};
use herald_schemas::{DeliveryId, DeliveryJob};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("herald-dead partition {partition} offset {offset} does not decode: {detail}")]
    Corrupt { partition: u32, offset: u64, detail: String },
}

/// Every letter on `herald-dead`, partition by partition, in offset order.
pub async fn all_letters(log: &dyn TopicLog) -> Result<Vec<DeadLetter>, DlqError> {
    let mut letters = Vec::new();
    for partition in 0..log.partition_count(topic::DEAD).await? {
        let end = log.end_offset(topic::DEAD, partition).await?;
        let mut next = 0;
        while next < end {
            let records = log.read(topic::DEAD, partition, next, 10_000, Duration::ZERO).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in records {
                let letter = codec::decode::<DeadLetter>(&record.value).map_err(|e| DlqError::Corrupt {
                    partition,
                    offset: record.offset,
                    detail: e.to_string(),
                })?;
                letters.push(letter);
            }
        }
    }
    Ok(letters)
}

/// The latest letter of each delivery not sent since, oldest first.
pub async fn open_letters(log: &dyn TopicLog, ledger: &dyn LedgerStore) -> Result<Vec<DeadLetter>, DlqError> {
    let mut latest: HashMap<DeliveryId, DeadLetter> = HashMap::new();
    for letter in all_letters(log).await? {
        match latest.get(&letter.job.delivery_id) {
            Some(seen) if seen.dead_at_ms > letter.dead_at_ms => {}
            _ => {
                latest.insert(letter.job.delivery_id.clone(), letter);
            }
        }
    }
    let letters: Vec<DeadLetter> = latest.into_values().collect();
    let ids: Vec<DeliveryId> = letters.iter().map(|l| l.job.delivery_id.clone()).collect();
    let states = ledger.states(&ids).await?;
    let mut open: Vec<DeadLetter> = letters
        .into_iter()
        .zip(states)
        .filter_map(|(letter, state)| (state != Some(LedgerState::Sent)).then_some(letter))
        .collect();
    open.sort_by(|a, b| (a.dead_at_ms, &a.job.delivery_id).cmp(&(b.dead_at_ms, &b.job.delivery_id)));
    Ok(open)
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Enqueued again.
    pub replayed: usize,
    /// Sent meanwhile: left alone.
    pub skipped: usize,
}

/// Replays `letters` in chunks, calling `progress` with the letters done so far.
pub async fn replay(
    log: &dyn TopicLog,
    ledger: &dyn LedgerStore,
    letters: &[DeadLetter],
    partitions: u32,
    progress: impl Fn(usize),
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    for (n, chunk) in letters.chunks(1_000).enumerate() {
        let ids: Vec<DeliveryId> = chunk.iter().map(|l| l.job.delivery_id.clone()).collect();
        let states = ledger.states(&ids).await?;
        ledger.reopen_failed(&ids).await?;
        let now = now_ms();
        let jobs: Vec<DeliveryJob> = chunk
            .iter()
            .zip(&states)
            .filter(|(_, state)| **state != Some(LedgerState::Sent))
            .map(|(letter, _)| DeliveryJob { attempt: 1, requested_at_ms: now, ..letter.job.clone() })
            .collect();
        report.replayed += jobs.len();
        report.skipped += chunk.len() - jobs.len();
        // Durable before the next chunk: a crash leaves at most this chunk reopened and not
        // enqueued, still listed, and a second replay enqueues it.
        log.append(crate::runtime::requests::job_appends(&jobs, partitions)).await?;
        progress((n * 1_000 + chunk.len()).min(letters.len()));
    }
    tracing::info!(replayed = report.replayed, skipped = report.skipped, "dead letters replayed");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::dispatch::tests::job;
    use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
    use herald_schemas::job::Route;
    use herald_schemas::topic::Record;

    async fn dead(db: &EmbeddedDb, body: &str, at: u64, reason: &str) -> DeadLetter {
        let letter =
            DeadLetter { job: job(body), reason: reason.into(), last_error: "http 400".into(), dead_at_ms: at };
        let record = Record { key: b"u".to_vec(), value: codec::encode(&letter) };
        db.append(vec![topic::Append { topic: topic::DEAD.into(), partition: 0, records: vec![record] }])
            .await
            .unwrap();
        db.record_deliveries(&[(letter.job.delivery_id.clone(), LedgerState::Failed)], None).await.unwrap();
        letter
    }

    #[tokio::test]
    async fn lists_the_latest_open_letter_per_delivery_and_replays_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).unwrap();
        for name in [topic::DEAD, Route::Apns.topic(), Route::Apns.priority_topic()] {
            db.ensure_topic(name, 1).await.unwrap();
        }
        dead(&db, "a", 10, "permanent:first").await;
        let a = dead(&db, "a", 20, "permanent:again").await;
        let b = dead(&db, "b", 15, "dead:gave up after 100 attempts").await;
        let c = dead(&db, "c", 5, "permanent:x").await;
        // c was delivered since (a replay that went out): no longer listed.
        db.record_deliveries(&[(c.job.delivery_id.clone(), LedgerState::Sent)], None).await.unwrap();

        let open = open_letters(&db, &db).await.unwrap();
        let reasons: Vec<&str> = open.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons, ["dead:gave up after 100 attempts", "permanent:again"]);

        let done = std::sync::Mutex::new(Vec::new());
        let report = replay(&db, &db, &open, 1, |n| done.lock().unwrap().push(n)).await.unwrap();
        assert_eq!(report, ReplayReport { replayed: 2, skipped: 0 });
        assert_eq!(*done.lock().unwrap(), [2]);
        // Transactional letters go back to the priority lane.
        let queued = db.read(Route::Apns.priority_topic(), 0, 0, 10, Duration::ZERO).await.unwrap();
        let jobs: Vec<DeliveryJob> = queued.iter().map(|r| codec::decode(&r.value).unwrap()).collect();
        assert_eq!(jobs.len(), 2);
        assert!(jobs.iter().all(|j| j.attempt == 1 && j.requested_at_ms > 1_000));
        // Reopened in the ledger, so the dispatcher sends them; still listed until sent.
        let states = db.states(&[a.job.delivery_id.clone(), b.job.delivery_id.clone()]).await.unwrap();
        assert_eq!(states, [None, None]);
        assert_eq!(open_letters(&db, &db).await.unwrap().len(), 2);

        // Once a is sent, a replay of everything leaves it alone.
        db.record_deliveries(&[(a.job.delivery_id.clone(), LedgerState::Sent)], None).await.unwrap();
        let report = replay(&db, &db, &[a, b], 1, |_| {}).await.unwrap();
        assert_eq!(report, ReplayReport { replayed: 1, skipped: 1 });
    }
}
