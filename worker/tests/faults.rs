//! Fault injection against the real LocalStack: the worker talks to it through a faulting
//! HTTP proxy (`common::fault_proxy`) that fails, holds or partly forwards chosen requests.
//! Every test checks that each job ends with exactly one stored result (result buckets keep
//! versions, so an overwrite would show as a second version) and that the worker still
//! consumes afterwards.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy, Match};
use common::*;
use qwp_jobs::result::Outcome as ResultOutcome;
use qwp_jobs::testing::TestStack;
use qwp_jobs::{JobId, JobMessage, JobResult};
use qwp_pool::contract::termination_grace_seconds;
use qwp_worker::consumer::RELEASE_BUDGET;
use qwp_worker::metrics::Outcome;
use qwp_worker::processor::checksum;
use qwp_worker::settings::{ProcessorSettings, SleepDuration};
use qwp_worker::{JobObserver, Settings};

fn settings(concurrency: usize, processor: ProcessorSettings) -> Settings {
    Settings {
        concurrency,
        processor,
        drain: Duration::from_secs(20),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(2),
        ..Settings::default()
    }
}

fn sleep_for(seconds: u64) -> ProcessorSettings {
    ProcessorSettings::Sleep(SleepDuration::Fixed(Duration::from_secs(seconds)))
}

/// A stack whose result bucket keeps every version of every result.
async fn versioned_stack(
    prefix: &str,
    visibility: u32,
    max_receive_count: Option<u32>,
) -> TestStack {
    let stack = stack(prefix, visibility, max_receive_count).await;
    keep_result_versions(&stack).await;
    stack
}

async fn proxy(stack: &TestStack) -> FaultProxy {
    FaultProxy::start(stack.config.aws_endpoint_url.as_deref().unwrap()).await
}

async fn submit_one(stack: &TestStack, name: &str, input: &[u8]) -> JobMessage {
    let job = new_job(name);
    stack.submit(&[(job.clone(), input.to_vec())]).await;
    job
}

/// Each job has exactly one result, written once.
async fn assert_written_once(stack: &TestStack, ids: &[JobId]) {
    for id in ids {
        assert_eq!(
            result_versions(stack, id).await,
            1,
            "result of {id} written more than once"
        );
    }
}

/// A fresh job submitted now is done by the worker (it did not stop consuming).
async fn assert_still_consuming(stack: &TestStack) {
    let job = submit_one(stack, "after.bin", b"after the fault").await;
    let results = wait_for_results(stack, &[job.job_id]).await;
    assert!(results[&job.job_id].is_done(), "{:?}", results[&job.job_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_put_that_fails_after_storing_is_not_written_again() {
    let stack = versioned_stack("f-put500", 30, None).await;
    let proxy = proxy(&stack).await;
    // The first PutObject of a result reaches S3, but the worker is told 500; the SDK's own
    // retry then finds the object there (412) and the worker keeps it.
    proxy.inject(
        Match::PutObject {
            bucket: stack.config.s3_out_bucket.clone(),
        },
        Fault::ForwardThenFail,
        Some(1),
    );
    let job = submit_one(&stack, "a.bin", b"payload").await;
    let clients = clients_via(&stack, &proxy.url).await;
    let worker = start_worker_with(
        &stack,
        &clients,
        settings(1, ProcessorSettings::Checksum),
        Arc::new(Counting::default()),
    );

    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert_eq!(
        results[&job.job_id],
        JobResult::done(job.job_id, checksum(b"payload"))
    );
    wait_for_empty_queue(&stack).await;
    assert_eq!(proxy.injected(), 1);
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(
        metrics.result_conflicts(),
        1,
        "the retried write found the first one"
    );
    assert_written_once(&stack, &[job.job_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_put_5xx_is_retried_through_the_queue_and_stored_once() {
    let stack = versioned_stack("f-put503", 30, None).await;
    let proxy = proxy(&stack).await;
    // Three 503s: more than the SDK retries within one attempt, so the job goes back to the
    // queue and a later attempt stores it.
    proxy.inject(
        Match::PutObject {
            bucket: stack.config.s3_out_bucket.clone(),
        },
        Fault::Fail {
            status: 503,
            code: "SlowDown",
        },
        Some(3),
    );
    let job = submit_one(&stack, "a.bin", b"payload").await;
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let worker = start_worker_with(
        &stack,
        &clients,
        settings(1, ProcessorSettings::Checksum),
        observer.clone(),
    );

    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert_eq!(
        results[&job.job_id],
        JobResult::done(job.job_id, checksum(b"payload"))
    );
    wait_for_empty_queue(&stack).await;
    assert_eq!(proxy.injected(), 3);
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    assert!(
        metrics.jobs_with(Outcome::Retried) >= 1,
        "the failed write sent the job back"
    );
    assert!(observer.runs()[&job.job_id] >= 2);
    assert_written_once(&stack, &[job.job_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_batch_partial_failures_are_acknowledged_on_redelivery() {
    // A 2 s visibility timeout: messages whose delete failed come back quickly.
    let stack = versioned_stack("f-delbatch", 2, None).await;
    let proxy = proxy(&stack).await;
    proxy.inject(
        Match::Sqs("DeleteMessageBatch"),
        Fault::DropEveryOtherEntry,
        Some(6),
    );
    let jobs: Vec<_> = (0..12)
        .map(|i| {
            (
                new_job(&format!("in_{i}.bin")),
                format!("input {i}").into_bytes(),
            )
        })
        .collect();
    stack.submit(&jobs).await;
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let worker = start_worker_with(
        &stack,
        &clients,
        settings(4, ProcessorSettings::Checksum),
        observer.clone(),
    );

    let ids: Vec<JobId> = jobs.iter().map(|(job, _)| job.job_id).collect();
    let results = wait_for_results(&stack, &ids).await;
    for (job, input) in &jobs {
        assert_eq!(
            results[&job.job_id],
            JobResult::done(job.job_id, checksum(input))
        );
    }
    wait_for_empty_queue(&stack).await;
    let dropped = proxy.dropped_entries();
    assert!(dropped >= 1, "the proxy dropped no delete");
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(
        metrics.jobs_with(Outcome::AlreadyDone),
        dropped as u64,
        "each message whose delete failed came back once and was acknowledged without running"
    );
    assert!(
        observer.runs().values().all(|&n| n == 1),
        "{:?}",
        observer.runs()
    );
    assert_written_once(&stack, &ids).await;
}

/// Panics in the processor step of chosen jobs, a given number of times each.
#[derive(Default)]
struct Panicking {
    counting: Counting,
    panics_left: Mutex<HashMap<JobId, usize>>,
}

impl JobObserver for Panicking {
    fn job_started(&self) {
        self.counting.job_started();
    }
    fn job_finished(&self) {
        self.counting.job_finished();
    }
    fn processor_started(&self, job_id: &JobId) {
        self.counting.processor_started(job_id);
        let panic_now = match self.panics_left.lock().unwrap().get_mut(job_id) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        if panic_now {
            panic!("injected processor panic");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_is_retried_then_fails_for_good_and_the_worker_keeps_consuming() {
    let stack = versioned_stack("f-panic", 30, None).await;
    let once = submit_one(&stack, "once.bin", b"once").await;
    let always = submit_one(&stack, "always.bin", b"always").await;
    let observer = Arc::new(Panicking::default());
    observer
        .panics_left
        .lock()
        .unwrap()
        .extend([(once.job_id, 1), (always.job_id, usize::MAX)]);
    let worker = start_worker(
        &stack,
        Settings {
            max_attempts: 2,
            ..settings(2, ProcessorSettings::Checksum)
        },
        observer.clone(),
    );

    let results = wait_for_results(&stack, &[once.job_id, always.job_id]).await;
    assert_eq!(
        results[&once.job_id],
        JobResult::done(once.job_id, checksum(b"once"))
    );
    match &results[&always.job_id].outcome {
        ResultOutcome::Failed { error } => assert_eq!(
            error,
            "gave up after 2 attempts: the processor panicked: injected processor panic"
        ),
        other => panic!("expected a failed result, got {other:?}"),
    }
    wait_for_empty_queue(&stack).await;
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    let runs = observer.counting.runs();
    assert_eq!((runs[&once.job_id], runs[&always.job_id]), (2, 2));
    assert_eq!(metrics.jobs_with(Outcome::Retried), 2);
    assert_eq!(
        metrics.in_flight(),
        0,
        "panicked attempts released their slots"
    );
    assert_written_once(&stack, &[once.job_id, always.job_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_heartbeat_call_does_not_let_the_visibility_lapse() {
    // 4 s visibility, 9 s job: beats every 2 s, each call bounded by 1 s. The first beat
    // hangs; the retry right after it must still land before the visibility runs out, or the
    // second worker (direct to LocalStack, free slots) would run the job too.
    let stack = versioned_stack("f-hbhang", 4, None).await;
    let proxy = proxy(&stack).await;
    proxy.inject(
        Match::SqsFirstReceipt("ChangeMessageVisibility"),
        Fault::Hang,
        Some(1),
    );
    let job = submit_one(&stack, "long.bin", b"x").await;
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let first = start_worker_with(
        &stack,
        &clients,
        settings(1, sleep_for(9)),
        observer.clone(),
    );
    wait_until("the first worker to run the job", || async {
        observer.total_runs() == 1
    })
    .await;
    let second = start_worker(&stack, settings(2, sleep_for(9)), observer.clone());

    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert!(results[&job.job_id].is_done());
    wait_for_empty_queue(&stack).await;
    assert_eq!(proxy.injected(), 1, "the hanging call happened");
    let second_metrics = second.stop().await;
    let first_metrics = first.stop().await;
    assert_eq!(observer.runs()[&job.job_id], 1, "the job ran twice");
    assert_eq!(first_metrics.heartbeat_failures(), 1);
    assert_eq!(first_metrics.jobs_with(Outcome::Abandoned), 0);
    assert_eq!(second_metrics.jobs_with(Outcome::Done), 0);
    assert_written_once(&stack, &[job.job_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hand_back_still_ends_within_the_release_margin() {
    // SIGTERM with two 60 s jobs running and a 1 s drain; every ChangeMessageVisibilityBatch
    // (the hand-back) hangs. The worker must still be gone within the pod's grace period
    // (drain + release margin), before the kubelet's SIGKILL; the jobs come back when their
    // visibility (6 s) runs out, and a second worker finishes each once.
    let stack = versioned_stack("f-release", 6, None).await;
    let proxy = proxy(&stack).await;
    proxy.inject(
        Match::Sqs("ChangeMessageVisibilityBatch"),
        Fault::Hang,
        None,
    );
    let jobs: Vec<JobMessage> = [
        submit_one(&stack, "a.bin", b"a").await,
        submit_one(&stack, "b.bin", b"b").await,
    ]
    .into();
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let drain = Duration::from_secs(1);
    let first = start_worker_with(
        &stack,
        &clients,
        Settings {
            drain,
            ..settings(2, sleep_for(60))
        },
        observer.clone(),
    );
    wait_until("both jobs running", || async { observer.total_runs() == 2 }).await;

    let signalled = tokio::time::Instant::now();
    first.shutdown.cancel();
    let grace = Duration::from_secs(termination_grace_seconds(1).try_into().unwrap());
    tokio::time::timeout(grace, first.task)
        .await
        .expect("the worker outlived the pod's grace period: SIGKILL would come first")
        .unwrap();
    let stopped_after = signalled.elapsed();
    println!("stopped {stopped_after:?} after the signal (drain {drain:?}, grace {grace:?})");
    assert!(
        stopped_after >= drain + RELEASE_BUDGET,
        "the hand-back was given up before its budget: {stopped_after:?}"
    );
    assert!(proxy.injected() >= 1, "the hand-back was attempted");
    assert_eq!(first.metrics.jobs_with(Outcome::Released), 0);

    let second = start_worker(&stack, settings(2, sleep_for(0)), observer.clone());
    let ids: Vec<JobId> = jobs.iter().map(|job| job.job_id).collect();
    let results = wait_for_results(&stack, &ids).await;
    assert!(results.values().all(JobResult::is_done), "{results:?}");
    wait_for_empty_queue(&stack).await;
    second.stop().await;
    assert_written_once(&stack, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_heartbeats_stop_the_attempt_and_the_next_attempt_finishes_the_job() {
    // Every beat of the first attempt fails with 500: once the visibility it had runs out
    // the attempt stops (no result), and the redelivery (beats fine) stores the result.
    let stack = versioned_stack("f-hbfail", 3, None).await;
    let proxy = proxy(&stack).await;
    proxy.inject(
        Match::SqsFirstReceipt("ChangeMessageVisibility"),
        Fault::Fail {
            status: 500,
            code: "InternalError",
        },
        None,
    );
    let job = submit_one(&stack, "long.bin", b"x").await;
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let worker = start_worker_with(
        &stack,
        &clients,
        settings(1, sleep_for(5)),
        observer.clone(),
    );

    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert!(results[&job.job_id].is_done());
    wait_for_empty_queue(&stack).await;
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(metrics.jobs_with(Outcome::Abandoned), 1);
    assert!(metrics.heartbeat_failures() >= 1);
    assert!(proxy.injected() >= 1);
    assert_eq!(
        observer.runs()[&job.job_id],
        2,
        "stopped once, finished once"
    );
    assert_written_once(&stack, &[job.job_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_receipt_handle_stops_the_attempt_at_the_first_beat() {
    let stack = versioned_stack("f-hbinvalid", 4, None).await;
    let proxy = proxy(&stack).await;
    proxy.inject(
        Match::SqsFirstReceipt("ChangeMessageVisibility"),
        Fault::Fail {
            status: 400,
            code: "ReceiptHandleIsInvalid",
        },
        None,
    );
    let job = submit_one(&stack, "long.bin", b"x").await;
    let clients = clients_via(&stack, &proxy.url).await;
    let observer = Arc::new(Counting::default());
    let worker = start_worker_with(
        &stack,
        &clients,
        settings(1, sleep_for(5)),
        observer.clone(),
    );

    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert!(results[&job.job_id].is_done());
    wait_for_empty_queue(&stack).await;
    assert_still_consuming(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(
        proxy.injected(),
        1,
        "given up at the first answer, not retried"
    );
    assert_eq!(metrics.heartbeat_failures(), 1);
    assert_eq!(metrics.jobs_with(Outcome::Abandoned), 1);
    assert_eq!(observer.runs()[&job.job_id], 2);
    assert_written_once(&stack, &[job.job_id]).await;
}

/// Records when each processor run started.
#[derive(Default)]
struct Timed {
    starts: Mutex<Vec<tokio::time::Instant>>,
}

impl JobObserver for Timed {
    fn processor_started(&self, _job_id: &JobId) {
        self.starts
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_retries_run_out_the_api_server_answers_failed() {
    // Every attempt times out; the queue's redrive policy allows 2 receives.
    let stack = stack("f-api", 10, Some(2)).await;
    let dlq = stack.dlq_url.clone().unwrap();
    let job = submit_one(&stack, "slow.jpg", b"x").await;
    let api = qwp_api_server::AppState::new(
        qwp_api_server::settings::Settings::with_config(stack.config.clone()),
        stack.clients.clone(),
    );
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", public.local_addr().unwrap());
    tokio::spawn(qwp_api_server::serve(
        qwp_api_server::Listeners {
            public,
            admin,
            internal,
        },
        api,
        std::future::pending(),
    ));

    let observer = Arc::new(Timed::default());
    let worker = start_worker(
        &stack,
        settings(
            1,
            command(
                &["sh", "-c", "exec sleep 30", "{input}"],
                Duration::from_secs(1),
            ),
        ),
        observer.clone(),
    );
    let status_url = format!("{api_url}/status/{}", job.job_id);
    let answer: serde_json::Value = poll_until("GET /status to answer 200", || async {
        let response = reqwest::get(&status_url).await.ok()?;
        match response.status().as_u16() {
            200 => response.json().await.ok(),
            202 => None,
            other => panic!("GET /status answered {other}"),
        }
    })
    .await;
    let visible_at = tokio::time::Instant::now();
    assert_eq!(answer["status"], "failed", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("gave up after 2 attempts: ") && error.contains("timed out"),
        "{error}"
    );
    let starts = observer.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "two attempts, then no more");
    let after_last_attempt = visible_at - starts[1];
    println!("failed visible on GET /status {after_last_attempt:?} after the last attempt started");
    assert!(
        after_last_attempt < Duration::from_secs(60),
        "{after_last_attempt:?}"
    );

    let parked = poll_until("the message in the DLQ", || receive_one(&stack, &dlq)).await;
    assert_eq!(parked.body(), Some(job.encode().as_str()));
    assert_still_consuming_then_stop(&stack, worker).await;
}

/// The worker keeps consuming. Its command always times out, so the job that proves it is
/// one whose input is missing: it ends at once with a failed result.
async fn assert_still_consuming_then_stop(stack: &TestStack, worker: RunningWorker) {
    let never_uploaded = new_job("missing.jpg");
    stack
        .send_messages(std::slice::from_ref(&never_uploaded))
        .await;
    let results = wait_for_results(stack, &[never_uploaded.job_id]).await;
    assert!(!results[&never_uploaded.job_id].is_done());
    wait_for_empty_queue(stack).await;
    worker.stop().await;
}
