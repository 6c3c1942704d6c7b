//! The load of api-server/bench/uploads.sh: CONCURRENCY clients, each sending BYTES-sized
//! raw uploads (`POST /jobs?wait=0`) back to back for SECONDS, as well-behaved clients
//! do: after a 503 they wait the `Retry-After` the server asked for. At the end it reads
//! the server's peak resident memory (VmHWM of PID, the kernel's high-water mark, so no
//! peak is missed between samples) and prints one JSON line.
//!
//! With DRIPS > 0, that many more clients announce BYTES and then send 1 KiB per second,
//! from the start of the run until the server answers them (408 is expected).
//!
//! Then it audits what the server left behind, reading the stack from the usual settings
//! (AWS_ENDPOINT_URL, S3_IN_BUCKET, S3_OUT_BUCKET, SQS_QUEUE_URL): every accepted job
//! must have its input in the input bucket and its message on the queue (`lost`), no
//! message may name a missing input (`queued_without_input`), and nothing refused may
//! be stored (`stored_not_accepted`). `unanswered` counts requests that got no HTTP
//! answer within two minutes (connection errors, client timeouts, drips cut off
//! without a status line). It drains the queue, so run it on a stack of its own.
//!
//! ```text
//! upload_flood URL CONCURRENCY SECONDS BYTES PID [DRIPS]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qwp_jobs::aws::AwsClients;
use qwp_jobs::{Config, JobId, JobMessage};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest any request may go unanswered (the issue's bound); past it a client gives
/// up and the request counts as unanswered.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    timed_out: u64,
    other: u64,
    errors: u64,
    accepted_ms: Vec<f64>,
    accepted_jobs: Vec<JobId>,
    /// The slowest answer of any kind.
    max_answer_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, concurrency, seconds, bytes, pid, drips) = match args.as_slice() {
        [url, c, s, b, pid] => (url, c, s, b, pid, "0"),
        [url, c, s, b, pid, drips] => (url, c, s, b, pid, drips.as_str()),
        _ => anyhow::bail!("usage: upload_flood URL CONCURRENCY SECONDS BYTES PID [DRIPS]"),
    };
    let declared: usize = bytes.parse()?;
    let drips: Vec<_> = (0..drips.parse::<usize>()?)
        .map(|_| tokio::spawn(slow_drip(url.clone(), declared)))
        .collect();
    let concurrency: usize = concurrency.parse()?;
    let run_for = Duration::from_secs(seconds.parse()?);
    let payload = Bytes::from(
        (0..bytes.parse::<usize>()?)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let target = format!(
        "{}/jobs?filename=flood.bin&wait=0",
        url.trim_end_matches('/')
    );
    let started = Instant::now();
    let deadline = started + run_for;
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, target, payload) = (client.clone(), target.clone(), payload.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let answer = client
                        .post(&target)
                        .header("content-type", "application/octet-stream")
                        .body(payload.clone())
                        .send()
                        .await;
                    let response = match answer {
                        Ok(response) => response,
                        Err(_) => {
                            tally.errors += 1;
                            continue;
                        }
                    };
                    tally.max_answer_ms = tally
                        .max_answer_ms
                        .max(sent.elapsed().as_secs_f64() * 1000.0);
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let body = response.bytes().await.unwrap_or_default();
                    match status {
                        202 => {
                            tally.accepted += 1;
                            match accepted_job(&body) {
                                Some(job) => tally.accepted_jobs.push(job),
                                None => tally.other += 1,
                            }
                            tally
                                .accepted_ms
                                .push(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        503 => {
                            tally.refused += 1;
                            let wait = Duration::from_secs(retry_after.unwrap_or(1));
                            tokio::time::sleep(
                                wait.min(deadline.saturating_duration_since(Instant::now())),
                            )
                            .await;
                        }
                        408 => tally.timed_out += 1,
                        _ => tally.other += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await?;
        total.accepted += tally.accepted;
        total.refused += tally.refused;
        total.timed_out += tally.timed_out;
        total.other += tally.other;
        total.errors += tally.errors;
        total.accepted_ms.extend(tally.accepted_ms);
        total.accepted_jobs.extend(tally.accepted_jobs);
        total.max_answer_ms = total.max_answer_ms.max(tally.max_answer_ms);
    }
    // The uploads' window; slow drips may still be waiting for their answers.
    let elapsed = started.elapsed().as_secs_f64();
    let mut drip_answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut slowest_drip_ms: f64 = 0.0;
    let mut drips_unanswered = 0;
    for drip in drips {
        let (status, ms) = drip.await?;
        *drip_answers.entry(status.to_string()).or_default() += 1;
        slowest_drip_ms = slowest_drip_ms.max(ms);
        if status == 0 {
            drips_unanswered += 1;
        }
    }
    let audit = audit(&total.accepted_jobs).await?;
    total.accepted_ms.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let ms = &total.accepted_ms;
        if ms.is_empty() {
            return 0.0;
        }
        ms[((ms.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "{}",
        json!({
            "accepted": total.accepted,
            "accepted_per_sec": total.accepted as f64 / elapsed,
            "refused_503": total.refused,
            "timed_out_408": total.timed_out,
            "other": total.other,
            "errors": total.errors,
            "p50_ms": percentile(0.5),
            "p95_ms": percentile(0.95),
            "max_answer_ms": total.max_answer_ms.max(slowest_drip_ms),
            "drip_answers": drip_answers,
            "unanswered": total.errors + drips_unanswered,
            "lost": audit.lost,
            "queued_without_input": audit.queued_without_input,
            "stored_not_accepted": audit.stored_not_accepted,
            "peak_rss_mib": peak_rss_mib(pid)?,
        })
    );
    Ok(())
}

/// Headers announcing `declared` bytes, then 1 KiB per second until the server answers:
/// the answer's status (0 if it closed the connection without one) and how long it took.
async fn slow_drip(url: String, declared: usize) -> (u16, f64) {
    let started = Instant::now();
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let Ok(stream) = tokio::net::TcpStream::connect(&address).await else {
        return (0, 0.0);
    };
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /jobs?filename=drip.bin&wait=0 HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    let dripping = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            if writer.write_all(&[b'd'; 1024]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    // Past two minutes without an answer, give up (status 0).
    let _ = tokio::time::timeout(ANSWER_WITHIN, async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    dripping.abort();
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed().as_secs_f64() * 1000.0)
}

fn peak_rss_mib(pid: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for pid {pid}"))?;
    Ok(kib / 1024.0)
}

fn accepted_job(body: &[u8]) -> Option<JobId> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    body["job_id"].as_str()?.parse().ok()
}

/// What the server left in S3 and SQS, against what it accepted.
struct Audit {
    /// Accepted jobs whose input or message is missing.
    lost: usize,
    /// Messages whose input is not in the bucket.
    queued_without_input: usize,
    /// Inputs of jobs no client was told were accepted.
    stored_not_accepted: usize,
}

async fn audit(accepted: &[JobId]) -> anyhow::Result<Audit> {
    let config = Config::from_env()?;
    let clients = AwsClients::connect(&config).await;
    let queue_url = clients.request_queue_url(&config).await?;
    let mut inputs = BTreeSet::new();
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(&config.s3_in_bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page?.contents() {
            inputs.extend(object.key().map(str::to_string));
        }
    }
    // Every message, hidden from later receives for the rest of the audit.
    let mut queued = Vec::new();
    let mut empty_receives = 0;
    while empty_receives < 2 {
        let received = clients
            .sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .wait_time_seconds(1)
            .send()
            .await?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            empty_receives += 1;
        }
        for body in messages.into_iter().filter_map(|m| m.body) {
            queued.push(JobMessage::decode(&body)?);
        }
    }
    let queued_jobs: BTreeSet<JobId> = queued.iter().map(|m| m.job_id).collect();
    let input_of = |job: &JobId| {
        let prefix = format!("{job}_");
        inputs.iter().any(|key| key.starts_with(&prefix))
    };
    let accepted_set: BTreeSet<JobId> = accepted.iter().copied().collect();
    Ok(Audit {
        lost: accepted
            .iter()
            .filter(|job| !input_of(job) || !queued_jobs.contains(job))
            .count(),
        queued_without_input: queued
            .iter()
            .filter(|m| !inputs.contains(&m.input_key()))
            .count(),
        stored_not_accepted: inputs
            .iter()
            .filter(|key| {
                let job = key
                    .split('_')
                    .next()
                    .and_then(|id| id.parse::<JobId>().ok());
                !job.is_some_and(|job| accepted_set.contains(&job))
            })
            .count(),
    })
}
