//! The admin port (`ADMIN_PORT`, like the worker's): readiness, Prometheus metrics and
//! liveness, for kubelets and scrapers. It is not part of the public Service and has no
//! authentication, so nothing on it may reveal jobs; the public port has no admin route.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;
use crate::readiness::Verdict;
use crate::{errors, metrics, status};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/health", get(status::health))
        .merge(qwp_runtime::metrics::router(state.metrics.clone()))
        .fallback(errors::no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// 200 once the dependencies were reached (also while one is failing now: `degraded`),
/// 503 while starting or draining. See [`crate::readiness`].
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    let report = state.readiness.report(&state.store, &state.metrics).await;
    let (status, word) = match report.verdict {
        Verdict::Ready => (StatusCode::OK, "ready"),
        Verdict::Degraded => (StatusCode::OK, "degraded"),
        Verdict::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
    };
    (
        status,
        Json(json!({ "status": word, "checks": report.checks })),
    )
        .into_response()
}
