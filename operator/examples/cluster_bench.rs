//! Operator benchmark against a real cluster and the real LocalStack: prints numbers, asserts
//! nothing. Runs the operator binary out of cluster (it reads SQS on the host).
//!
//! ```text
//! cargo build --release -p qwp-operator
//! KUBECONFIG=.cache/cluster/kubeconfig cargo run --release -p qwp-operator --example cluster_bench -- \
//!     --pools 100 --bursts 5 --steady-seconds 120
//! ```
//!
//! Measures: the time from a burst landing in the queue to the Deployment's new replicas
//! (poll interval 5 s), the operator's memory and CPU while it watches N idle pools, SQS calls
//! per pool per hour (from its `qwp_operator_sqs_requests_total`), and the time to reconcile
//! all pools after start. Everything lives in namespace `qwp-bench`, deleted at the end.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use qwp_pool::crd::QueueWorkerPool;
use serde_json::json;

const NAMESPACE: &str = "qwp-bench";

#[derive(Parser)]
struct Args {
    /// Pools the operator watches during the steady-state measurement.
    #[arg(long, default_value_t = 100)]
    pools: usize,
    /// Bursts timed on the first pool.
    #[arg(long, default_value_t = 5)]
    bursts: usize,
    /// Messages per burst (target 5 per pod).
    #[arg(long, default_value_t = 42)]
    burst_messages: usize,
    /// Length of the steady-state CPU / memory / SQS-call measurement.
    #[arg(long, default_value_t = 120)]
    steady_seconds: u64,
    #[arg(long, default_value = "target/release/qwp-operator")]
    operator: String,
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    endpoint: String,
    #[arg(long, default_value_t = 18080)]
    admin_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    qwp_operator::install_crypto_provider();
    let client = Client::try_default().await?;
    let sdk =
        qwp_jobs::aws::sdk_config(Some(&args.endpoint), "us-east-1", Some(("test", "test"))).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);

    // Namespace, credentials Secret, queues, pools.
    let apply = PatchParams::apply("qwp-bench").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NAMESPACE,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            ),
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    secrets
        .patch(
            "aws",
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws"},
                "stringData": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}}),
            ),
        )
        .await?;
    let suffix = std::process::id();
    let mut queue_urls = Vec::new();
    for i in 0..args.pools {
        let url = sqs
            .create_queue()
            .queue_name(format!("qwp-bench-{suffix}-{i}"))
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        queue_urls.push(url);
    }
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), NAMESPACE);
    for (i, url) in queue_urls.iter().enumerate() {
        let pool = json!({
            "apiVersion": "queueworker.io/v1alpha1", "kind": "QueueWorkerPool",
            "metadata": {"name": format!("pool-{i}")},
            "spec": {
                "queue": {"url": url, "region": "us-east-1", "endpoint": args.endpoint,
                          "credentialsSecretRef": {"name": "aws"}},
                "maxReplicas": 20, "targetBacklogPerPod": 5, "drainSeconds": 0,
                "scaleDown": {"stabilizationWindowSeconds": 5},
                "template": {"spec": {"containers": [{
                    "name": "worker", "image": "qwp-testbox:dev", "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"]}]}}
            }
        });
        pools
            .patch(&format!("pool-{i}"), &apply, &Patch::Apply(pool))
            .await?;
    }

    // The operator, as a separate process so its memory and CPU can be read.
    let started = Instant::now();
    let log = std::fs::File::create("target/cluster_bench-operator.log")?;
    let mut operator = Command::new(&args.operator)
        .env("QWP_WATCH_NAMESPACE", NAMESPACE)
        .env("QWP_ADMIN_PORT", args.admin_port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let result = measure(&args, &client, &sqs, &queue_urls, &mut operator, started).await;

    // Graceful shutdown time, then clean up.
    let stop = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(operator.id().to_string())
        .status()?;
    let exit = operator.wait()?;
    println!(
        "| operator shutdown after SIGTERM | {:.2} s ({exit}) |",
        stop.elapsed().as_secs_f64()
    );
    namespaces
        .delete(NAMESPACE, &DeleteParams::default())
        .await?;
    for url in &queue_urls {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    result
}

async fn measure(
    args: &Args,
    client: &Client,
    sqs: &aws_sdk_sqs::Client,
    queue_urls: &[String],
    operator: &mut Child,
    started: Instant,
) -> anyhow::Result<()> {
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);

    // Startup: every pool reconciled (status written) once.
    loop {
        let list = pools.list(&Default::default()).await?;
        let done = list.items.iter().filter(|p| p.status.is_some()).count();
        if done == args.pools {
            break;
        }
        if let Some(status) = operator.try_wait()? {
            anyhow::bail!(
                "operator exited early ({status}); see target/cluster_bench-operator.log"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let startup = started.elapsed();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| all {} pools reconciled after operator start | {:.2} s |",
        args.pools,
        startup.as_secs_f64()
    );

    // Steady state with N idle pools.
    if args.steady_seconds > 0 {
        let pid = operator.id();
        let metrics_url = format!("http://127.0.0.1:{}/metrics", args.admin_port);
        let sqs_before = sqs_requests(&metrics_url).await?;
        let cpu_before = cpu_ticks(pid)?;
        let mut rss_peak = 0;
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_secs(args.steady_seconds) {
            rss_peak = rss_peak.max(rss_kib(pid)?);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let seconds = steady.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / ticks_per_second() / seconds;
        let sqs_calls = sqs_requests(&metrics_url).await? - sqs_before;
        let duration_sum =
            metric(&metrics_url, "qwp_operator_reconcile_duration_seconds_sum").await?;
        let duration_count = metric(
            &metrics_url,
            "qwp_operator_reconcile_duration_seconds_count",
        )
        .await?;
        println!(
            "| reconcile duration, mean over {duration_count:.0} reconciles (observe + decide + apply) | {:.1} ms |",
            duration_sum / duration_count.max(1.0) * 1000.0
        );
        println!(
            "| operator RSS with {} idle pools (peak) | {:.1} MiB |",
            args.pools,
            rss_peak as f64 / 1024.0
        );
        println!(
            "| operator CPU with {} idle pools | {:.2} % of one core |",
            args.pools,
            cpu * 100.0
        );
        println!(
            "| SQS calls per pool per hour (measured over {seconds:.0} s) | {:.0} |",
            sqs_calls / args.pools as f64 / seconds * 3600.0
        );
    }

    // Burst → Deployment patch, on pool-0.
    let want = args.burst_messages.div_ceil(5) as i32;
    let mut latencies = Vec::new();
    let mut others = 0;
    for _ in 0..args.bursts {
        wait_replicas(&deployments, "pool-0", 0, Duration::from_secs(60)).await?;
        // A random phase against the 5 s poll, as bursts have in life.
        tokio::time::sleep(Duration::from_millis(u64::from(rand_below(5000)))).await;
        for chunk in (0..args.burst_messages).collect::<Vec<_>>().chunks(10) {
            let entries = chunk
                .iter()
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body("x")
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            sqs.send_message_batch()
                .queue_url(&queue_urls[0])
                .set_entries(Some(entries))
                .send()
                .await?;
        }
        let landed = Instant::now();
        wait_replicas(&deployments, "pool-0", want, Duration::from_secs(60)).await?;
        let latency = landed.elapsed().as_secs_f64();
        // Another operator watching the same pools (an in-cluster install) may have made the
        // change: count the burst only when the newest scale-up event is this operator's.
        if newest_scale_up_is_ours(client, want).await? {
            latencies.push(latency);
        } else {
            others += 1;
        }
        sqs.purge_queue().queue_url(&queue_urls[0]).send().await?;
    }
    if others > 0 {
        println!("| bursts scaled first by another operator instance (not counted) | {others} |");
    }
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        println!(
            "| burst of {} messages → Deployment at {want} replicas (n={}) | min {:.2} s, median {:.2} s, max {:.2} s |",
            args.burst_messages,
            latencies.len(),
            latencies[0],
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1]
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), NAMESPACE);
    let notes: HashMap<String, String> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scaled"))
        .map(|e| (e.name_any(), e.note.unwrap_or_default()))
        .collect();
    if let Some(note) = notes.values().find(|n| n.contains("backlog")) {
        println!("| example Scaled event | {note} |");
    }
    Ok(())
}

/// Whether the latest `Scaled … to <want> replicas` event of pool-0 was reported by this
/// machine's operator (the event recorder names the host as reporting instance).
async fn newest_scale_up_is_ours(client: &Client, want: i32) -> anyhow::Result<bool> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), NAMESPACE);
    let suffix = format!("to {want} replicas:");
    // Give the event a moment to be written after the Deployment patch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newest = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scaled"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pool-0"))
        .filter(|e| e.note.as_deref().is_some_and(|n| n.contains(&suffix)))
        .max_by_key(|e| {
            e.series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        });
    Ok(newest.is_some_and(|e| e.reporting_instance.as_deref() == Some(host.as_str())))
}

async fn wait_replicas(
    api: &Api<Deployment>,
    name: &str,
    want: i32,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let replicas = api
            .get_opt(name)
            .await?
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas);
        if replicas == Some(want) {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "{name} did not reach {want} replicas within {limit:?} (has {replicas:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sqs_requests(url: &str) -> anyhow::Result<f64> {
    metric(url, "qwp_operator_sqs_requests_total").await
}

/// One unlabelled sample from the operator's /metrics.
async fn metric(url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    let prefix = format!("{name} ");
    Ok(text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn ticks_per_second() -> f64 {
    100.0 // USER_HZ on Linux
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn rand_below(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % n
}
