//! The baseline for the API server benchmark: what LocalStack itself sustains for the
//! pair of calls a job submission makes (PutObject of the input + SendMessage), driven
//! directly with the same SDK clients and concurrency. api-server/bench/run.sh uses it.
//!
//! ```text
//! raw_localstack setup                      # fresh buckets + queue; prints env lines
//! raw_localstack drive CONCURRENCY SECONDS BYTES   # one JSON line of numbers
//! raw_localstack purge                      # empty the queue between runs
//! raw_localstack cleanup                    # delete buckets (and objects) and queue
//! ```
//! `drive`, `purge` and `cleanup` read the usual settings (AWS_ENDPOINT_URL,
//! S3_IN_BUCKET, S3_OUT_BUCKET, SQS_QUEUE_URL) from the environment.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use qwp_jobs::aws::AwsClients;
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{Config, Filename, JobId, JobMessage};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => {
            let stack = TestStack::new("bench", TestStackOptions::default()).await;
            println!("S3_IN_BUCKET={}", stack.config.s3_in_bucket);
            println!("S3_OUT_BUCKET={}", stack.config.s3_out_bucket);
            println!("SQS_QUEUE_URL={}", stack.queue_url);
        }
        Some("drive") => {
            let number = |i: usize, what: &str| -> anyhow::Result<u64> {
                args.get(i)
                    .ok_or_else(|| anyhow::anyhow!("missing {what}"))?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("bad {what}: {e}"))
            };
            let concurrency = number(1, "CONCURRENCY")? as usize;
            let seconds = number(2, "SECONDS")?;
            let size = number(3, "BYTES")? as usize;
            drive(concurrency, Duration::from_secs(seconds), size).await?;
        }
        Some("purge") => {
            let (clients, config) = connect().await;
            clients
                .sqs
                .purge_queue()
                .queue_url(queue_url(&config)?)
                .send()
                .await?;
        }
        Some("cleanup") => {
            let (clients, config) = connect().await;
            for bucket in [&config.s3_in_bucket, &config.s3_out_bucket] {
                empty_and_delete(&clients, bucket).await?;
            }
            clients
                .sqs
                .delete_queue()
                .queue_url(queue_url(&config)?)
                .send()
                .await?;
        }
        _ => anyhow::bail!(
            "usage: raw_localstack setup | drive CONCURRENCY SECONDS BYTES | purge | cleanup"
        ),
    }
    Ok(())
}

async fn connect() -> (AwsClients, Config) {
    let config = Config::from_env().expect("valid configuration");
    (AwsClients::connect(&config).await, config)
}

fn queue_url(config: &Config) -> anyhow::Result<String> {
    config
        .sqs_queue_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("SQS_QUEUE_URL must be set"))
}

/// `concurrency` loops, each submitting like the API server does (input, then message)
/// until the time is up; prints throughput and latency percentiles.
async fn drive(concurrency: usize, duration: Duration, size: usize) -> anyhow::Result<()> {
    let (clients, config) = connect().await;
    let url = queue_url(&config)?;
    let payload = Bytes::from(vec![b'x'; size]);
    let filename = Filename::parse("bench.bin").expect("valid name");
    let started = Instant::now();
    let deadline = started + duration;
    let loops = (0..concurrency).map(|_| {
        let (clients, bucket, url, payload, filename) = (
            clients.clone(),
            config.s3_in_bucket.clone(),
            url.clone(),
            payload.clone(),
            filename.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let message = JobMessage::new(JobId::new(), filename.clone());
                let t0 = Instant::now();
                let put = clients
                    .s3
                    .put_object()
                    .bucket(&bucket)
                    .key(message.input_key())
                    .body(ByteStream::from(payload.clone()))
                    .send()
                    .await;
                let sent = match put {
                    Ok(_) => clients
                        .sqs
                        .send_message()
                        .queue_url(&url)
                        .message_body(message.encode())
                        .send()
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if sent {
                    latencies.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for result in futures::future::join_all(loops).await {
        let (mut l, e) = result?;
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "seconds": elapsed,
            "ops": latencies.len(),
            "errors": errors,
            "ops_per_sec": latencies.len() as f64 / elapsed,
            "p50_ms": percentile(0.50),
            "p95_ms": percentile(0.95),
            "p99_ms": percentile(0.99),
        })
    );
    Ok(())
}

async fn empty_and_delete(clients: &AwsClients, bucket: &str) -> anyhow::Result<()> {
    loop {
        let listing = clients.s3.list_objects_v2().bucket(bucket).send().await?;
        let keys: Vec<ObjectIdentifier> = listing
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            break;
        }
        clients
            .s3
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(keys))
                    .quiet(true)
                    .build()?,
            )
            .send()
            .await?;
    }
    clients.s3.delete_bucket().bucket(bucket).send().await?;
    Ok(())
}
