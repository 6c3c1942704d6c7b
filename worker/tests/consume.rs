//! The worker against the real LocalStack: throughput correctness, failure handling,
//! visibility heartbeat, redelivery. Start LocalStack with `make localstack-up`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use common::*;
use qwp_jobs::result::Outcome as ResultOutcome;
use qwp_jobs::testing::TestStack;
use qwp_jobs::{JobMessage, JobResult};
use qwp_pool::contract::WorkerStatus;
use qwp_worker::metrics::{Metrics, Outcome};
use qwp_worker::processor::checksum;
use qwp_worker::settings::{ProcessorSettings, SleepDuration};
use qwp_worker::{Settings, admin};

fn settings(concurrency: usize, processor: ProcessorSettings) -> Settings {
    Settings {
        concurrency,
        processor,
        drain: Duration::from_secs(20),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_at_concurrency_eight_each_run_once() {
    let stack = stack("w-200", 30, None).await;
    let jobs: Vec<_> = (0..200)
        .map(|i| {
            (
                new_job(&format!("in_{i}.bin")),
                format!("payload {i} ").repeat(i % 7 + 1).into_bytes(),
            )
        })
        .collect();
    stack.submit(&jobs).await;

    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        &stack,
        settings(8, ProcessorSettings::Checksum),
        observer.clone(),
    );
    // The admin endpoints of this worker, on a free port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(admin::serve(
        listener,
        worker.metrics.clone(),
        std::future::pending(),
    ));

    let ids: Vec<_> = jobs.iter().map(|(job, _)| job.job_id).collect();
    let results = wait_for_results(&stack, &ids).await;
    for (job, input) in &jobs {
        let result = &results[&job.job_id];
        assert_eq!(
            result,
            &JobResult::done(job.job_id, checksum(input)),
            "wrong result"
        );
    }
    wait_for_empty_queue(&stack).await;

    let status: WorkerStatus = reqwest::get(format!("{admin_url}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status,
        WorkerStatus {
            in_flight: 0,
            concurrency: 8,
            draining: false
        }
    );
    assert_eq!(
        reqwest::get(format!("{admin_url}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let exposition = metrics_text(&admin_url).await;
    assert!(
        exposition.contains("qwp_worker_jobs_total{outcome=\"done\"} 200"),
        "{exposition}"
    );

    let metrics = worker.stop().await;
    let runs = observer.runs();
    assert_eq!(runs.len(), 200, "every job ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "a job ran twice: {:?}",
        runs.values().filter(|&&n| n > 1).count()
    );
    assert!(
        observer.max_in_flight() <= 8,
        "in flight reached {}",
        observer.max_in_flight()
    );
    assert!(observer.max_in_flight() >= 2, "jobs never overlapped");
    assert_eq!(metrics.jobs_with(Outcome::Done), 200);
    assert_eq!(metrics.in_flight(), 0);
    assert!(metrics.draining());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_deleted_and_the_worker_keeps_going() {
    let stack = stack("w-poison", 30, None).await;
    let good = new_job("good.txt");
    stack.put_input(&good, b"fine".to_vec()).await;
    stack
        .send_bodies(&[
            "garbage".to_string(),
            "not-a-uuid_file.jpg".to_string(),
            // Names a job of its own: that job gets a failed result (see below).
            format!("{}_../../etc/passwd", qwp_jobs::JobId::new()),
        ])
        .await;
    stack.send_messages(std::slice::from_ref(&good)).await;

    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        &stack,
        settings(2, ProcessorSettings::Checksum),
        observer.clone(),
    );
    let results = wait_for_results(&stack, &[good.job_id]).await;
    assert!(results[&good.job_id].is_done());
    wait_for_empty_queue(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(metrics.jobs_with(Outcome::Poison), 3);
    assert_eq!(metrics.jobs_with(Outcome::Done), 1);
    assert_eq!(
        observer.total_runs(),
        1,
        "poison pills never reach the processor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_goes_to_the_configured_dlq_with_its_reason() {
    let stack = stack("w-poisondlq", 30, Some(5)).await;
    let dlq = stack.dlq_url.clone().expect("stack has a DLQ");
    stack.send_bodies(&["no separator here".to_string()]).await;

    let worker = start_worker(
        &stack,
        Settings {
            dlq_url: Some(dlq.clone()),
            ..settings(1, ProcessorSettings::Checksum)
        },
        Arc::new(Counting::default()),
    );
    wait_for_empty_queue(&stack).await;
    let parked = poll_until("the poison pill in the DLQ", || receive_one(&stack, &dlq)).await;
    assert_eq!(parked.body(), Some("no separator here"));
    let reason = parked
        .message_attributes()
        .and_then(|a| a.get("qwp-poison-reason"))
        .and_then(MessageAttributeValue::string_value)
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("no `_`"), "{reason}");
    let metrics = worker.stop().await;
    assert_eq!(metrics.jobs_with(Outcome::Poison), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_input_gives_a_failed_result_and_the_message_is_deleted() {
    let stack = stack("w-missing", 30, None).await;
    let job = new_job("never-uploaded.jpg");
    stack.send_messages(std::slice::from_ref(&job)).await;

    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        &stack,
        settings(1, ProcessorSettings::Checksum),
        observer.clone(),
    );
    let results = wait_for_results(&stack, &[job.job_id]).await;
    match &results[&job.job_id].outcome {
        ResultOutcome::Failed { error } => {
            assert!(
                error.contains("not found") && error.contains(&job.input_key()),
                "{error}"
            )
        }
        other => panic!("expected a failed result, got {other:?}"),
    }
    wait_for_empty_queue(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(metrics.jobs_with(Outcome::Failed), 1);
    assert_eq!(observer.total_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_failure_is_stored_as_a_failed_result() {
    let stack = stack("w-cmdfail", 30, None).await;
    let job = new_job("face.jpg");
    stack.submit(&[(job.clone(), b"not a face".to_vec())]).await;
    let command = command(
        &[
            "sh",
            "-c",
            "echo \"no face in $(basename \"$0\")\" >&2; exit 4",
            "{input}",
        ],
        Duration::from_secs(30),
    );
    let worker = start_worker(&stack, settings(1, command), Arc::new(Counting::default()));
    let results = wait_for_results(&stack, &[job.job_id]).await;
    match &results[&job.job_id].outcome {
        ResultOutcome::Failed { error } => {
            assert!(
                error.contains("exited with status 4") && error.contains("no face in face.jpg"),
                "{error}"
            )
        }
        other => panic!("expected a failed result, got {other:?}"),
    }
    wait_for_empty_queue(&stack).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_job_gets_a_failed_result_on_its_last_attempt_then_lands_in_the_dlq() {
    let max_receive_count = 2;
    let stack = stack("w-timeout", 10, Some(max_receive_count)).await;
    let dlq = stack.dlq_url.clone().unwrap();
    let job = new_job("slow.jpg");
    stack.submit(&[(job.clone(), b"x".to_vec())]).await;

    let observer = Arc::new(Counting::default());
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
    let results = wait_for_results(&stack, &[job.job_id]).await;
    match &results[&job.job_id].outcome {
        ResultOutcome::Failed { error } => assert!(
            error.starts_with("gave up after 2 attempts: ")
                && error.contains("timed out after 1 s"),
            "{error}"
        ),
        other => panic!("expected a failed result, got {other:?}"),
    }
    let parked = poll_until("the timed-out job in the DLQ", || receive_one(&stack, &dlq)).await;
    assert_eq!(parked.body(), Some(job.encode().as_str()));
    wait_for_empty_queue(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(
        observer.runs().get(&job.job_id),
        Some(&(max_receive_count as usize))
    );
    assert_eq!(metrics.jobs_with(Outcome::Retried), 1);
    assert_eq!(metrics.jobs_with(Outcome::Failed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_redrive_policy_worker_max_attempts_bounds_the_retries() {
    let stack = stack("w-maxattempts", 10, None).await;
    let job = new_job("slow.jpg");
    stack.submit(&[(job.clone(), b"x".to_vec())]).await;

    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        &stack,
        Settings {
            max_attempts: 3,
            ..settings(
                1,
                command(
                    &["sh", "-c", "exec sleep 30", "{input}"],
                    Duration::from_secs(1),
                ),
            )
        },
        observer.clone(),
    );
    let results = wait_for_results(&stack, &[job.job_id]).await;
    match &results[&job.job_id].outcome {
        ResultOutcome::Failed { error } => {
            assert!(error.starts_with("gave up after 3 attempts: "), "{error}")
        }
        other => panic!("expected a failed result, got {other:?}"),
    }
    // No DLQ to move it to: acknowledged once the failed result is stored.
    wait_for_empty_queue(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(observer.runs().get(&job.job_id), Some(&3));
    assert_eq!(metrics.jobs_with(Outcome::Retried), 2);
    assert_eq!(metrics.jobs_with(Outcome::Failed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_that_names_a_job_gives_that_job_a_failed_result() {
    let stack = stack("w-poisonid", 30, None).await;
    let named = qwp_jobs::JobId::new();
    let finished = new_job("done.txt");
    let earlier = JobResult::done(finished.job_id, "kept");
    store_result(&stack, &earlier).await;
    stack
        .send_bodies(&[
            format!("{named}_../../etc/passwd"),
            format!("{}_a\tb", finished.job_id),
        ])
        .await;

    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        &stack,
        settings(1, ProcessorSettings::Checksum),
        observer.clone(),
    );
    let results = wait_for_results(&stack, &[named]).await;
    match &results[&named].outcome {
        ResultOutcome::Failed { error } => assert!(
            error.starts_with("the job message is malformed: ") && error.contains("bad filename"),
            "{error}"
        ),
        other => panic!("expected a failed result, got {other:?}"),
    }
    wait_for_empty_queue(&stack).await;
    let metrics = worker.stop().await;
    assert_eq!(metrics.jobs_with(Outcome::Poison), 2);
    assert_eq!(
        metrics.result_conflicts(),
        1,
        "the stored result was not replaced"
    );
    assert_eq!(result_of(&stack, &finished.job_id).await, Some(earlier));
    assert_eq!(observer.total_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_job_with_a_short_visibility_timeout_runs_once() {
    // 2 s visibility, 7 s of work, and two workers with free slots watching the queue:
    // without the heartbeat the message would be delivered again mid-job.
    let stack = stack("w-heartbeat", 2, None).await;
    let job = new_job("long.bin");
    stack.submit(&[(job.clone(), b"x".to_vec())]).await;

    let observer = Arc::new(Counting::default());
    let sleep = ProcessorSettings::Sleep(SleepDuration::Fixed(Duration::from_secs(7)));
    let first = start_worker(&stack, settings(2, sleep.clone()), observer.clone());
    let second = start_worker(&stack, settings(2, sleep), observer.clone());
    let results = wait_for_results(&stack, &[job.job_id]).await;
    assert!(results[&job.job_id].is_done());
    wait_for_empty_queue(&stack).await;
    first.stop().await;
    second.stop().await;
    assert_eq!(
        observer.runs().get(&job.job_id),
        Some(&1),
        "the job ran more than once"
    );
}

/// A job whose input and `done` result are stored and whose message is on the queue.
async fn queued_job_with_a_stored_result(stack: &TestStack, name: &str) -> (JobMessage, JobResult) {
    let job = new_job(name);
    stack.put_input(&job, b"x".to_vec()).await;
    let earlier = JobResult::done(job.job_id, "from an earlier attempt");
    store_result(stack, &earlier).await;
    stack.send_messages(std::slice::from_ref(&job)).await;
    (job, earlier)
}

/// One `checksum` worker until the queue is empty: its metrics and the processor runs.
async fn drain_with_a_checksum_worker(stack: &TestStack) -> (Arc<Metrics>, Arc<Counting>) {
    let observer = Arc::new(Counting::default());
    let worker = start_worker(
        stack,
        settings(1, ProcessorSettings::Checksum),
        observer.clone(),
    );
    wait_for_empty_queue(stack).await;
    (worker.stop().await, observer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_job_with_a_stored_result_is_acknowledged_without_running() {
    let stack = stack("w-redeliver", 30, None).await;
    let (job, earlier) = queued_job_with_a_stored_result(&stack, "again.jpg").await;
    // The first delivery, received and let go (visibility 0), as by a worker that stored
    // the result and then lost the delete: the worker below gets the redelivery.
    let first = stack
        .clients
        .sqs
        .receive_message()
        .queue_url(&stack.queue_url)
        .visibility_timeout(0)
        .wait_time_seconds(10)
        .send()
        .await
        .unwrap();
    assert_eq!(first.messages().len(), 1, "the first delivery");

    let (metrics, observer) = drain_with_a_checksum_worker(&stack).await;
    assert_eq!(metrics.jobs_with(Outcome::AlreadyDone), 1);
    assert_eq!(observer.total_runs(), 0);
    assert_eq!(
        metrics.result_conflicts(),
        0,
        "it found the result before running"
    );
    assert_eq!(
        result_of(&stack, &job.job_id).await,
        Some(earlier),
        "the stored result is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_first_delivery_runs_but_keeps_the_result_stored_first() {
    // A first delivery does not look for a stored result (one S3 request less per job); a
    // duplicate message for a finished job runs again, and the conditional write keeps the
    // first result.
    let stack = stack("w-duplicate", 30, None).await;
    let (job, earlier) = queued_job_with_a_stored_result(&stack, "twice.bin").await;

    let (metrics, observer) = drain_with_a_checksum_worker(&stack).await;
    assert_eq!(metrics.jobs_with(Outcome::AlreadyDone), 1);
    assert_eq!(observer.total_runs(), 1);
    assert_eq!(
        metrics.result_conflicts(),
        1,
        "the second write found the first"
    );
    assert_eq!(
        result_of(&stack, &job.job_id).await,
        Some(earlier),
        "the stored result is kept"
    );
}
