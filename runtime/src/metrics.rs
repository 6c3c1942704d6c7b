//! `/metrics`: a prometheus-client [`Registry`] in the OpenMetrics text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Where every qwp binary serves its metrics.
pub const PATH: &str = "/metrics";

/// The content type of what [`prometheus_client::encoding::text::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's exposition, for `/metrics` and for tests that read a counter.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// A router answering `GET /metrics` with the registry `metrics` holds; merge it into a
/// binary's router (`Router::merge`) so it shares that router's middleware.
pub fn router<S, M>(metrics: Arc<M>) -> Router<S>
where
    M: AsRef<Registry> + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(PATH, get(serve::<M>))
        .with_state(metrics)
}

async fn serve<M: AsRef<Registry>>(State(metrics): State<Arc<M>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        encode((*metrics).as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    struct Metrics {
        registry: Registry,
        jobs: Counter,
    }

    impl AsRef<Registry> for Metrics {
        fn as_ref(&self) -> &Registry {
            &self.registry
        }
    }

    fn metrics() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("qwp_test");
        let jobs = Counter::default();
        registry.register("jobs", "Jobs done", jobs.clone());
        Arc::new(Metrics { registry, jobs })
    }

    async fn request(app: Router, path: &str) -> (StatusCode, Option<String>, String) {
        let response = app
            .oneshot(
                Request::builder()
                    .method(Method::GET)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_current_registry_as_openmetrics_text() {
        let metrics = metrics();
        let app: Router = router(metrics.clone());
        metrics.jobs.inc_by(3);
        let (status, content_type, body) = request(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(body.contains("# TYPE qwp_test_jobs counter"), "{body}");
        assert!(body.contains("qwp_test_jobs_total 3\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(body, encode(&metrics.registry));

        // Read at request time, not when the router was built.
        metrics.jobs.inc();
        let (_, _, body) = request(app, "/metrics").await;
        assert!(body.contains("qwp_test_jobs_total 4\n"), "{body}");
    }

    #[tokio::test]
    async fn merges_into_a_router_with_its_own_state() {
        let app: Router = Router::new()
            .route(
                "/healthz",
                get(|State(answer): State<&'static str>| async move { answer }),
            )
            .merge(router(metrics()))
            .with_state("ok");
        let (status, _, body) = request(app.clone(), "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, content_type, _) = request(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
    }
}
