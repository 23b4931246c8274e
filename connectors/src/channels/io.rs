//! The runtime provider exchanges run on, apart from the pipeline's.
//!
//! A provider request's timeout is a timer, and a timer is only as good as the runtime that polls
//! it. The pipeline's runtime also runs the embedded store's calls in place (see
//! `EmbeddedDb::call`), and a write can wait on the journal lock through an `fsync`: on a slow or
//! busy disk both of its threads can stall for seconds. A request in flight across such a stall
//! finds its answer and its expired timer at the same poll, and reqwest checks the timer first:
//! the provider accepted the message, Herald records a timeout and sends it again, a duplicate
//! the user sees. So every exchange with a provider (the HTTP connectors' [`super::exchange`],
//! the SMTP connector's send) runs here, on two threads that never touch the store, and the
//! pipeline awaits only the outcome.
//!
//! The runtime starts with the first exchange and lives as long as the process. Connections
//! opened here (reqwest's and lettre's pools) keep their tasks here.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of the provider runtime: exchanges are waits on sockets, two threads carry
/// thousands of them.
const THREADS: usize = 2;

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// The provider runtime's handle; `None` when its threads could not be started, so exchanges
/// run on the caller's runtime as before.
fn handle() -> Option<Handle> {
    RUNTIME
        .get_or_init(|| match Builder::new_multi_thread().worker_threads(THREADS).thread_name("herald-io").enable_all().build() {
            Ok(runtime) => Some(runtime),
            Err(error) => {
                tracing::error!(%error, "provider runtime not started; provider exchanges share the pipeline's runtime");
                None
            }
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
}

/// Runs `exchange` to completion on the provider runtime and returns its output. Dropping the
/// returned future does not cancel the exchange: it finishes (and its answer is dropped), as a
/// request already on the wire would anyway. A panic in `exchange` is resumed here.
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
