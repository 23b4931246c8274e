//! The harness every end-to-end test shares: it drives the real `herald` binary.
//!
//! # Layout
//! - [`backend`]: the backends a shared test runs on (embedded always; Fluvio, ScyllaDB when set).
//! - [`binary`]: finds the `herald` binary and builds it once per test process.
//! - [`server`]: one server process on a temporary data directory: start, SIGKILL, SIGTERM, restart,
//!   `herald keys create`; the process is killed on drop so no test leaves one behind.
//! - [`client`]: the HTTP API with a bearer key, one call per endpoint, and batch submission that
//!   honours `503` + `Retry-After`.
//! - [`outbox`]: reading the file outbox (a torn last line is tolerated only while the server runs),
//!   cheap line counting for polling, and waiting for delivery to settle.
//! - [`jobs`]: delivery jobs for tests that call a connector directly.
//! - [`sms`]: Herald sending SMS through the provider sandbox: config, users, notifications.
//! - [`population`]: users, devices and opt-outs the tests generate, and the delivery targets a
//!   notification must reach, derived from that data alone.
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod backend;
pub mod binary;
pub mod client;
pub mod jobs;
pub mod outbox;
pub mod population;
pub mod server;
pub mod sms;

/// A seed for the test's random choices: `HERALD_TEST_SEED` if set (to replay a failure), else fresh.
/// The test prints it so that any run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("HERALD_TEST_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("HERALD_TEST_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("[{test}] seed {seed} (replay with HERALD_TEST_SEED={seed})");
    seed
}
