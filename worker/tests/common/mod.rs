//! Helpers for the worker's LocalStack tests: seed jobs, run workers in-process,
//! count what they do, and wait (with a generous bound) for results.

#![allow(dead_code)] // each test binary uses its own subset

pub mod fault_proxy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{Filename, JobId, JobMessage, JobResult};
use qwp_worker::metrics::Metrics;
use qwp_worker::settings::ProcessorSettings;
use qwp_worker::{CancellationToken, JobObserver, Settings, Worker};
use tokio::task::JoinHandle;

/// Upper bound for anything the tests wait for; far above the expected seconds, so
/// reaching it means something is lost or stuck, not slow.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub async fn stack(
    prefix: &str,
    visibility_timeout_seconds: u32,
    max_receive_count: Option<u32>,
) -> TestStack {
    TestStack::new(
        prefix,
        TestStackOptions {
            visibility_timeout_seconds,
            max_receive_count,
        },
    )
    .await
}

/// Counts processor runs per job and the number of jobs held at once.
#[derive(Default)]
pub struct Counting {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    runs: Mutex<HashMap<JobId, usize>>,
}

impl JobObserver for Counting {
    fn job_started(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
    }
    fn job_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    fn processor_started(&self, job_id: &JobId) {
        *self.runs.lock().unwrap().entry(*job_id).or_default() += 1;
    }
}

impl Counting {
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
    pub fn runs(&self) -> HashMap<JobId, usize> {
        self.runs.lock().unwrap().clone()
    }
    pub fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
}

pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub task: JoinHandle<()>,
}

impl RunningWorker {
    pub async fn stop(self) -> Arc<Metrics> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the worker stops after its drain")
            .expect("the worker task does not panic");
        self.metrics
    }
}

pub fn start_worker(
    stack: &TestStack,
    settings: Settings,
    observer: Arc<dyn JobObserver>,
) -> RunningWorker {
    start_worker_with(stack, &stack.clients, settings, observer)
}

/// S3 and SQS clients of `stack` that reach LocalStack through `endpoint` (a fault proxy).
pub async fn clients_via(stack: &TestStack, endpoint: &str) -> qwp_jobs::aws::AwsClients {
    let mut config = stack.config.clone();
    config.aws_endpoint_url = Some(endpoint.to_string());
    qwp_jobs::aws::AwsClients::connect(&config).await
}

/// A worker on `stack`'s queue and buckets, talking to AWS through `clients`.
pub fn start_worker_with(
    stack: &TestStack,
    clients: &qwp_jobs::aws::AwsClients,
    settings: Settings,
    observer: Arc<dyn JobObserver>,
) -> RunningWorker {
    let worker = Worker::new(&stack.config, settings, clients, stack.queue_url.clone())
        .expect("valid worker configuration")
        .with_observer(observer);
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    RunningWorker {
        shutdown,
        metrics,
        task,
    }
}

/// A `command` processor with a plain `PATH` as its whole inherited environment.
pub fn command(argv: &[&str], timeout: Duration) -> ProcessorSettings {
    ProcessorSettings::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        timeout,
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
    }
}

pub fn new_job(name: &str) -> JobMessage {
    JobMessage::new(JobId::new(), Filename::parse(name).unwrap())
}

pub async fn result_of(stack: &TestStack, job_id: &JobId) -> Option<JobResult> {
    stack.result(job_id).await
}

pub async fn store_result(stack: &TestStack, result: &JobResult) {
    stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(qwp_jobs::keys::output_key(&result.job_id))
        .body(ByteStream::from(result.to_json_bytes()))
        .send()
        .await
        .expect("store result");
}

/// Keeps every version of every result object, so a test can tell a result written once
/// from one overwritten.
pub async fn keep_result_versions(stack: &TestStack) {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    stack
        .clients
        .s3
        .put_bucket_versioning()
        .bucket(&stack.config.s3_out_bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning of the result bucket");
}

/// How many times the result of `job_id` was written (with [`keep_result_versions`]).
pub async fn result_versions(stack: &TestStack, job_id: &JobId) -> usize {
    let key = qwp_jobs::keys::output_key(job_id);
    let out = stack
        .clients
        .s3
        .list_object_versions()
        .bucket(&stack.config.s3_out_bucket)
        .prefix(&key)
        .send()
        .await
        .expect("list result versions");
    out.versions()
        .iter()
        .filter(|v| v.key() == Some(key.as_str()))
        .count()
}

/// Waits until every job has a result; panics naming how many are missing.
pub async fn wait_for_results(stack: &TestStack, ids: &[JobId]) -> HashMap<JobId, JobResult> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut found = HashMap::new();
    loop {
        let missing: Vec<JobId> = ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .copied()
            .collect();
        if missing.is_empty() {
            return found;
        }
        let fetched: Vec<(JobId, Option<JobResult>)> = futures::stream::iter(missing.clone())
            .map(|id| async move { (id, result_of(stack, &id).await) })
            .buffer_unordered(16)
            .collect()
            .await;
        for (id, result) in fetched {
            if let Some(result) = result {
                found.insert(id, result);
            }
        }
        if found.len() < ids.len() && tokio::time::Instant::now() > deadline {
            panic!(
                "{} of {} jobs have no result after {PATIENCE:?}",
                ids.len() - found.len(),
                ids.len()
            );
        }
        if found.len() < ids.len() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until the queue holds no message, visible or in flight.
pub async fn wait_for_empty_queue(stack: &TestStack) {
    wait_until("the queue to be empty", || async {
        stack.queue_depth().await == (0, 0)
    })
    .await;
}

pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    qwp_jobs::testing::wait_until(what, PATIENCE, Duration::from_millis(200), condition).await;
}

/// Probes until it yields a value; panics after [`PATIENCE`].
pub async fn poll_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Receives one message from `queue_url` (long poll), for looking into the DLQ.
pub async fn receive_one(
    stack: &TestStack,
    queue_url: &str,
) -> Option<aws_sdk_sqs::types::Message> {
    stack
        .clients
        .sqs
        .receive_message()
        .queue_url(queue_url)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive from DLQ")
        .messages
        .unwrap_or_default()
        .into_iter()
        .next()
}

/// The Prometheus exposition served on a worker's admin port.
pub async fn metrics_text(admin_url: &str) -> String {
    reqwest::get(format!("{admin_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics")
}
