//! qwp's API server: accepts job uploads (S3 input + SQS message) and serves results
//! (S3 output), with seed 001's API and status codes. See docs/api-server.md.
//!
//! Data flow: `submit` reads a bounded upload (`upload`), claims an idempotency key
//! (`idempotency`), stores the input and queues the job (`store`), then waits for the
//! result (`results`); `status` reads jobs back. Errors are `errors::ApiError`.

pub mod errors;
pub mod idempotency;
pub mod metrics;
pub mod results;
pub mod settings;
pub mod status;
pub mod store;
pub mod submit;
pub mod upload;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use qwp_jobs::aws::AwsClients;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::results::ResultWaiter;
use crate::settings::Settings;
use crate::store::JobStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: JobStore,
    pub waiter: Arc<ResultWaiter>,
    pub idempotency: Idempotency,
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: waiters answer 202 at once, /readyz says draining.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(settings: Settings, clients: AwsClients) -> Self {
        let store = JobStore::new(settings.config.clone(), clients);
        let metrics = Arc::new(Metrics::default());
        let waiter = Arc::new(ResultWaiter::new(
            store.clone(),
            metrics.clone(),
            settings.result_poll_concurrency,
            settings.result_poll_initial,
            settings.result_poll_max,
        ));
        AppState {
            idempotency: Idempotency::new(store.clone()),
            settings: Arc::new(settings),
            store,
            waiter,
            metrics,
            shutdown: CancellationToken::new(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    // A backstop above our own per-chunk count, which answers 413 exactly at MAX_FILE_MB.
    let body_limit = state.settings.config.max_file_bytes() + upload::MULTIPART_OVERHEAD_BYTES;
    Router::new()
        .route("/", post(submit::submit_seed))
        .route("/jobs", post(submit::submit_job))
        .route("/status/{job_id}", get(status::status_seed))
        .route("/jobs/{job_id}", get(status::status_job))
        .route("/health", get(status::health))
        .route("/readyz", get(status::readyz))
        .merge(qwp_runtime::metrics::router(state.metrics.clone()))
        .fallback(errors::no_route)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(DefaultBodyLimit::max(
            usize::try_from(body_limit).unwrap_or(usize::MAX),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Serves until `signal` resolves, then stops accepting connections, lets requests in
/// flight finish (waiters answer 202 at once) and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let draining = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            signal.await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            draining.cancel();
        })
        .await
}
