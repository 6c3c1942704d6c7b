//! Worker throughput per process against the real LocalStack, printed as a markdown
//! table (numbers, not assertions): seeds N jobs into a private queue, starts one
//! in-process worker with the `sleep` processor, and times until all N are done.
//!
//!     cargo run --release -p qwp-worker --example throughput
//!
//! `BENCH_CONCURRENCY` (default `1,5,20,100`) and `BENCH_SLEEP_SECONDS` (default
//! `0,3`) pick the grid; `BENCH_REPEATS` (default 3) runs each cell several times and
//! the median is reported, since a shared LocalStack's speed varies from run to run. With sleep 0 each run has 300 jobs; with t > 0 each slot
//! runs 4 jobs (4·C jobs), so the ideal is 4 waves of t seconds at C/t jobs/s.

use std::time::{Duration, Instant};

use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{Filename, JobId, JobMessage};
use qwp_worker::metrics::Outcome;
use qwp_worker::settings::{ProcessorSettings, SleepDuration};
use qwp_worker::{CancellationToken, Settings, Worker};

const JOBS_AT_ZERO_SLEEP: usize = 300;
const WAVES: usize = 4;

fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let concurrencies: Vec<usize> = list("BENCH_CONCURRENCY", "1,5,20,100");
    let sleeps: Vec<f64> = list("BENCH_SLEEP_SECONDS", "0,3");
    let repeats: usize = list("BENCH_REPEATS", "3")[0];
    println!(
        "| concurrency C | sleep t (s) | jobs | wall times (s), {repeats} runs | median jobs/s | ideal C/t | % of ideal |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &sleep in &sleeps {
        for &concurrency in &concurrencies {
            let jobs = if sleep > 0.0 {
                WAVES * concurrency
            } else {
                JOBS_AT_ZERO_SLEEP
            };
            let mut times = Vec::new();
            for _ in 0..repeats {
                times.push(run(concurrency, sleep, jobs).await.as_secs_f64());
            }
            let listed = times
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(", ");
            times.sort_by(f64::total_cmp);
            let rate = jobs as f64 / times[times.len() / 2];
            let (ideal, share) = if sleep > 0.0 {
                let ideal = concurrency as f64 / sleep;
                (
                    format!("{ideal:.2}"),
                    format!("{:.0} %", 100.0 * rate / ideal),
                )
            } else {
                ("–".to_string(), "–".to_string())
            };
            println!(
                "| {concurrency} | {sleep} | {jobs} | {listed} | {rate:.2} | {ideal} | {share} |"
            );
        }
    }
}

/// Wall time from worker start until `jobs` jobs are done (results stored, messages deleted).
async fn run(concurrency: usize, sleep: f64, jobs: usize) -> Duration {
    let stack = TestStack::new(
        "bench",
        TestStackOptions {
            visibility_timeout_seconds: 60,
            max_receive_count: None,
        },
    )
    .await;
    seed(&stack, jobs).await;

    let settings = Settings {
        concurrency,
        processor: ProcessorSettings::Sleep(SleepDuration::Fixed(Duration::from_secs_f64(sleep))),
        ..Settings::default()
    };
    let worker = Worker::new(
        &stack.config,
        settings,
        &stack.clients,
        stack.queue_url.clone(),
    )
    .expect("valid settings");
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    while metrics.jobs_with(Outcome::Done) < jobs as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await.expect("worker stops");
    assert_eq!(
        metrics.jobs_with(Outcome::Retried),
        0,
        "no job should need a retry"
    );
    elapsed
}

async fn seed(stack: &TestStack, jobs: usize) {
    let jobs: Vec<(JobMessage, Vec<u8>)> = (0..jobs)
        .map(|i| {
            let name = Filename::parse(&format!("in_{i}.bin")).expect("valid filename");
            (
                JobMessage::new(JobId::new(), name),
                b"benchmark input".to_vec(),
            )
        })
        .collect();
    stack.submit(&jobs).await;
}
