//! qwp's API server: accepts job uploads (S3 input + SQS message) and serves results
//! (S3 output), with seed 001's API and status codes. See docs/api-server.md.
//!
//! Data flow: `server` accepts connections (bounded in number and header time) and
//! routes them; `auth` checks the bearer token; `deadline` bounds the request; `submit`
//! checks what the headers say, reserves memory from the `budget` and reads a bounded
//! upload (`upload`), claims an idempotency key (`idempotency`), stores the input and
//! queues the job (`store`), then waits for the result (`results`); `status` reads jobs
//! back, finished ones from memory (`finished`). `admin` serves readiness (`readiness`)
//! and `metrics` on their own port; `internal` takes workers' completion hints on a
//! third. Errors are `errors::ApiError`.

pub mod admin;
pub mod auth;
pub mod budget;
pub mod deadline;
pub mod errors;
pub mod finished;
pub mod idempotency;
pub mod internal;
pub mod metrics;
pub mod readiness;
pub mod results;
pub mod server;
pub mod settings;
pub mod status;
pub mod store;
pub mod submit;
pub mod upload;
pub mod wake;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use qwp_jobs::aws::AwsClients;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::UploadBudget;
use crate::finished::FinishedResults;
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::ResultWaiter;
use crate::settings::Settings;
use crate::store::JobStore;

pub use crate::server::{Listeners, serve};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: JobStore,
    pub waiter: Arc<ResultWaiter>,
    pub finished: Arc<FinishedResults>,
    /// `host:port` of this replica's internal port, put on every job message so the
    /// worker's completion hint comes back here. Set by [`serve`] once the port is bound.
    pub reply_to: Arc<OnceLock<String>>,
    /// Wake-up hints to the operator on enqueue (`OPERATOR_WAKE_ADDRESS`).
    pub operator_wake: Option<Arc<wake::OperatorWake>>,
    pub idempotency: Idempotency,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<UploadBudget>,
    pub readiness: Arc<Readiness>,
    /// Job acceptances in flight (S3 write, SQS send, key commit): shutdown waits for them.
    pub accepts: TaskTracker,
    /// Cancelled when shutdown begins: waiters answer 202 at once, /readyz says draining.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(settings: Settings, clients: AwsClients) -> Self {
        let clients = store::with_timeouts(clients, settings.store_timeout);
        let metrics = Arc::new(Metrics::default());
        let store = JobStore::new(settings.config.clone(), clients, metrics.aws_calls.clone());
        let operator_wake = settings
            .operator_wake_address
            .clone()
            .map(|address| Arc::new(wake::OperatorWake::new(&address, metrics.clone())));
        let finished = Arc::new(FinishedResults::new(
            settings.result_cache_bytes,
            metrics.clone(),
        ));
        let waiter = Arc::new(ResultWaiter::new(
            store.clone(),
            metrics.clone(),
            settings.result_poll_concurrency,
            settings.result_poll_initial,
            settings.result_poll_max,
            finished.clone(),
        ));
        AppState {
            idempotency: Idempotency::new(
                store.clone(),
                metrics.clone(),
                settings.idempotency_ttl,
                settings.idempotency_claim_timeout,
            ),
            budget: Arc::new(UploadBudget::new(
                settings.upload_memory_bytes,
                metrics.clone(),
            )),
            readiness: Arc::new(Readiness::new(settings.readiness_check_interval)),
            accepts: TaskTracker::new(),
            settings: Arc::new(settings),
            store,
            waiter,
            finished,
            reply_to: Arc::new(OnceLock::new()),
            operator_wake,
            metrics,
            shutdown: CancellationToken::new(),
        }
    }
}

/// The public API. Readiness and metrics are on [`admin::router`], never here.
pub fn app(state: AppState) -> Router {
    // A backstop above our own per-chunk count, which answers 413 exactly at MAX_FILE_MB.
    let body_limit = state.settings.config.max_file_bytes() + upload::MULTIPART_OVERHEAD_BYTES;
    let authenticated = Router::new()
        .route("/", post(submit::submit_seed))
        .route("/jobs", post(submit::submit_job))
        .route("/status/{job_id}", get(status::status_seed))
        .route("/jobs/{job_id}", get(status::status_job))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .merge(authenticated)
        // Liveness stays open: probes and load balancers carry no token.
        .route("/health", get(status::health))
        .fallback(errors::no_route)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(DefaultBodyLimit::max(
            usize::try_from(body_limit).unwrap_or(usize::MAX),
        ))
        .layer(from_fn_with_state(state.clone(), deadline::bound))
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}
