//! The load of api-server/bench/uploads.sh: CONCURRENCY clients, each sending BYTES-sized
//! raw uploads (`POST /jobs?wait=0`) back to back for SECONDS, as well-behaved clients
//! do: after a 503 they wait the `Retry-After` the server asked for. At the end it reads
//! the server's peak resident memory (VmHWM of PID, the kernel's high-water mark, so no
//! peak is missed between samples) and prints one JSON line.
//!
//! ```text
//! upload_flood URL CONCURRENCY SECONDS BYTES PID
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    timed_out: u64,
    other: u64,
    errors: u64,
    accepted_ms: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, concurrency, seconds, bytes, pid] = args.as_slice() else {
        anyhow::bail!("usage: upload_flood URL CONCURRENCY SECONDS BYTES PID");
    };
    let concurrency: usize = concurrency.parse()?;
    let run_for = Duration::from_secs(seconds.parse()?);
    let payload = Bytes::from((0..bytes.parse::<usize>()?).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let target = format!("{}/jobs?filename=flood.bin&wait=0", url.trim_end_matches('/'));
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
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let _ = response.bytes().await;
                    match status {
                        202 => {
                            tally.accepted += 1;
                            tally.accepted_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        503 => {
                            tally.refused += 1;
                            let wait = Duration::from_secs(retry_after.unwrap_or(1));
                            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
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
    }
    let elapsed = started.elapsed().as_secs_f64();
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
            "peak_rss_mib": peak_rss_mib(pid)?,
        })
    );
    Ok(())
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
