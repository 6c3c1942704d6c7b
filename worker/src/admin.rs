//! The admin port: liveness, readiness, Prometheus metrics and `/status`
//! ([`qwp_pool::contract::WorkerStatus`]), which the operator reads on each pod to tell idle
//! pods from busy ones when scaling down.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use qwp_pool::contract::{STATUS_PATH, WorkerStatus};

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(qwp_runtime::metrics::router(metrics.clone()))
        .route(STATUS_PATH, get(status))
        .with_state(metrics)
}

/// Serves until `shutdown` completes; keeps answering during the drain so the
/// operator sees `draining: true` and the jobs still running.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready() {
        (StatusCode::OK, "ready")
    } else if metrics.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "queue not reached yet")
    }
}

async fn status(State(metrics): State<Arc<Metrics>>) -> Json<WorkerStatus> {
    Json(WorkerStatus {
        in_flight: metrics.in_flight(),
        concurrency: metrics.concurrency(),
        draining: metrics.draining(),
    })
}
