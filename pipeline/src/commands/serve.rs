//! `herald serve`: the API and the runtime in one process until SIGTERM or Ctrl-C.
//!
//! Shutdown order: stop accepting connections and finish in-flight requests
//! (each already durable or refused), then stop the runtime's readers and
//! let every chain drain and commit, then close the database. Exit 0.

use crate::api::{ApiState, router};
use crate::app::App;
use crate::runtime::Runtime;
use axum::serve::ListenerExt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(app: App, listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    let app = Arc::new(app);
    let runtime = Runtime::start(&app);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, data_dir = %app.data_dir.display(), "serving");
    {
        // The one line on stdout: scripts and tests wait for it.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    let state = ApiState { app: app.clone(), request_lag: runtime.request_lag.clone() };
    // No Nagle: a response must not wait for the client's delayed ACK of the one before it.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server failed")?;
    tracing::info!("API stopped; draining the pipeline");
    runtime.stop().await;
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
