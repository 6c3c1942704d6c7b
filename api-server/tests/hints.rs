//! Completion hints and the finished-result cache, against the real LocalStack and the
//! real worker: a hint wakes the waiter (with polling slowed past the wait, only the hint
//! can answer in time), a lost hint leaves the poll to find the result, forged hints never
//! produce a wrong result, and a cached result is served without S3.

mod common;

use common::{Server, checksum_of};

use std::sync::Arc;
use std::time::Duration;

use qwp_api_server::AppState;
use qwp_api_server::settings::Settings;
use qwp_jobs::hint::result_hint_url;
use qwp_jobs::testing::{TestStack, TestStackOptions, wait_until};
use qwp_jobs::{JobId, JobResult, keys};
use qwp_worker::settings::ProcessorSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Slower than any wait in these tests: only a hint can answer a waiter in time.
const NEVER: Duration = Duration::from_secs(60);
/// How long in-process state (counters, waiters) gets to change, and how often it is checked.
const PATIENCE: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(10);

impl Server {
    /// `reply_to`: an address to advertise instead of the internal port (a lost hint).
    async fn start(
        stack: &TestStack,
        tweak: impl FnOnce(&mut Settings),
        reply_to: Option<String>,
    ) -> Server {
        Self::start_with(stack, stack.clients.clone(), tweak, |state| {
            if let Some(reply_to) = reply_to {
                state.reply_to.set(reply_to).unwrap();
            }
        })
        .await
    }

    async fn submit(&self, data: &[u8], wait: u64) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/jobs?filename=a.bin&wait={wait}", self.base))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn status(&self, job_id: &str, wait: u64) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}/jobs/{job_id}?wait={wait}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn hint(&self, job_id: &JobId) -> StatusCode {
        self.client
            .post(result_hint_url(&self.internal.to_string(), job_id))
            .send()
            .await
            .unwrap()
            .status()
    }

    fn hints(&self, outcome: &str) -> u64 {
        metric(
            &self.state,
            &format!("qwp_api_result_hints_total{{outcome=\"{outcome}\"}}"),
        )
    }

    fn polls(&self) -> u64 {
        metric(&self.state, "qwp_api_result_polls_total")
    }
}

/// One sample of the server's own Prometheus text (0 while the series does not exist).
fn metric(state: &AppState, series: &str) -> u64 {
    let mut text = String::new();
    let registry: &prometheus_client::registry::Registry = (*state.metrics).as_ref();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

fn start_worker(stack: &TestStack) -> (CancellationToken, Arc<qwp_worker::metrics::Metrics>) {
    let settings = qwp_worker::Settings {
        concurrency: 2,
        drain: Duration::from_secs(1),
        ..Default::default()
    };
    start_worker_with(stack, settings)
}

fn start_worker_with(
    stack: &TestStack,
    settings: qwp_worker::Settings,
) -> (CancellationToken, Arc<qwp_worker::metrics::Metrics>) {
    let worker = qwp_worker::Worker::new(
        &stack.config,
        settings,
        &stack.clients,
        stack.queue_url.clone(),
    )
    .expect("worker settings are valid");
    let metrics = worker.metrics();
    let token = CancellationToken::new();
    tokio::spawn(worker.run(token.clone()));
    (token, metrics)
}

async fn stack(prefix: &str) -> TestStack {
    TestStack::new(prefix, TestStackOptions::default()).await
}

fn slow_polls(settings: &mut Settings) {
    settings.result_poll_initial = NEVER;
    settings.result_poll_max = NEVER;
}

#[tokio::test]
async fn the_workers_hint_answers_a_waiter_that_would_not_poll_in_time() {
    let stack = stack("hint-wake").await;
    let server = Server::start(&stack, slow_polls, None).await;
    let (worker, worker_metrics) = start_worker(&stack);
    let data = b"pushed, not polled";
    let (status, body) = server.submit(data, 20).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], checksum_of(data));
    assert_eq!(server.hints("woke"), 1);
    // The first and only S3 read of the waiter was the one the hint triggered.
    assert_eq!(server.polls(), 1);
    assert_eq!(worker_metrics.result_hints("sent"), 1);
    worker.cancel();
    server.shutdown().await;
}

#[tokio::test]
async fn the_failed_result_of_the_last_attempt_is_hinted_too() {
    let stack = stack("hint-failed").await;
    let server = Server::start(&stack, slow_polls, None).await;
    // A program that cannot start is a transient failure; with one attempt allowed, the
    // worker stores a `failed` result at once.
    let settings = qwp_worker::Settings {
        concurrency: 1,
        drain: Duration::from_secs(1),
        max_attempts: 1,
        processor: ProcessorSettings::Command {
            argv: vec!["/nonexistent/qwp-no-such-program".into()],
            timeout: Duration::from_secs(5),
            env: Vec::new(),
        },
        ..Default::default()
    };
    let (worker, worker_metrics) = start_worker_with(&stack, settings);
    let (status, body) = server.submit(b"never runs", 20).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("gave up after 1 attempts: "), "{error}");
    // Slow polls: only the hint could have woken the waiter for its one read.
    assert_eq!(server.hints("woke"), 1);
    assert_eq!(server.polls(), 1);
    assert_eq!(worker_metrics.result_hints("sent"), 1);
    worker.cancel();
    server.shutdown().await;
}

#[tokio::test]
async fn a_lost_hint_leaves_the_result_to_polling() {
    let stack = stack("hint-lost").await;
    // Advertise a port that is held but never accepts: the worker's hint times out.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lost = black_hole.local_addr().unwrap().to_string();
    let server = Server::start(&stack, |_| {}, Some(lost)).await;
    let (worker, worker_metrics) = start_worker(&stack);
    let data = b"found by polling";
    let (status, body) = server.submit(data, 20).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], checksum_of(data));
    assert_eq!(server.hints("woke") + server.hints("no_waiter"), 0);
    assert!(server.polls() >= 1);
    // The hint's own fate: it ends in a timeout (500 ms), never delivered.
    wait_until("the lost hint to time out", PATIENCE, TICK, || async {
        worker_metrics.result_hints("failed") == 1
    })
    .await;
    assert_eq!(worker_metrics.result_hints("failed"), 1);
    assert_eq!(worker_metrics.result_hints("sent"), 0);
    drop(black_hole);
    worker.cancel();
    server.shutdown().await;
}

/// Stores `job_id`'s result as a worker would, so a job "finishes" without one.
async fn store_result(stack: &TestStack, result: &JobResult) {
    stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(keys::output_key(&result.job_id))
        .body(serde_json::to_vec(result).unwrap().into())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn forged_hints_cost_a_read_and_never_give_a_wrong_result() {
    let stack = stack("hint-forged").await;
    let server = Server::start(&stack, slow_polls, None).await;
    // No worker: the submitted job stays pending.
    let (status, body) = server.submit(b"never processed", 0).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let pending: JobId = body["job_id"].as_str().unwrap().parse().unwrap();
    // Another job that has a result.
    let other = JobId::new();
    store_result(&stack, &JobResult::done(other, json!("not yours"))).await;

    let waiting = {
        let client = server.client.clone();
        let url = format!("{}/jobs/{pending}?wait=3", server.base);
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    wait_until(
        "the request to wait for its job",
        PATIENCE,
        TICK,
        || async { server.state.waiter.waiters(&pending) == 1 },
    )
    .await;
    assert_eq!(server.state.waiter.waiters(&pending), 1);
    let polls_before = server.polls();
    // A hint naming the other (finished) job wakes nobody here.
    assert_eq!(server.hint(&other).await, StatusCode::NO_CONTENT);
    assert_eq!(server.hints("no_waiter"), 1);
    // A hint for the pending job wakes its waiter for exactly one read, which finds nothing.
    assert_eq!(server.hint(&pending).await, StatusCode::NO_CONTENT);
    assert_eq!(server.hints("woke"), 1);
    wait_until("the woken waiter's read", PATIENCE, TICK, || async {
        server.polls() > polls_before
    })
    .await;
    assert_eq!(server.polls(), polls_before + 1);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["job_id"], pending.to_string());
    assert_eq!(server.polls(), polls_before + 1);
    // Garbage on the hint route is refused; it is not a job id.
    let garbage = server
        .client
        .post(format!(
            "http://{}/internal/v1/results/not-a-job",
            server.internal
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    server.shutdown().await;
}

#[tokio::test]
async fn a_finished_result_is_served_from_memory_without_s3() {
    let stack = stack("result-cache").await;
    let server = Server::start(&stack, |_| {}, None).await;
    let (worker, _) = start_worker(&stack);
    let data = b"cache me";
    let (status, body) = server.submit(data, 20).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_string();
    worker.cancel();
    // Remove the result from S3: only memory can answer now.
    stack
        .clients
        .s3
        .delete_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(&job_id)
        .send()
        .await
        .unwrap();
    let polls = server.polls();
    for _ in 0..3 {
        let (status, body) = server.status(&job_id, 0).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["result"], checksum_of(data));
    }
    assert!(metric(&server.state, "qwp_api_result_cache_hits_total") >= 3);
    assert_eq!(server.polls(), polls);
    server.shutdown().await;
}

#[tokio::test]
async fn with_the_cache_off_every_status_read_goes_to_s3() {
    let stack = stack("result-nocache").await;
    let server = Server::start(&stack, |s| s.result_cache_bytes = 0, None).await;
    let job_id = JobId::new();
    store_result(&stack, &JobResult::done(job_id, json!("from s3"))).await;
    let (status, _) = server.status(&job_id.to_string(), 0).await;
    assert_eq!(status, StatusCode::OK);
    stack
        .clients
        .s3
        .delete_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(job_id.to_string())
        .send()
        .await
        .unwrap();
    // Gone from S3 and not remembered: the job is unknown (its input never existed).
    let (status, body) = server.status(&job_id.to_string(), 0).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.shutdown().await;
}

/// A fake operator replica: records the queue of every wake-up hint and answers `status`
/// (202 as the leader, 503 as a standby).
async fn fake_operator(
    status: StatusCode,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use axum::extract::{Query, State};
    use std::collections::HashMap;
    let (seen, received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new()
        .route(
            qwp_pool::contract::WAKE_PATH,
            axum::routing::post(
                move |State(seen): State<tokio::sync::mpsc::UnboundedSender<String>>,
                      Query(query): Query<HashMap<String, String>>| async move {
                    let queue = query
                        .get(qwp_pool::contract::WAKE_QUEUE_PARAM)
                        .cloned()
                        .unwrap_or_default();
                    let _ = seen.send(queue);
                    status
                },
            ),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, received)
}

#[tokio::test]
async fn a_queued_job_wakes_every_listed_operator_replica_at_most_once_a_second() {
    let stack = stack("operator-wake").await;
    let (standby, mut standby_seen) = fake_operator(StatusCode::SERVICE_UNAVAILABLE).await;
    let (leader, mut leader_seen) = fake_operator(StatusCode::ACCEPTED).await;
    let server = Server::start(
        &stack,
        |s| s.operator_wake_address = Some(format!("{standby}, {leader}")),
        None,
    )
    .await;
    let wakes = |outcome: &str| {
        metric(
            &server.state,
            &format!("qwp_api_operator_wakes_total{{outcome=\"{outcome}\"}}"),
        )
    };

    let started = std::time::Instant::now();
    let (status, body) = server.submit(b"first", 0).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Both replicas are asked (the API server does not know which one leads), with the
    // queue's name; the leader's 202 makes the hint `sent`.
    let queue = stack.config.sqs_req_queue_name.clone();
    for seen in [&mut standby_seen, &mut leader_seen] {
        let hint = tokio::time::timeout(PATIENCE, seen.recv()).await;
        assert_eq!(
            hint.ok().flatten(),
            Some(queue.clone()),
            "a replica got no hint"
        );
    }
    wait_until(
        "the leader's hint counted as sent",
        PATIENCE,
        TICK,
        || async { wakes("sent") == 1 },
    )
    .await;

    // More jobs right after: debounced, at most one hint per second in all.
    const MORE: u64 = 5;
    for i in 0..MORE {
        let (status, body) = server.submit(format!("job {i}").as_bytes(), 0).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let seconds = started.elapsed().as_secs();
    wait_until(
        "every acceptance's hint counted",
        PATIENCE,
        TICK,
        || async { wakes("sent") + wakes("not_taken") + wakes("debounced") == 1 + MORE },
    )
    .await;
    assert!(
        wakes("sent") + wakes("not_taken") <= 1 + seconds,
        "{} hints in {seconds} s",
        wakes("sent") + wakes("not_taken")
    );
    assert!(
        wakes("debounced") >= MORE.saturating_sub(seconds),
        "too few debounced"
    );
    let mut leader_hints = 1;
    while leader_seen.try_recv().is_ok() {
        leader_hints += 1;
    }
    assert_eq!(
        leader_hints,
        wakes("sent"),
        "a hint the leader took was not counted"
    );
    server.shutdown().await;
}
