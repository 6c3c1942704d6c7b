//! Prometheus metrics: requests by route and status, latency per route, jobs accepted,
//! waits that ran out of time, how hard the result waiter works S3, and the limits:
//! the upload memory budget, refusals, connections, idempotency outcomes, dependencies.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

/// Durations of the server's own S3 and SQS calls by call (all attempts together): where a
/// request's time goes (docs/benchmarks.md's latency breakdown).
pub type CallHistograms = Family<CallLabels, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: LocalStack answers in a few ms, a stalled dependency in seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily,
    pub aws_calls: CallHistograms,
    pub jobs_accepted: Counter,
    pub wait_timeouts: Counter,
    pub result_polls: Counter,
    pub active_pollers: Gauge,
    pub upload_memory_budget: Gauge,
    pub upload_memory_in_use: Gauge,
    pub uploads_waiting: Gauge,
    /// Uploads answered without being stored: `memory_budget` (503), `body_timeout` (408).
    pub uploads_refused: Family<ReasonLabels, Counter>,
    pub connections_open: Gauge,
    pub auth_failures: Counter,
    /// `created`, `replayed`, `conflict`, `in_progress`, `waited`, `recovered`, `expired`.
    pub idempotency: Family<OutcomeLabels, Counter>,
    pub dependency_up: Family<DependencyLabels, Gauge>,
    /// Completion hints on the internal port: `woke` (a waiter for that job was here),
    /// `no_waiter`.
    pub result_hints: Family<OutcomeLabels, Counter>,
    /// Finished-result cache: reads answered from memory, reads that went to S3,
    /// entries evicted for room, bytes held.
    pub result_cache_hits: Counter,
    pub result_cache_misses: Counter,
    pub result_cache_evictions: Counter,
    pub result_cache_bytes: Gauge,
    /// Wake-up hints to the operator: `sent` (a replica took it), `not_taken`,
    /// `unresolved`, `debounced`.
    pub operator_wakes: Family<OutcomeLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s: covers a fast 202 as well as a full MAX_WAIT_SECONDS wait.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qwp_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let aws_calls = CallHistograms::new_with_constructor(call_histogram);
        registry.register(
            "aws_call_duration_seconds",
            "The server's own S3 and SQS calls, by call (all attempts together)",
            aws_calls.clone(),
        );
        let jobs_accepted = Counter::default();
        let wait_timeouts = Counter::default();
        let result_polls = Counter::default();
        let active_pollers = Gauge::default();
        let upload_memory_budget = Gauge::default();
        let upload_memory_in_use = Gauge::default();
        let uploads_waiting = Gauge::default();
        let uploads_refused = Family::<ReasonLabels, Counter>::default();
        let connections_open = Gauge::default();
        let auth_failures = Counter::default();
        let idempotency = Family::<OutcomeLabels, Counter>::default();
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        let result_hints = Family::<OutcomeLabels, Counter>::default();
        let result_cache_hits = Counter::default();
        let result_cache_misses = Counter::default();
        let result_cache_evictions = Counter::default();
        let result_cache_bytes = Gauge::default();
        let operator_wakes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "operator_wakes",
            "Wake-up hints to the operator after a job was queued, by outcome",
            operator_wakes.clone(),
        );
        registry.register(
            "result_hints",
            "Completion hints received on the internal port, by outcome",
            result_hints.clone(),
        );
        registry.register(
            "result_cache_hits",
            "Result reads answered from the finished-result cache",
            result_cache_hits.clone(),
        );
        registry.register(
            "result_cache_misses",
            "Result reads that were not in the finished-result cache",
            result_cache_misses.clone(),
        );
        registry.register(
            "result_cache_evictions",
            "Finished results evicted from the cache to stay within RESULT_CACHE_MB",
            result_cache_evictions.clone(),
        );
        registry.register(
            "result_cache_bytes",
            "Bytes of finished results held in the cache",
            result_cache_bytes.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "jobs_accepted",
            "Jobs stored and queued",
            jobs_accepted.clone(),
        );
        registry.register(
            "result_wait_timeouts",
            "Requests that waited for a result and answered 202 pending",
            wait_timeouts.clone(),
        );
        registry.register(
            "result_polls",
            "S3 reads made by the result waiter",
            result_polls.clone(),
        );
        registry.register(
            "result_pollers_active",
            "Jobs the result waiter is currently polling for",
            active_pollers.clone(),
        );
        registry.register(
            "upload_memory_budget_bytes",
            "UPLOAD_MEMORY_MB: bytes of upload bodies that may be held at once",
            upload_memory_budget.clone(),
        );
        registry.register(
            "upload_memory_reserved_bytes",
            "Bytes of the upload memory budget reserved right now",
            upload_memory_in_use.clone(),
        );
        registry.register(
            "uploads_waiting",
            "Uploads waiting for room in the memory budget",
            uploads_waiting.clone(),
        );
        registry.register(
            "uploads_refused",
            "Uploads answered without being stored, by reason",
            uploads_refused.clone(),
        );
        registry.register(
            "connections_open",
            "Open client connections on the public port (at most MAX_CONNECTIONS)",
            connections_open.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused with 401",
            auth_failures.clone(),
        );
        registry.register(
            "idempotency_keys",
            "Requests with an Idempotency-Key, by outcome",
            idempotency.clone(),
        );
        registry.register(
            "dependency_up",
            "1 when the last readiness check reached the dependency",
            dependency_up.clone(),
        );
        Metrics {
            registry,
            upload_memory_budget,
            upload_memory_in_use,
            uploads_waiting,
            uploads_refused,
            connections_open,
            auth_failures,
            idempotency,
            dependency_up,
            requests,
            latency,
            aws_calls,
            jobs_accepted,
            wait_timeouts,
            result_polls,
            active_pollers,
            result_hints,
            result_cache_hits,
            result_cache_misses,
            result_cache_evictions,
            result_cache_bytes,
            operator_wakes,
        }
    }
}

impl AsRef<Registry> for Metrics {
    fn as_ref(&self) -> &Registry {
        &self.registry
    }
}

impl Metrics {
    pub fn refused(&self, reason: &'static str) {
        self.uploads_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn idempotency_outcome(&self, outcome: &'static str) {
        self.idempotency
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The exposition text, as `/metrics` serves it (tests read counters from it).
    pub fn render(&self) -> String {
        qwp_runtime::metrics::encode(&self.registry)
    }
}

/// Middleware recording every request under its route template (`/jobs/{job_id}`), so
/// label cardinality stays bounded whatever paths clients send.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
