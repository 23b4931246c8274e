//! [`Membership`] on `workers` and `leases`, under the cluster name of the options.
//!
//! A worker is alive while its heartbeat row lives (a TTL per heartbeat). A lease is a row whose
//! `owner` is set only through lightweight transactions, so two workers can never both be told
//! they hold a partition: taking a free lease is `INSERT … IF NOT EXISTS USING TTL`, renewing
//! one's own is `UPDATE … USING TTL … IF owner = ?` (the row's TTL starts again), giving it back is
//! `DELETE … IF owner = ?`. A lease of a dead worker frees itself when its TTL runs out. TTLs are
//! whole seconds, rounded up.

use super::ScyllaError;
use super::state::{CAS_ATTEMPTS, ScyllaState, cas_backoff};
use super::statements::Stmt;
use super::values::{int, ttl_secs};
use async_trait::async_trait;
use herald_schemas::store::{Membership, StoreError};
use std::time::Duration;

const TABLE: &str = "leases";

/// What a refused `INSERT … IF NOT EXISTS` of a lease leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// The worker holds it already: renew it.
    Renew,
    /// Another worker holds it.
    Taken,
    /// The lease vanished between the two (its TTL ran out): try to take it again.
    Retry,
}

pub fn lease_step(owner: Option<&str>, worker: &str) -> LeaseStep {
    match owner {
        Some(owner) if owner == worker => LeaseStep::Renew,
        Some(_) => LeaseStep::Taken,
        None => LeaseStep::Retry,
    }
}

#[async_trait]
impl Membership for ScyllaState {
    async fn heartbeat(&self, worker: &str, ttl: Duration) -> Result<(), StoreError> {
        let cluster = self.options().cluster.as_str();
        self.write(Stmt::WorkerHeartbeat, (cluster, worker, ttl_secs(ttl))).await?;
        Ok(())
    }

    async fn live_workers(&self) -> Result<Vec<String>, StoreError> {
        let cluster = self.options().cluster.as_str();
        let rows: Vec<(String,)> = self.select_all(Stmt::WorkerSelect, (cluster,)).await?;
        let mut workers: Vec<String> = rows.into_iter().map(|(worker,)| worker).collect();
        // Already in clustering order (UTF-8 bytes, as `str` orders); sorted again so the promise
        // does not rest on the table's definition.
        workers.sort();
        Ok(workers)
    }

    async fn leave(&self, worker: &str) -> Result<(), StoreError> {
        let cluster = self.options().cluster.as_str();
        self.write(Stmt::WorkerLeave, (cluster, worker)).await?;
        Ok(())
    }

    async fn acquire_lease(&self, partition: u32, worker: &str, ttl: Duration) -> Result<bool, StoreError> {
        let cluster = self.options().cluster.as_str();
        let partition_id = int("partition", partition)?;
        let ttl = ttl_secs(ttl);
        for round in 0..CAS_ATTEMPTS {
            cas_backoff(round).await;
            let answer = self.lwt(Stmt::LeaseInsert, (cluster, partition_id, worker, ttl)).await?;
            if answer.applied {
                return Ok(true);
            }
            let owner = answer.text("owner").map_err(|detail| ScyllaError::corrupt(TABLE, detail))?;
            match lease_step(owner, worker) {
                LeaseStep::Taken => return Ok(false),
                LeaseStep::Renew => {
                    if self.lwt(Stmt::LeaseRenew, (ttl, worker, cluster, partition_id, worker)).await?.applied {
                        return Ok(true);
                    }
                    // It expired meanwhile (and may be someone else's now): start over.
                }
                LeaseStep::Retry => {}
            }
        }
        let key = format!("{}/{partition}", self.options().cluster);
        Err(ScyllaError::Contention { table: TABLE, key, attempts: CAS_ATTEMPTS }.into())
    }

    async fn release_lease(&self, partition: u32, worker: &str) -> Result<(), StoreError> {
        let cluster = self.options().cluster.as_str();
        let partition_id = int("partition", partition)?;
        // Not applied: not this worker's lease (any more); nothing to do.
        self.lwt(Stmt::LeaseRelease, (cluster, partition_id, worker)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_lease_is_renewed_only_by_its_owner() {
        assert_eq!(lease_step(Some("w1"), "w1"), LeaseStep::Renew);
        assert_eq!(lease_step(Some("w2"), "w1"), LeaseStep::Taken);
        assert_eq!(lease_step(None, "w1"), LeaseStep::Retry);
    }

    #[test]
    fn lease_ttls_are_whole_seconds_rounded_up() {
        assert_eq!(ttl_secs(Duration::from_millis(1_500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(10)), 10);
    }
}
