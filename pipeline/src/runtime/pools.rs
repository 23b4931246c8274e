//! Two pools of threads, so that the kernel keeps transactional work ahead when the CPU is full.
//!
//! Tokio runs the tasks of one runtime fairly: under a marketing flood, a one-time password's
//! batch would wait its turn behind every marketing batch ready at that moment, however the
//! topics are split. So the worker runs on two runtimes:
//! - the process's own (the HTTP API's connections and its batches of only transactional items,
//!   the priority lane's request chain and dispatchers, the monitor), at the process's priority;
//! - the **bulk** runtime (the API's other batches, the normal lanes, retries, the scheduler,
//!   broadcasts, analytics, webhooks), whose threads run at a lower OS priority: `[pipeline] bulk_nice`, a Linux nice
//!   value (raising one's own nice value needs no privilege).
//!
//! When both have work, the kernel runs the main runtime's threads first (at nice 10 a thread
//! gets about a tenth of the CPU a nice-0 one gets); when the priority lane is idle, which is
//! nearly always, the bulk threads have every core.

use herald_connectors::channels::io;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Where the bulk work runs: a runtime of its own at a lower priority, or (with `bulk_nice = 0`)
/// the caller's runtime.
pub struct BulkPool {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl BulkPool {
    /// A runtime of `threads` workers at nice `nice`; with `nice` 0 the current runtime. Must be
    /// called within a Tokio runtime.
    pub fn start(nice: u8, threads: usize) -> std::io::Result<BulkPool> {
        if nice == 0 {
            return Ok(BulkPool { runtime: None, handle: Handle::current() });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("herald-bulk")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(BulkPool { runtime: Some(runtime), handle })
    }

    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether bulk work runs on threads of its own.
    pub fn is_separate(&self) -> bool {
        self.runtime.is_some()
    }
}

impl Drop for BulkPool {
    /// The tasks were awaited by then ([`super::Runtime::stop`]); what remains (a blocking read
    /// finishing) is not waited for, which dropping a runtime in async code would do and refuse.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Makes the calling thread a bulk thread: its nice value raised, its provider exchanges on the
/// bulk provider runtime (see `herald_connectors::channels::io`).
fn lower_priority(nice: u8) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(error) = io::enter_bulk(nice)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(%error, nice, "bulk threads run at the normal priority");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use herald_connectors::channels::io::thread_nice;

    fn current_nice() -> i32 {
        thread_nice().unwrap()
    }

    #[tokio::test]
    async fn bulk_tasks_run_on_threads_of_lower_priority() {
        let own = current_nice();
        let pool = BulkPool::start(7, 2).unwrap();
        assert!(pool.is_separate());
        let (nice, name) =
            pool.spawn(async { (current_nice(), std::thread::current().name().map(str::to_string)) }).await.unwrap();
        assert_eq!(name.as_deref(), Some("herald-bulk"));
        let blocking = pool.spawn(async { tokio::task::spawn_blocking(current_nice).await.unwrap() }).await.unwrap();
        // Below the caller's own nice value only a privileged process may go.
        if own <= 7 {
            assert_eq!(nice, 7);
            assert_eq!(blocking, 7, "the bulk runtime's blocking threads too");
        }
        assert_eq!(current_nice(), own, "the caller's thread is untouched");
        drop(pool);
    }

    /// The process's threads ask for a short scheduler slice (`main`); the bulk threads, started
    /// from such a thread, give it up.
    #[test]
    fn bulk_threads_give_up_the_short_slice() {
        use herald_connectors::channels::io::{SHORT_SLICE, set_thread_slice, thread_slice};
        let default = std::thread::spawn(|| thread_slice().unwrap()).join().unwrap();
        std::thread::spawn(move || {
            set_thread_slice(Some(SHORT_SLICE)).unwrap();
            if thread_slice().unwrap() != SHORT_SLICE {
                eprintln!("skipped: this kernel keeps no scheduler slice of a thread's own (Linux 6.12+ does)");
                return;
            }
            let caller = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (bulk, blocking) = caller.block_on(async {
                let pool = BulkPool::start(7, 1).unwrap();
                let bulk = pool.spawn(async { thread_slice().unwrap() }).await.unwrap();
                let blocking =
                    pool.spawn(async { tokio::task::spawn_blocking(|| thread_slice().unwrap()).await.unwrap() });
                (bulk, blocking.await.unwrap())
            });
            assert_eq!((bulk, blocking), (default, default));
            assert_eq!(thread_slice().unwrap(), SHORT_SLICE, "the caller keeps its own");
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn nice_zero_shares_the_callers_runtime() {
        let pool = BulkPool::start(0, 2).unwrap();
        assert!(!pool.is_separate());
        let name = pool.spawn(async { std::thread::current().name().map(str::to_string) }).await.unwrap();
        assert_ne!(name.as_deref(), Some("herald-bulk"));
        assert_eq!(pool.spawn(async { current_nice() }).await.unwrap(), current_nice());
    }
}
