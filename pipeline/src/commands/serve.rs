//! `herald serve`: the API and the runtime in one process until SIGTERM or Ctrl-C.
//!
//! Roles: `all` (the default) runs both; `api` only the HTTP API (appending to the topics); and
//! `worker` only the pipeline (with `/healthz`, `/readyz` and `/metrics` on the listen address).
//! `api` and `worker` need the topics and the state on clusters: an embedded data directory belongs
//! to one process.
//!
//! A worker whose state backend coordinates workers (ScyllaDB) shares the partitions with the
//! other live workers ([`crate::runtime::workers`]); otherwise it owns every partition.
//!
//! Shutdown order: stop accepting connections and finish in-flight requests
//! (each already durable or refused), then stop the runtime's readers and
//! let every chain drain and commit (a coordinated worker then gives back
//! its leases and leaves), then close the database. Exit 0.

use crate::api::{ApiState, ops_router, router};
use crate::app::App;
use crate::config::{StateBackend, TopicsBackend};
use crate::runtime::Runtime;
use crate::runtime::pools::BulkPool;
use crate::runtime::workers::{Coordinator, worker_id};
use axum::serve::ListenerExt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a `herald serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API and the pipeline.
    All,
    /// The HTTP API only: requests are appended to the topics for the workers.
    Api,
    /// The pipeline only, over this worker's share of the partitions.
    Worker,
}

/// How often a coordinated worker renews its heartbeat and leases, and how long they last.
const HEARTBEAT: Duration = Duration::from_secs(3);
const LEASE_TTL: Duration = Duration::from_secs(30);

/// The pipeline as this process runs it: alone over every partition, or coordinated.
enum Pipeline {
    Alone(Runtime),
    Coordinated { stop: CancellationToken, task: tokio::task::JoinHandle<()> },
}

impl Pipeline {
    fn start(app: &Arc<App>, request_lag: &Arc<AtomicU64>) -> Pipeline {
        match app.backends.membership.clone() {
            None => Pipeline::Alone(Runtime::start(app)),
            Some(membership) => {
                let coordinator = Coordinator {
                    membership,
                    worker: worker_id(),
                    partitions: app.partitions(),
                    lease_ttl: LEASE_TTL,
                    heartbeat: HEARTBEAT,
                };
                let stop = CancellationToken::new();
                let task = tokio::spawn(coordinator.run(app.clone(), stop.clone(), request_lag.clone()));
                Pipeline::Coordinated { stop, task }
            }
        }
    }

    /// The runtime the pipeline runs its bulk work on, when it has one for the life of the
    /// process (a coordinated worker's runtimes come and go with its leases).
    fn bulk_handle(&self) -> Option<tokio::runtime::Handle> {
        match self {
            Pipeline::Alone(runtime) => Some(runtime.bulk_handle()),
            Pipeline::Coordinated { .. } => None,
        }
    }

    fn request_lag(&self) -> Option<Arc<AtomicU64>> {
        match self {
            Pipeline::Alone(runtime) => Some(runtime.request_lag.clone()),
            Pipeline::Coordinated { .. } => None,
        }
    }

    async fn stop(self) {
        match self {
            Pipeline::Alone(runtime) => runtime.stop().await,
            Pipeline::Coordinated { stop, task } => {
                stop.cancel();
                if let Err(error) = task.await {
                    tracing::error!(%error, "worker coordination ended abnormally");
                }
            }
        }
    }
}

pub async fn run(app: App, listen: SocketAddr, role: Role) -> anyhow::Result<()> {
    use anyhow::Context;
    let shared = app.config.backends.topics()? != TopicsBackend::Embedded
        && app.config.backends.state()? != StateBackend::Embedded;
    if role != Role::All && !shared {
        anyhow::bail!(
            "--role {} needs the topics and the state on clusters (--topics fluvio://… --state scylla://…): \
             an embedded data directory belongs to one process, which must run both the API and the \
             pipeline (--role all)",
            if role == Role::Api { "api" } else { "worker" }
        );
    }
    let app = Arc::new(app);
    let coordinated_lag = Arc::new(AtomicU64::new(0));
    let pipeline = (role != Role::Api).then(|| Pipeline::start(&app, &coordinated_lag));
    let request_lag = pipeline.as_ref().and_then(Pipeline::request_lag).unwrap_or(coordinated_lag);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, data_dir = %app.data_dir.display(), ?role, "serving");
    {
        // The one line on stdout: scripts and tests wait for it.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    // Non-transactional batches are stored on a bulk runtime: the pipeline's, or one of the API's
    // (kept until the server stopped).
    let (bulk, _api_bulk) = match pipeline.as_ref().and_then(Pipeline::bulk_handle) {
        Some(handle) => (handle, None),
        None => {
            let pool = BulkPool::start(app.config.pipeline.bulk_nice, 1).context("cannot start the bulk runtime")?;
            (pool.handle().clone(), Some(pool))
        }
    };
    let state = ApiState { app: app.clone(), request_lag, bulk };
    // No Nagle: a response must not wait for the client's delayed ACK of the one before it.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    let routes = if role == Role::Worker { ops_router(state) } else { router(state) };
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server failed")?;
    if let Some(pipeline) = pipeline {
        tracing::info!("API stopped; draining the pipeline");
        pipeline.stop().await;
    }
    if let Some(db) = &app.backends.embedded {
        db.persist().context("final flush of the data directory failed")?;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
