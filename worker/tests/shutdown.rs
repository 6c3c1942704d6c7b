//! Shutdown in the middle of slow jobs, in-process and with the real binary and a
//! real SIGTERM: every job still ends with a result. Also what the binary's `command`
//! children see of its environment.

mod common;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use qwp_jobs::testing::TestStack;
use qwp_pool::contract::WorkerStatus;
use qwp_worker::Settings;
use qwp_worker::metrics::Outcome;
use qwp_worker::settings::{ProcessorSettings, SleepDuration};

fn slow(concurrency: usize, seconds: u64, drain_seconds: u64) -> Settings {
    Settings {
        concurrency,
        processor: ProcessorSettings::Sleep(SleepDuration::Fixed(Duration::from_secs(seconds))),
        drain: Duration::from_secs(drain_seconds),
        ..Settings::default()
    }
}

async fn seed_slow_jobs(stack: &TestStack, count: usize) -> Vec<qwp_jobs::JobId> {
    let jobs: Vec<_> = (0..count)
        .map(|i| (new_job(&format!("slow_{i}.bin")), vec![i as u8]))
        .collect();
    stack.submit(&jobs).await;
    jobs.iter().map(|(job, _)| job.job_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_hands_unfinished_jobs_back_at_once() {
    // A 120 s visibility timeout: if the stopped worker did not reset the visibility of
    // its unfinished jobs, the second worker could not see them within PATIENCE.
    let stack = stack("w-drainshort", 120, None).await;
    let ids = seed_slow_jobs(&stack, 8).await;

    let first_observer = Arc::new(Counting::default());
    let first = start_worker(&stack, slow(4, 6, 1), first_observer.clone());
    wait_until("four jobs running", || async {
        first_observer.total_runs() == 4
    })
    .await;
    let first_metrics = first.stop().await;
    let released = first_metrics.jobs_with(Outcome::Released);
    let finished = first_metrics.jobs_with(Outcome::Done);
    assert_eq!(
        finished + released,
        first_observer.total_runs() as u64,
        "every started job finished or was handed back"
    );
    assert!(released > 0, "6 s jobs cannot finish in a 1 s drain");

    let second_observer = Arc::new(Counting::default());
    let second = start_worker(&stack, slow(8, 1, 20), second_observer.clone());
    let results = wait_for_results(&stack, &ids).await;
    assert!(results.values().all(|r| r.is_done()));
    wait_for_empty_queue(&stack).await;
    second.stop().await;
    assert_eq!(
        second_observer.total_runs() as u64,
        8 - finished,
        "the second worker ran exactly what the first left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_jobs_finish() {
    let stack = stack("w-drainlong", 120, None).await;
    let ids = seed_slow_jobs(&stack, 6).await;

    let first_observer = Arc::new(Counting::default());
    let first = start_worker(&stack, slow(3, 2, 30), first_observer.clone());
    wait_until("three jobs running", || async {
        first_observer.total_runs() == 3
    })
    .await;
    let first_metrics = first.stop().await;
    assert_eq!(first_metrics.jobs_with(Outcome::Released), 0);
    assert_eq!(
        first_metrics.jobs_with(Outcome::Done),
        first_observer.total_runs() as u64
    );

    let second = start_worker(&stack, slow(6, 0, 20), Arc::new(Counting::default()));
    let results = wait_for_results(&stack, &ids).await;
    assert!(results.values().all(|r| r.is_done()));
    wait_for_empty_queue(&stack).await;
    second.stop().await;
}

/// The `qwp-worker` binary as a pod would run it, logging into a temporary file.
/// The secret key the binary runs with: LocalStack accepts any, and a job must never see it.
const SECRET_KEY: &str = "worker-secret-key-jobs-must-not-see";

struct WorkerProcess {
    child: Child,
    admin_url: String,
    log: tempfile::NamedTempFile,
}

impl WorkerProcess {
    /// Starts the binary on admin port 0 and reads the port it bound from its log, so no
    /// port is picked for it that another process could take first.
    async fn spawn(
        stack: &TestStack,
        concurrency: usize,
        sleep_seconds: u64,
        drain_seconds: u64,
    ) -> Self {
        let (sleep, concurrency, drain) = (
            sleep_seconds.to_string(),
            concurrency.to_string(),
            drain_seconds.to_string(),
        );
        Self::spawn_with(
            stack,
            &[
                ("WORKER_PROCESSOR", "sleep"),
                ("WORKER_SLEEP_SECONDS", &sleep),
                ("WORKER_CONCURRENCY", &concurrency),
                ("WORKER_DRAIN_SECONDS", &drain),
            ],
        )
        .await
    }

    /// Starts the binary on `stack` with the worker settings in `env`.
    async fn spawn_with(stack: &TestStack, env: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let config = &stack.config;
        let child = Command::new(env!("CARGO_BIN_EXE_qwp-worker"))
            .env_clear()
            .env(
                "AWS_ENDPOINT_URL",
                config.aws_endpoint_url.as_deref().unwrap(),
            )
            .env("AWS_REGION", &config.aws_region)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("S3_IN_BUCKET", &config.s3_in_bucket)
            .env("S3_OUT_BUCKET", &config.s3_out_bucket)
            .env("SQS_QUEUE_URL", &stack.queue_url)
            .env("SQS_WAIT_TIME_SECONDS", "1")
            .env(
                "SQS_VISIBILITY_TIMEOUT_SECONDS",
                config.sqs_visibility_timeout_seconds.to_string(),
            )
            .envs(env.iter().copied())
            .env("WORKER_ADMIN_PORT", "0")
            .env("LOG_FORMAT", "json")
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start target/debug/qwp-worker");
        let mut worker = WorkerProcess {
            child,
            admin_url: String::new(),
            log,
        };
        let port = poll_until("the binary to log its admin address", || {
            let port = worker.admin_port();
            if port.is_none()
                && let Some(exit) = worker.child.try_wait().unwrap()
            {
                panic!("worker exited ({exit}); logs:\n{}", worker.logs());
            }
            std::future::ready(port)
        })
        .await;
        worker.admin_url = format!("http://127.0.0.1:{port}");
        worker
    }

    /// The port in the "admin port listening" line of the log, once it is there.
    fn admin_port(&self) -> Option<u16> {
        self.logs().lines().find_map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            if json["message"] != "admin port listening" {
                return None;
            }
            let address: std::net::SocketAddr = json["admin_addr"].as_str()?.parse().ok()?;
            Some(address.port())
        })
    }

    async fn status(&self) -> Option<WorkerStatus> {
        reqwest::get(format!("{}/status", self.admin_url))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    async fn wait(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker did not exit; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_binary_mid_batch_loses_no_job() {
    let stack = stack("w-sigterm", 120, None).await;
    let ids = seed_slow_jobs(&stack, 9).await;

    let mut first = WorkerProcess::spawn(&stack, 3, 8, 1).await;
    let busy = poll_until("the binary to run three jobs", || async {
        first.status().await.filter(|s| s.in_flight == 3)
    })
    .await;
    assert_eq!(
        busy,
        WorkerStatus {
            in_flight: 3,
            concurrency: 3,
            draining: false
        }
    );
    let healthz = reqwest::get(format!("{}/healthz", first.admin_url))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let exposition = metrics_text(&first.admin_url).await;
    assert!(
        exposition.contains("qwp_worker_jobs_in_flight 3"),
        "{exposition}"
    );

    first.sigterm();
    let exit = first.wait().await;
    let logs = first.logs();
    assert_eq!(exit.code(), Some(0), "exit {exit:?}; logs:\n{logs}");
    assert!(
        logs.contains("handed unfinished jobs back"),
        "logs:\n{logs}"
    );
    assert!(
        logs.contains("\"job_id\""),
        "logs carry the job id:\n{logs}"
    );

    let mut second = WorkerProcess::spawn(&stack, 9, 1, 20).await;
    let results = wait_for_results(&stack, &ids).await;
    assert!(
        results.values().all(|r| r.is_done()),
        "logs:\n{}",
        second.logs()
    );
    wait_for_empty_queue(&stack).await;
    second.sigterm();
    let exit = second.wait().await;
    assert_eq!(exit.code(), Some(0), "logs:\n{}", second.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_that_prints_its_environment_sees_no_aws_credential() {
    let stack = stack("w-cmdenv", 30, None).await;
    let job = new_job("face.jpg");
    stack.submit(&[(job.clone(), b"x".to_vec())]).await;
    let mut worker = WorkerProcess::spawn_with(
        &stack,
        &[
            ("WORKER_PROCESSOR", "command"),
            // `-u {input}`: env ignores the input path (it unsets no such variable).
            ("WORKER_COMMAND", "/usr/bin/env -u {input}"),
            ("WORKER_COMMAND_ENV", "MODEL_DIR"),
            ("MODEL_DIR", "/models"),
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
        ],
    )
    .await;
    let results = wait_for_results(&stack, &[job.job_id]).await;
    let printed = match &results[&job.job_id].outcome {
        qwp_jobs::result::Outcome::Done { result } => result.as_str().unwrap().to_string(),
        other => panic!("expected the environment as the result, got {other:?}"),
    };
    let mut seen: Vec<&str> = printed.lines().collect();
    seen.sort();
    let job_id = format!("QWP_JOB_ID={}", job.job_id);
    assert_eq!(
        seen,
        [
            "LANG=C.UTF-8",
            "MODEL_DIR=/models",
            "PATH=/usr/bin:/bin",
            job_id.as_str()
        ],
        "the child's whole environment"
    );
    assert!(
        !printed.contains("AWS_") && !printed.contains(SECRET_KEY),
        "{printed}"
    );
    worker.sigterm();
    assert_eq!(
        worker.wait().await.code(),
        Some(0),
        "logs:\n{}",
        worker.logs()
    );
}
