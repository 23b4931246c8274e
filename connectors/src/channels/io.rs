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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of each provider runtime: exchanges are waits on sockets, two threads carry
/// thousands of them.
const THREADS: usize = 2;

static PRIORITY: OnceLock<Option<Runtime>> = OnceLock::new();
static BULK: OnceLock<Option<Runtime>> = OnceLock::new();
/// The nice value of the bulk threads, given to `herald-io-bulk`'s.
static BULK_NICE: AtomicU8 = AtomicU8::new(0);
/// The nice value of the thread that called [`start`]: the process's own.
static PROCESS_NICE: AtomicU8 = AtomicU8::new(0);
/// Whether a bulk thread may still try to return to the process's priority ([`Raised`]);
/// cleared at the first refusal.
static MAY_RETURN: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// Whether this thread is one of the pipeline's bulk threads ([`enter_bulk`]).
    static ON_BULK: Cell<bool> = const { Cell::new(false) };
    /// [`Raised`] guards alive on this thread.
    static RAISED: Cell<u32> = const { Cell::new(0) };
}

/// Starts the priority provider runtime now, so that its threads take the calling thread's
/// priority (call it from a thread at the process's own).
pub fn start() {
    #[cfg(target_os = "linux")]
    if let Ok(nice) = thread_nice() {
        PROCESS_NICE.store(nice.clamp(0, 19) as u8, Ordering::Relaxed);
    }
    let _ = handle();
}

/// Marks the calling thread as a bulk thread: its nice value is raised to `nice`, its scheduler
/// slice returned to the kernel's default (see [`SHORT_SLICE`]), and the exchanges it starts run
/// on the bulk provider runtime, whose threads are lowered the same way. Fails (leaving the
/// priority as it was, and the mark set) where per-thread priority is not supported.
pub fn enter_bulk(nice: u8) -> io::Result<()> {
    ON_BULK.set(true);
    BULK_NICE.store(nice, Ordering::Relaxed);
    lower_thread(nice)
}

fn lower_thread(nice: u8) -> io::Result<()> {
    set_thread_attr(nice.into(), None)
}

/// A bulk thread's stay at the process's priority and scheduler slice: from [`Raised::enter`]
/// until the last such guard of the thread is dropped, when the thread is lowered again (also
/// when the work under it panicked). Nested guards are free.
///
/// For work under locks the priority lane takes too (the embedded store's locks and fjall's
/// journal lock, see `embedded::db::hold`). A bulk thread holding one is otherwise kept off the
/// CPU by the process's other threads and by the other bulk threads while a transactional writer
/// waits for it: a priority inversion that, under a marketing flood on one core, stretched
/// writes of a fraction of a millisecond of CPU to several milliseconds. Returning to a lower
/// nice value needs a privilege: `CAP_SYS_NICE`, or an `RLIMIT_NICE` of at least `20 - nice`
/// (systemd: `LimitNICE=0`). Without it the work runs at the bulk priority, and a warning says
/// so once.
#[must_use = "the thread is lowered again when the guard is dropped"]
pub struct Raised(());

impl Raised {
    /// Raises the calling thread if it is a bulk thread; `None` (nothing to undo) otherwise, or
    /// when it may not be raised.
    pub fn enter() -> Option<Raised> {
        if !ON_BULK.get() || !MAY_RETURN.load(Ordering::Relaxed) {
            return None;
        }
        if RAISED.get() == 0
            && let Err(error) = set_thread_attr(PROCESS_NICE.load(Ordering::Relaxed).into(), Some(SHORT_SLICE))
        {
            if MAY_RETURN.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "bulk threads cannot return to the process's priority while they hold the store's locks \
                     (grant CAP_SYS_NICE or LimitNICE=0): transactional writes may wait longer behind bulk ones"
                );
            }
            return None;
        }
        RAISED.set(RAISED.get() + 1);
        Some(Raised(()))
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        let depth = RAISED.get() - 1;
        RAISED.set(depth);
        if depth == 0 {
            let _ = lower_thread(BULK_NICE.load(Ordering::Relaxed));
        }
    }
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
                    let _ = lower_thread(nice);
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

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
pub fn thread_nice() -> io::Result<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).map_err(io::Error::from)
}

/// The scheduler time slice Herald asks for its threads, all but the bulk ones
/// ([`set_thread_slice`]).
///
/// Linux's scheduler (EEVDF, since 6.6) lets a thread it has picked run its whole slice before a
/// thread woken on the same core gets the CPU (`RUN_TO_PARITY`), whatever their nice values: the
/// default slice is 0.7 ms × (1 + log2 of the cores), 1.4 ms on two. On a core the bulk threads
/// keep busy, every wake-up on the priority lane's path (a request arriving, the group commit
/// answering, a provider's answer) could wait that long, and a one-time password's path has
/// several. A woken thread whose slice is shorter than the running one's takes the CPU at once
/// (`PREEMPT_SHORT`, since 6.12), and a shorter slice costs only more frequent switches among
/// threads of equal priority. Measured: README, "Audience: broadcasts and priority lanes".
pub const SHORT_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// Asks the kernel for a scheduler time slice of `slice` for the calling thread (it clamps it to
/// 0.1–100 ms), or with `None` for its default slice; threads started afterwards inherit it. The
/// thread keeps its scheduling policy and nice value. Kernels before 6.12 accept and ignore it.
#[cfg(target_os = "linux")]
pub fn set_thread_slice(slice: Option<std::time::Duration>) -> io::Result<()> {
    // The nice value is set with the slice: this keeps it as it is.
    set_thread_attr(thread_nice()?, slice)
}

/// Sets the calling thread's nice value and scheduler slice in one call (see
/// [`set_thread_slice`]). On Linux both are a thread's own. Raising the nice value needs no
/// privilege; lowering it again does.
#[cfg(target_os = "linux")]
fn set_thread_attr(nice: i32, slice: Option<std::time::Duration>) -> io::Result<()> {
    let runtime = slice.map_or(0, |s| u64::try_from(s.as_nanos()).unwrap_or(u64::MAX));
    sched_setattr(0, &sched_attr(libc::SCHED_FLAG_KEEP_POLICY as u64, nice, runtime))
}

/// `sched_setattr(2)` on thread `tid` of this process (0: the calling one).
#[cfg(target_os = "linux")]
fn sched_setattr(tid: i32, attr: &libc::sched_attr) -> io::Result<()> {
    // SAFETY: the call reads `attr.size` bytes from `attr`, a live, initialized `sched_attr` of
    // that size (each one here comes from `sched_attr`), and keeps no pointer to it.
    let status = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, attr as *const libc::sched_attr, 0u32) };
    if status == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `sched_getattr(2)` on the calling thread.
#[cfg(target_os = "linux")]
fn sched_getattr() -> io::Result<libc::sched_attr> {
    let mut attr = sched_attr(0, 0, 0);
    let size = attr.size;
    // SAFETY: the call writes at most `size` bytes into `attr`, a live `sched_attr` of that size,
    // and keeps no pointer to it.
    let status = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0u32) };
    if status == 0 { Ok(attr) } else { Err(io::Error::last_os_error()) }
}

/// A `sched_attr` of its own size for a SCHED_OTHER thread: `flags`, nice value `nice`, slice
/// `runtime` nanoseconds (0: the kernel's default).
#[cfg(target_os = "linux")]
fn sched_attr(flags: u64, nice: i32, runtime: u64) -> libc::sched_attr {
    libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: 0,
        sched_flags: flags,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: runtime,
        sched_deadline: 0,
        sched_period: 0,
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_thread_slice(_slice: Option<std::time::Duration>) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "a thread's scheduler slice is set on Linux only"))
}

#[cfg(not(target_os = "linux"))]
fn set_thread_attr(_nice: i32, _slice: Option<std::time::Duration>) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "a thread's scheduler attributes are set on Linux only"))
}

/// The threads [`enter_realtime`] puts in the real-time class, by name: the process's main thread
/// and its runtime's workers (the HTTP API, the priority lane's chain and dispatchers, the
/// monitor), the priority group commit and the priority provider runtime.
pub const REALTIME_THREADS: [&str; 4] = ["herald", "herald-main", "herald-commit", "herald-io"];

/// Puts the process's threads named in `names` (see [`REALTIME_THREADS`]) in the `SCHED_FIFO`
/// real-time class at `priority` (1–99), with `SCHED_RESET_ON_FORK`, so that a thread one of them
/// starts later begins in the normal class. Returns how many threads it moved.
///
/// A real-time thread that wakes takes the CPU from any normal thread at once, whatever its nice
/// value or slice, and keeps it until it sleeps: the priority lane's hand-offs (a request
/// arriving, the group commit answering, a provider's answer) stop waiting for the bulk threads on
/// a saturated core. The kernel still leaves normal threads a share of each second
/// (`sched_rt_runtime_us`, 95 % by default, and the fair server since Linux 6.12). Needs
/// `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least `priority` (systemd: `LimitRTPRIO=`);
/// without it the call fails at the first thread, which keeps its class like the rest.
#[cfg(target_os = "linux")]
pub fn enter_realtime(priority: u8, names: &[&str]) -> io::Result<usize> {
    let mut moved = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let path = entry?.path();
        // A thread may end while this reads; it needs no moving then.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if !names.contains(&comm.trim_end()) {
            continue;
        }
        let Some(tid) = path.file_name().and_then(|t| t.to_str()).and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        let mut attr = sched_attr(libc::SCHED_FLAG_RESET_ON_FORK as u64, 0, 0);
        attr.sched_policy = libc::SCHED_FIFO as u32;
        attr.sched_priority = priority.into();
        match sched_setattr(tid, &attr) {
            Ok(()) => moved += 1,
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(moved)
}

#[cfg(not(target_os = "linux"))]
pub fn enter_realtime(_priority: u8, _names: &[&str]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "real-time threads are set on Linux only"))
}

/// The calling thread's scheduler time slice: the one it asked for, or the kernel's default; zero
/// before Linux 6.12, which reports none.
#[cfg(target_os = "linux")]
pub fn thread_slice() -> io::Result<std::time::Duration> {
    sched_getattr().map(|attr| std::time::Duration::from_nanos(attr.sched_runtime))
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

    /// The kernel's default slice, as a new thread of the test has it; `None` (saying the test is
    /// skipped) when the kernel keeps no slice of a thread's own (before 6.12).
    #[cfg(target_os = "linux")]
    fn default_slice() -> Option<Duration> {
        let (default, supported) = std::thread::spawn(|| {
            let default = super::thread_slice().unwrap();
            super::set_thread_slice(Some(Duration::from_micros(300))).unwrap();
            (default, super::thread_slice().unwrap() == Duration::from_micros(300))
        })
        .join()
        .unwrap();
        if !supported {
            eprintln!("skipped: this kernel keeps no scheduler slice of a thread's own (Linux 6.12+ does)");
        }
        supported.then_some(default)
    }

    /// A thread's slice is its own, threads it starts inherit it, and `None` gives it back to
    /// the kernel's default, nice value untouched.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_short_slice_is_inherited_and_given_back() {
        let Some(default) = default_slice() else { return };
        assert_ne!(default, super::SHORT_SLICE, "the test thread starts with the kernel's default");
        std::thread::spawn(move || {
            let nice = super::thread_nice().unwrap();
            super::set_thread_slice(Some(super::SHORT_SLICE)).unwrap();
            assert_eq!(super::thread_slice().unwrap(), super::SHORT_SLICE);
            let child = std::thread::spawn(|| super::thread_slice().unwrap()).join().unwrap();
            assert_eq!(child, super::SHORT_SLICE, "a thread started afterwards inherits it");
            super::set_thread_slice(None).unwrap();
            assert_eq!(super::thread_slice().unwrap(), default);
            assert_eq!(super::thread_nice().unwrap(), nice);
        })
        .join()
        .unwrap();
    }

    /// A thread that had the short slice gives it up when it becomes a bulk thread. (The bulk
    /// provider runtime's threads are lowered by the same function, but that runtime is started
    /// once per process, maybe by another test, so it is not checked here.)
    #[cfg(target_os = "linux")]
    #[test]
    fn bulk_threads_give_up_the_short_slice() {
        let Some(default) = default_slice() else { return };
        let bulk = std::thread::spawn(|| {
            super::set_thread_slice(Some(super::SHORT_SLICE)).unwrap();
            // The nice value of the other bulk test, whose bulk runtime this process may share.
            super::enter_bulk(12).unwrap();
            super::thread_slice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(bulk, default);
    }

    /// The calling thread's scheduling policy and real-time priority.
    #[cfg(target_os = "linux")]
    fn policy() -> (u32, u32) {
        let attr = super::sched_getattr().unwrap();
        (attr.sched_policy, attr.sched_priority)
    }

    /// The threads named are moved to `SCHED_FIFO` at the priority asked, others are not, and a
    /// thread one of them starts afterwards begins in the normal class. Without the privilege the
    /// call fails and the thread keeps its class (the test says it was skipped).
    #[cfg(target_os = "linux")]
    #[test]
    fn named_threads_enter_the_realtime_class_and_their_children_do_not() {
        // Both threads are alive, named (a thread names itself once it runs), and waiting while
        // the call looks for them.
        let started = std::sync::Arc::new(std::sync::Barrier::new(3));
        let moved = std::sync::Arc::new(std::sync::Barrier::new(3));
        let spawn = |name: &str, start_child: bool| {
            let (started, moved) = (started.clone(), moved.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    started.wait();
                    moved.wait();
                    let child = start_child.then(|| std::thread::spawn(policy).join().unwrap());
                    (policy(), child)
                })
                .unwrap()
        };
        let named = spawn("herald-rt-test", true);
        let other = spawn("herald-rt-other", false);
        started.wait();
        let result = super::enter_realtime(7, &["herald-rt-test"]);
        moved.wait();
        let (own, child) = named.join().unwrap();
        let (other, _) = other.join().unwrap();
        let normal = (libc::SCHED_OTHER as u32, 0);
        assert_eq!(other, normal, "a thread not named stays in the normal class");
        match result {
            Ok(threads) => {
                assert_eq!(threads, 1);
                assert_eq!(own, (libc::SCHED_FIFO as u32, 7));
                assert_eq!(child, Some(normal), "reset on fork");
            }
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: this process may not use the real-time class ({error})");
                assert_eq!(own, normal);
            }
            Err(error) => panic!("{error}"),
        }
    }

    /// Runs `f` within a [`Raised`](super::Raised).
    #[cfg(target_os = "linux")]
    fn raised<T>(f: impl FnOnce() -> T) -> T {
        let _raised = super::Raised::enter();
        f()
    }

    /// A bulk thread returns to the process's priority and the short slice while it holds a
    /// [`Raised`](super::Raised), and is lowered again when its last one drops, also when the work
    /// under it panicked; other threads are left as they are. Where returning is refused (no
    /// `CAP_SYS_NICE`), the work runs lowered.
    #[cfg(target_os = "linux")]
    #[test]
    fn raised_bulk_threads_are_lowered_again_when_their_last_guard_drops() {
        use std::sync::atomic::Ordering::Relaxed;
        let slices = default_slice().is_some();
        let attrs = || (super::thread_nice().unwrap(), super::thread_slice().unwrap());
        std::thread::spawn(move || {
            let before = attrs();
            assert_eq!(raised(attrs), before, "not a bulk thread: untouched");
            super::enter_bulk(12).unwrap();
            let lowered = attrs();
            let inside = raised(attrs);
            if !super::MAY_RETURN.load(Relaxed) {
                eprintln!("skipped: this process may not lower a nice value (CAP_SYS_NICE)");
                assert_eq!(inside, lowered);
                return;
            }
            assert_eq!(inside.0, i32::from(super::PROCESS_NICE.load(Relaxed)));
            if slices {
                assert_eq!(inside.1, super::SHORT_SLICE);
            }
            assert_eq!(attrs(), lowered, "lowered again after the call");
            let outer = super::Raised::enter();
            let nested = raised(attrs);
            assert_eq!(attrs(), inside, "still raised after a nested call ends");
            drop(outer);
            assert_eq!((nested, attrs()), (inside, lowered));
            let panicked = std::panic::catch_unwind(|| raised::<()>(|| panic!("in the call")));
            assert!(panicked.is_err());
            assert_eq!(attrs(), lowered, "lowered again after a panic");
        })
        .join()
        .unwrap();
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
