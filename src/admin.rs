//! The admin HTTP port: `/metrics` (Prometheus text format), `/healthz` (the process is up) and
//! `/readyz` (it takes calls: not shutting down, the store answers, and its audit log extends
//! the last checkpoint signed).
//!
//! It listens apart from the gRPC port so that scrapers and probes need no gRPC client and
//! never queue behind calls; keep it off the public network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::checkpoints::Checkpoints;
use crate::metrics::METRICS;
use crate::store::Store;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the probes look at.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub store: Store,
    /// Set when shutdown begins: the replica stops being ready so load balancers move away.
    pub draining: Arc<AtomicBool>,
    /// The audit checkpoint signer, whose refusal (the log does not extend what was signed)
    /// makes the replica unready.
    pub checkpoints: Option<Checkpoints>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin port until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match readiness(&state).await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Whether the replica takes calls, and if not why: what `/readyz` answers, and what the gRPC
/// health entries follow (`startup`).
pub async fn readiness(state: &AdminState) -> Result<(), String> {
    if state.draining.load(Ordering::Acquire) {
        return Err("shutting down".into());
    }
    if let Some(refusal) = state.checkpoints.as_ref().and_then(Checkpoints::refusal) {
        return Err(format!(
            "audit log inconsistent with its last signed checkpoint: {refusal}"
        ));
    }
    match tokio::time::timeout(READY_TIMEOUT, state.store.head_revision()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err("store unavailable".into()),
    }
}
