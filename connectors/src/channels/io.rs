//! The runtimes provider exchanges run on, apart from the pipeline's.
//!
//! A provider request's timeout is a timer, and a timer is only as good as the runtime that polls
//! it. The pipeline's runtime also runs the embedded store's calls in place (see
//! `EmbeddedDb::call`), and a write can wait on the journal lock through an `fsync`: on a slow or
//! busy disk both of its threads can stall for seconds. A request in flight across such a stall
//! finds its answer and its expired timer at the same poll, and reqwest checks the timer first:
//! the provider accepted the message, Herald records a timeout and sends it again, a duplicate
//! the user sees. So every exchange with a provider (the HTTP connectors' [`super::exchange`],
//! the SMTP connector's send) runs here, on threads that never touch the store, and the pipeline
//! awaits only the outcome.
//!
//! There are two, so that a transactional exchange never queues behind a marketing flood's: the
//! pipeline's bulk threads (its normal lanes, at a lower OS priority) mark themselves with
//! [`enter_bulk`] and their exchanges run on `herald-io-bulk`, whose threads get the same lower
//! priority; every other thread's run on `herald-io`, at the priority of the thread that
//! [`start`]ed it. Each starts with its first exchange (or [`start`]) and lives as long as the
//! process. Connections opened on one (reqwest's and lettre's pools) keep their tasks there.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of each provider runtime: exchanges are waits on sockets, two threads carry
/// thousands of them.
const THREADS: usize = 2;

static PRIORITY: OnceLock<Option<Runtime>> = OnceLock::new();
static BULK: OnceLock<Option<Runtime>> = OnceLock::new();
/// The nice value of the bulk threads, given to `herald-io-bulk`'s.
static BULK_NICE: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// Whether this thread is one of the pipeline's bulk threads ([`enter_bulk`]).
    static ON_BULK: Cell<bool> = const { Cell::new(false) };
}

/// Starts the priority provider runtime now, so that its threads take the calling thread's
/// priority (call it from a thread at the process's own).
pub fn start() {
    let _ = handle();
}

/// Marks the calling thread as a bulk thread: its nice value is raised to `nice`, and the
/// exchanges it starts run on the bulk provider runtime, whose threads run at `nice` too.
/// Fails (leaving the priority as it was, and the mark set) where per-thread priority is not
/// supported.
pub fn enter_bulk(nice: u8) -> io::Result<()> {
    ON_BULK.set(true);
    BULK_NICE.store(nice, Ordering::Relaxed);
    set_thread_nice(nice)
}

/// Whether the calling thread is one of the pipeline's bulk threads ([`enter_bulk`]).
pub fn on_bulk() -> bool {
    ON_BULK.get()
}

/// The calling thread's provider runtime; `None` when its threads could not be started, so
/// exchanges run on the caller's runtime as before.
fn handle() -> Option<Handle> {
    let bulk = ON_BULK.get();
    let (runtime, name) = if bulk { (&BULK, "herald-io-bulk") } else { (&PRIORITY, "herald-io") };
    runtime
        .get_or_init(|| {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(THREADS).thread_name(name).enable_all();
            if bulk {
                let nice = BULK_NICE.load(Ordering::Relaxed);
                builder.on_thread_start(move || {
                    let _ = set_thread_nice(nice);
                });
            }
            match builder.build() {
                Ok(runtime) => Some(runtime),
                Err(error) => {
                    tracing::error!(%error, name, "provider runtime not started; its exchanges share the pipeline's runtime");
                    None
                }
            }
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
}

/// Runs `exchange` to completion on the calling thread's provider runtime and returns its output.
/// Dropping the returned future does not cancel the exchange: it finishes (and its answer is
/// dropped), as a request already on the wire would anyway. A panic in `exchange` is resumed here.
pub async fn run<F>(exchange: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let Some(handle) = handle() else {
        return exchange.await;
    };
    match handle.spawn(exchange).await {
        Ok(output) => output,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime lives in a static and is never shut down, and the task's handle is not
        // aborted: a join error other than a panic cannot happen.
        Err(error) => unreachable!("provider exchange cancelled: {error}"),
    }
}

/// Sets the calling thread's nice value (0 to 19). On Linux the nice value is a thread's own:
/// `setpriority` with a thread id sets that thread's. Raising it needs no privilege; lowering it
/// again does.
#[cfg(target_os = "linux")]
pub fn set_thread_nice(nice: u8) -> io::Result<()> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), i32::from(nice)).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
pub fn set_thread_nice(_nice: u8) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "per-thread priority is set on Linux only"))
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
pub fn thread_nice() -> io::Result<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use crate::channels::exchange;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// An HTTP/1.1 server on its own thread that answers every request `200` at once.
    fn answering_server() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            }
        });
        addr
    }

    /// A bulk thread's exchanges run on the bulk provider runtime at its priority; any other
    /// thread's on the priority one.
    #[cfg(target_os = "linux")]
    #[test]
    fn bulk_threads_exchange_on_the_bulk_runtime_at_their_priority() {
        let where_run = || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(super::run(async {
                (std::thread::current().name().map(str::to_string), super::thread_nice().unwrap())
            }))
        };
        let own = super::thread_nice().unwrap();
        let (name, nice) = std::thread::spawn(where_run).join().unwrap();
        assert_eq!((name.as_deref(), nice), (Some("herald-io"), own));
        let (name, nice) = std::thread::spawn(move || {
            super::enter_bulk(12).unwrap();
            assert_eq!(super::thread_nice().unwrap(), 12.max(own));
            where_run()
        })
        .join()
        .unwrap();
        assert_eq!((name.as_deref(), nice), (Some("herald-io-bulk"), 12.max(own)));
    }

    /// The pipeline's runtime stalls (its only thread blocked, as by a slow `fsync`) for longer
    /// than the provider timeout while a request is in flight; the server answered at once, so
    /// the exchange is an answer, not a timeout that would send the message again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_pipeline_runtime_does_not_turn_an_answer_into_a_timeout() {
        let addr = answering_server();
        let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
        let pending = tokio::spawn(exchange(client.get(format!("http://{addr}/send"))));
        // Let the exchange start, then block the runtime's thread past the timeout.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1_500));
        match pending.await.unwrap() {
            Ok(answer) => assert_eq!((answer.status, answer.body.as_str()), (200, "ok")),
            Err(outcome) => panic!("the answer was lost to the stall: {outcome:?}"),
        }
    }
}
