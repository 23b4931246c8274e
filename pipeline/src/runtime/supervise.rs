//! Supervision: a failure replays from the last commit, like a crash.
//!
//! A chain of tasks (partition readers → stages → the committing sink) runs
//! under one cancellation token. When any task fails (a store or the log
//! returned an error), it stops; tasks after it drain and commit only what
//! came before the failed batch, tasks before it see their queue close. The
//! supervisor then waits with backoff and starts the chain again: readers
//! resume from the committed offsets and the idempotent stages absorb the
//! replay. There is no second recovery path to get wrong.

use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a task of a chain stopped.
#[derive(Debug, thiserror::Error)]
#[error("{task}: {source}")]
pub struct TaskFailed {
    pub task: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TaskFailed {
    pub fn new(task: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { task, source: Box::new(source) }
    }
}

pub type TaskResult = Result<(), TaskFailed>;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs the chain built by `start` until `shutdown`, restarting it after a failure.
pub async fn supervise<F>(name: &'static str, shutdown: CancellationToken, mut start: F)
where
    F: FnMut(CancellationToken, &mut JoinSet<TaskResult>),
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let token = shutdown.child_token();
        let mut tasks = JoinSet::new();
        start(token.clone(), &mut tasks);
        let mut failure: Option<String> = None;
        while let Some(joined) = tasks.join_next().await {
            let error = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(failed)) => failed.to_string(),
                Err(join_error) => format!("task panicked or was aborted: {join_error}"),
            };
            if failure.is_none() {
                tracing::error!(chain = name, %error, "chain task failed; replaying from the last commit");
                metrics::counter!(crate::telemetry::CHAIN_RESTARTS, "chain" => name).increment(1);
                failure = Some(error);
            }
            token.cancel();
        }
        if shutdown.is_cancelled() {
            tracing::info!(chain = name, "chain drained");
            return;
        }
        if failure.is_some() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[tokio::test(start_paused = true)]
    async fn restarts_after_a_failure_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        let stop = shutdown.clone();
        supervise("test", shutdown.clone(), move |token, tasks| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            tasks.spawn(async move {
                if n < 2 {
                    return Err(TaskFailed::new("t", Boom));
                }
                stop.cancel();
                token.cancelled().await;
                Ok(())
            });
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
