//! Scale-down of a large pool, from the decision to every deletion cost set and the Deployment
//! applied: the operator's own apply step (`reconcile::apply::deployment`, the pods from its
//! cache, bounded probes and patches) against a mocked API server and mocked worker `/status`
//! answers with the latencies given. Prints numbers, asserts nothing.
//!
//! ```text
//! cargo run -p qwp-operator --example scale_down_bench -- --pods 200 --silent 20
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::watcher::Event;
use qwp_operator::Context;
use qwp_operator::deletion_cost::{InFlightProbe, PATCH_CONCURRENCY, PROBE_CONCURRENCY};
use qwp_operator::metrics::Metrics;
use qwp_operator::queue::{QueueDepthSource, QueueError, QueueTarget, Reading};
use qwp_operator::reconcile::observe::Observed;
use qwp_operator::reconcile::{apply, validate};
use qwp_pool::crd::{QueueWorkerPool, QueueWorkerPoolSpec};
use qwp_pool::decision::{Decision, QueueDepth, ScaleReason};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Pods of the pool before the scale-down.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Replicas after it.
    #[arg(long, default_value_t = 20)]
    to: u32,
    /// Pods whose /status never answers (each costs the probe timeout).
    #[arg(long, default_value_t = 20)]
    silent: usize,
    /// Probe timeout, as QWP_POD_STATUS_TIMEOUT_MS (default 1000).
    #[arg(long, default_value_t = 1000)]
    probe_timeout_ms: u64,
    /// Time a worker takes to answer /status.
    #[arg(long, default_value_t = 2)]
    probe_ms: u64,
    /// Time the API server takes to answer one request.
    #[arg(long, default_value_t = 5)]
    api_ms: u64,
}

/// Busy pods answer after `probe_ms` with a count; silent ones after the timeout with nothing.
struct SimulatedWorkers {
    answer: Duration,
    timeout: Duration,
    silent: usize,
}

impl InFlightProbe for SimulatedWorkers {
    fn in_flight<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Option<u32>> {
        let index: usize = pod_ip.rsplit('.').next().unwrap().parse().unwrap();
        let octet3: usize = pod_ip.split('.').nth(2).unwrap().parse().unwrap();
        let n = octet3 * 256 + index;
        Box::pin(async move {
            if n < self.silent {
                tokio::time::sleep(self.timeout).await;
                None
            } else {
                tokio::time::sleep(self.answer).await;
                Some(u32::from(n.is_multiple_of(3)))
            }
        })
    }
}

struct NoQueue;

impl QueueDepthSource for NoQueue {
    fn read<'a>(&'a self, _: &'a QueueTarget) -> BoxFuture<'a, Result<Reading, QueueError>> {
        Box::pin(async { Err(QueueError::new("Unused", "not read by the apply step")) })
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let api_latency = Duration::from_millis(args.api_ms);
    {
        let (in_flight, peak, requests) = (in_flight.clone(), peak.clone(), requests.clone());
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (in_flight, peak, requests) =
                    (in_flight.clone(), peak.clone(), requests.clone());
                tokio::spawn(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = request.into_body().collect_bytes().await.unwrap();
                    tokio::time::sleep(api_latency).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    send.send_response(Response::new(Body::from(body.to_vec())));
                });
            }
        });
    }

    let ctx = Context::new(
        Client::new(service, "default"),
        Arc::new(NoQueue),
        Arc::new(SimulatedWorkers {
            answer: Duration::from_millis(args.probe_ms),
            timeout: Duration::from_millis(args.probe_timeout_ms),
            silent: args.silent,
        }),
        Arc::new(Metrics::default()),
    );
    let mut pods = ctx.take_pod_writer().unwrap();
    pods.apply_watcher_event(&Event::Init);
    for n in 0..args.pods {
        let pod = json!({"metadata": {"name": format!("big-{n}"), "namespace": "jobs",
                                      "labels": {"queueworker.io/pool": "big"}},
                         "status": {"podIP": format!("10.1.{}.{}", n / 256, n % 256), "phase": "Running"}});
        pods.apply_watcher_event(&Event::InitApply(serde_json::from_value(pod).unwrap()));
    }
    pods.apply_watcher_event(&Event::InitDone);

    let spec: QueueWorkerPoolSpec = serde_json::from_value(json!({
        "queue": {"name": "big", "region": "us-east-1"},
        "maxReplicas": args.pods, "concurrency": 1,
        "template": {"spec": {"containers": [{"name": "worker", "image": "qwp-worker:dev"}]}},
    }))
    .unwrap();
    let mut pool = QueueWorkerPool::new("big", spec);
    pool.metadata.namespace = Some("jobs".into());
    pool.metadata.uid = Some("uid".into());
    let valid = validate::spec(&pool).unwrap();
    let current = u32::try_from(args.pods).unwrap();
    let observed = Observed {
        deployment: None,
        current,
        reading: Ok(Reading {
            url: "q".into(),
            depth: QueueDepth::default(),
            api_calls: 1,
        }),
        fresh: true,
    };
    let decision = Decision {
        replicas: args.to,
        recommendation: Some(args.to),
        backlog: Some(0),
        reason: ScaleReason::Backlog {
            backlog: 0,
            per_pod: 1,
            replicas: args.to,
        },
        limit: None,
    };

    let started = Instant::now();
    apply::deployment(&valid, &ctx, &observed, &decision)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let sequential = Duration::from_millis(args.api_ms) * u32::try_from(args.pods + 1).unwrap()
        + Duration::from_millis(args.probe_timeout_ms) * u32::try_from(args.silent).unwrap()
        + Duration::from_millis(args.probe_ms) * u32::try_from(args.pods - args.silent).unwrap();
    println!(
        "scale-down {} → {} pods ({} silent, /status {} ms or a {} ms timeout, API {} ms per request): \
         decision → every cost set and the Deployment applied in {:.0} ms; {} API requests \
         ({} cost patches + 1 apply, no LIST), at most {} at once (bounds: {} probes, {} patches); \
         one at a time it would take at least {:.1} s",
        args.pods,
        args.to,
        args.silent,
        args.probe_ms,
        args.probe_timeout_ms,
        args.api_ms,
        elapsed.as_secs_f64() * 1000.0,
        requests.load(Ordering::SeqCst),
        requests.load(Ordering::SeqCst).saturating_sub(1),
        peak.load(Ordering::SeqCst),
        PROBE_CONCURRENCY,
        PATCH_CONCURRENCY,
        sequential.as_secs_f64(),
    );
}
