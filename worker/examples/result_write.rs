//! What the worker's conditional result write (`If-None-Match: *`) costs against LocalStack,
//! beside the unconditional write it replaced (numbers, not assertions): `BENCH_WRITES`
//! result-sized PutObjects of new keys at `BENCH_CONCURRENCY` in flight, plain and
//! conditional in alternating rounds (`BENCH_ROUNDS` of each) on one fresh bucket, printed as
//! a markdown table of writes/s and latency percentiles per mode.
//!
//!     cargo run --release -p qwp-worker --no-default-features --example result_write
//!
//! Defaults: `BENCH_CONCURRENCY=100`, `BENCH_WRITES=600`, `BENCH_ROUNDS=5`.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use qwp_jobs::testing::{TestStack, TestStackOptions};

/// About the size of a `sleep` or `checksum` result document.
const RESULT_BYTES: usize = 200;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Conditional,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "PutObject",
            Mode::Conditional => "PutObject If-None-Match: *",
        }
    }
}

#[tokio::main]
async fn main() {
    let concurrency = setting("BENCH_CONCURRENCY", 100);
    let writes = setting("BENCH_WRITES", 600);
    let rounds = setting("BENCH_ROUNDS", 5);
    let stack = TestStack::new("bench-put", TestStackOptions::default()).await;
    let mut rates: Vec<(Mode, Vec<f64>, Vec<Duration>)> = vec![
        (Mode::Plain, Vec::new(), Vec::new()),
        (Mode::Conditional, Vec::new(), Vec::new()),
    ];
    for round in 0..rounds {
        for (mode, round_rates, latencies) in rates.iter_mut() {
            let (elapsed, mut taken) =
                run(&stack, *mode, &format!("r{round}"), concurrency, writes).await;
            round_rates.push(writes as f64 / elapsed.as_secs_f64());
            latencies.append(&mut taken);
        }
    }
    println!(
        "| write | in flight | writes per round | writes/s, {rounds} rounds | median writes/s | p50 ms | p99 ms |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for (mode, round_rates, latencies) in rates.iter_mut() {
        let listed = round_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        round_rates.sort_by(f64::total_cmp);
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "| {} | {concurrency} | {writes} | {listed} | {:.0} | {:.1} | {:.1} |",
            mode.name(),
            round_rates[round_rates.len() / 2],
            at(0.5),
            at(0.99)
        );
    }
}

/// `writes` PutObjects of new keys, `concurrency` at a time: the wall time and each latency.
async fn run(
    stack: &TestStack,
    mode: Mode,
    round: &str,
    concurrency: usize,
    writes: usize,
) -> (Duration, Vec<Duration>) {
    let s3 = &stack.clients.s3;
    let bucket = &stack.config.s3_out_bucket;
    let body = vec![b'r'; RESULT_BYTES];
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..writes)
        .map(|i| {
            let mut put = s3
                .put_object()
                .bucket(bucket)
                .key(format!("{round}-{}-{i}", mode as u8))
                .content_type("application/json")
                .body(ByteStream::from(body.clone()));
            if mode == Mode::Conditional {
                put = put.if_none_match("*");
            }
            async move {
                let sent = Instant::now();
                put.send().await.expect("PutObject of a new key");
                sent.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed(), latencies)
}
