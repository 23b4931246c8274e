//! The backends a shared end-to-end test runs on: the embedded ones always; a Fluvio cluster when
//! `HERALD_FLUVIO_ENDPOINT` (`host:port`) is set, a ScyllaDB cluster when `HERALD_SCYLLA_NODES`
//! (`host[:port],…`) is set, and both together when both are. Each server a test starts on a
//! cluster gets its own topic-name prefix or keyspace, so runs can repeat on one cluster.

use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `embedded`, `fluvio`, `scylla` or `fluvio+scylla`.
    pub name: &'static str,
    fluvio: Option<String>,
    scylla: Option<String>,
}

impl Backend {
    pub fn embedded() -> Backend {
        Backend { name: "embedded", fluvio: None, scylla: None }
    }

    /// Every backend this run can reach; says which were skipped and why. `HERALD_TEST_BACKENDS`
    /// (`embedded,fluvio`, say) keeps only the ones it names.
    pub fn all(test: &str) -> Vec<Backend> {
        let mut all = Self::reachable(test);
        if let Ok(only) = std::env::var("HERALD_TEST_BACKENDS") {
            let names: Vec<&str> = only.split(',').map(str::trim).collect();
            all.retain(|b| names.contains(&b.name));
            eprintln!(
                "[{test}] HERALD_TEST_BACKENDS={only}: running on {:?}",
                all.iter().map(|b| b.name).collect::<Vec<_>>()
            );
        }
        all
    }

    fn reachable(test: &str) -> Vec<Backend> {
        let fluvio = std::env::var("HERALD_FLUVIO_ENDPOINT").ok().filter(|v| !v.is_empty());
        let scylla = std::env::var("HERALD_SCYLLA_NODES").ok().filter(|v| !v.is_empty());
        let mut all = vec![Backend::embedded()];
        match &fluvio {
            Some(_) => all.push(Backend { name: "fluvio", fluvio: fluvio.clone(), scylla: None }),
            None => eprintln!("[{test}] skipped on Fluvio: HERALD_FLUVIO_ENDPOINT is not set"),
        }
        match &scylla {
            Some(_) => all.push(Backend { name: "scylla", fluvio: None, scylla: scylla.clone() }),
            None => eprintln!("[{test}] skipped on ScyllaDB: HERALD_SCYLLA_NODES is not set"),
        }
        if fluvio.is_some() && scylla.is_some() {
            all.push(Backend { name: "fluvio+scylla", fluvio, scylla });
        }
        all
    }

    /// How much longer than on the embedded backends a test's deadlines may be: a cluster adds
    /// network round trips to every append and commit, and here its servers share the test
    /// machine's cores (a deadline catches a hang, it is not a performance budget).
    pub fn slowdown(&self) -> u32 {
        if self.fluvio.is_some() || self.scylla.is_some() { 3 } else { 1 }
    }

    pub fn uses_scylla(&self) -> bool {
        self.scylla.is_some()
    }

    /// The `--topics` and `--state` URLs of one server: a fresh prefix or keyspace on a cluster.
    pub fn urls(&self) -> (String, String) {
        let run = run_id();
        let topics = match &self.fluvio {
            Some(endpoint) => format!("fluvio://{endpoint}?prefix=t{run}-"),
            None => "embedded".to_string(),
        };
        let state = match &self.scylla {
            Some(nodes) => format!("scylla://{nodes}/herald_t{run}"),
            None => "embedded".to_string(),
        };
        (topics, state)
    }
}

/// Unique across processes and within one.
fn run_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}{:x}{}", std::process::id(), nanos % 0xffff_ffff, NEXT.fetch_add(1, Ordering::Relaxed))
}
