//! [`OffsetStore`] on `offsets`: one partition per (group, topic, partition), plain writes. Each
//! partition is committed by one task, in order, and the session's monotonic client timestamps
//! keep a late retry of an older commit from overwriting a newer one.

use super::state::{ScyllaState, each};
use super::statements::Stmt;
use super::values::{bigint, int, unsigned};
use async_trait::async_trait;
use herald_schemas::store::{OffsetStore, StoreError};
use herald_schemas::topic::Commit;
use std::collections::HashMap;

const TABLE: &str = "offsets";

/// The commits to write: the last of each (group, topic, partition) in the call, which the
/// committing task made after the others.
pub fn last_commits(commits: &[Commit]) -> Vec<&Commit> {
    fn key(c: &Commit) -> (&str, &str, u32) {
        (c.group.as_str(), c.topic.as_str(), c.partition)
    }
    let mut last: HashMap<(&str, &str, u32), usize> = HashMap::new();
    for (i, c) in commits.iter().enumerate() {
        last.insert(key(c), i);
    }
    commits.iter().enumerate().filter(|(i, c)| last.get(&key(c)) == Some(i)).map(|(_, c)| c).collect()
}

#[async_trait]
impl OffsetStore for ScyllaState {
    async fn save_offsets(&self, commits: &[Commit]) -> Result<(), StoreError> {
        let latest = last_commits(commits);
        each(&latest, |c| async move {
            let partition = int("partition", c.partition)?;
            let next = bigint("next_offset", c.next_offset)?;
            self.write(Stmt::OffsetUpsert, (c.group.as_str(), c.topic.as_str(), partition, next)).await
        })
        .await?;
        Ok(())
    }

    async fn load_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, StoreError> {
        let partition = int("partition", partition)?;
        match self.select_one::<(i64,)>(Stmt::OffsetSelect, (group, topic, partition)).await? {
            Some((next,)) => Ok(Some(unsigned(TABLE, next)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, partition: u32, next_offset: u64) -> Commit {
        Commit { group: group.into(), topic: "herald-requests".into(), partition, next_offset }
    }

    #[test]
    fn only_the_last_commit_of_each_partition_is_written() {
        let commits = [commit("g", 0, 10), commit("g", 1, 5), commit("g", 0, 12), commit("h", 0, 3)];
        let latest: Vec<&Commit> = last_commits(&commits);
        assert_eq!(latest, [&commits[1], &commits[2], &commits[3]]);
    }
}
