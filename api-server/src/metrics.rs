//! Prometheus metrics: requests by route and status, latency per route, jobs accepted,
//! waits that ran out of time, and how hard the result waiter works S3.

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

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily,
    pub jobs_accepted: Counter,
    pub wait_timeouts: Counter,
    pub result_polls: Counter,
    pub active_pollers: Gauge,
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
        let jobs_accepted = Counter::default();
        let wait_timeouts = Counter::default();
        let result_polls = Counter::default();
        let active_pollers = Gauge::default();
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
        Metrics {
            registry,
            requests,
            latency,
            jobs_accepted,
            wait_timeouts,
            result_polls,
            active_pollers,
        }
    }
}

impl AsRef<Registry> for Metrics {
    fn as_ref(&self) -> &Registry {
        &self.registry
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
