//! The seeds' workloads on the real cluster (`make bench-seed`): seed 002/004's flash sale,
//! seed 000's upload-to-result load test and seed 003's status reads, against the chart's API
//! server (one replica) and a QueueWorkerPool left at the operator's default scaling settings.
//! `oha` generates the HTTP load; a sampler reads the queue, the pool and its pods once a
//! second. Prints a markdown table beside the seeds' figures and writes it, with the flash
//! sale's timeline (CSV + PNG), to `docs/bench/`. A benchmark: it prints numbers and fails only
//! when a flash-sale job has no `done` result; other shortfalls are counted in the table.
//!
//! Settings (environment): `OHA` (default `.cache/tools/bin/oha`), `SEED_OUT_DIR`
//! (`docs/bench`), `SEED_IMAGE_TAG` (tag of the API server and worker images; default the
//! suite's `E2E_IMAGE_TAG`, `dev`), `SEED_FLASH_SECONDS` (60), `SEED_FLASH_CLIENTS` (20), `SEED_FLASH_QPS` (0 =
//! no limit), `SEED_UPLOAD_REQUESTS` (100), `SEED_UPLOAD_CLIENTS` (10), `SEED_STATUS_SECONDS`
//! (30), `SEED_STATUS_CLIENTS` (50), plus the e2e suite's (docs/e2e.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use qwp_e2e::api_server::{self, ApiServer};
use qwp_e2e::install::{OPERATOR_PODS, ensure_operator_installed};
use qwp_e2e::jobs::{remove_stack, results};
use qwp_e2e::pool::{PoolOptions, create_aws_secret, pool_object};
use qwp_e2e::timeline::{Sample, render_png, to_csv};
use qwp_e2e::wait::{deployment, first_queue_reading, pool_status, until};
use qwp_e2e::{Settings, TestEnv, with_temp_ns};
use qwp_jobs::config::{ConfigError, Vars};
use qwp_jobs::result::Outcome;
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_pool::crd::{POOL_LABEL, QueueWorkerPool};
use serde_json::Value;
use tokio::sync::watch;

const POOL: &str = "flash";
/// Seed 004: every order takes 3 s ("payment constraint").
const JOB_SECONDS: f64 = 3.0;
const CONCURRENCY: i32 = 5;
const MAX_REPLICAS: i32 = 15;
/// The flash sale's order, sent as a raw body.
const ORDER: &str =
    r#"{"order_id":"flash-sale","customer":"c-1","items":[{"sku":"A-1","qty":1}],"total":100.0}"#;

/// What the run reads from the environment.
#[derive(Clone, Debug)]
struct Bench {
    oha: PathBuf,
    out_dir: PathBuf,
    /// Tag of the API server and worker images (the operator keeps the suite's).
    image_tag: String,
    flash_seconds: u32,
    flash_clients: u32,
    /// oha `-q`; 0 = as fast as the clients go.
    flash_qps: u32,
    upload_requests: u32,
    upload_clients: u32,
    status_seconds: u32,
    status_clients: u32,
}

impl Bench {
    fn from_env() -> Result<Bench, ConfigError> {
        let vars = Vars::process();
        let root = &Settings::get().repo_root;
        Ok(Bench {
            oha: PathBuf::from(
                vars.string("OHA", &root.join(".cache/tools/bin/oha").to_string_lossy()),
            ),
            out_dir: PathBuf::from(
                vars.string("SEED_OUT_DIR", &root.join("docs/bench").to_string_lossy()),
            ),
            image_tag: vars.string("SEED_IMAGE_TAG", &Settings::get().image_tag),
            flash_seconds: vars.parse_in("SEED_FLASH_SECONDS", 60, 5..=600)?,
            flash_clients: vars.parse_in("SEED_FLASH_CLIENTS", 20, 1..=500)?,
            flash_qps: vars.parse_in("SEED_FLASH_QPS", 0, 0..=10_000)?,
            upload_requests: vars.parse_in("SEED_UPLOAD_REQUESTS", 100, 1..=10_000)?,
            upload_clients: vars.parse_in("SEED_UPLOAD_CLIENTS", 10, 1..=500)?,
            status_seconds: vars.parse_in("SEED_STATUS_SECONDS", 30, 5..=600)?,
            status_clients: vars.parse_in("SEED_STATUS_CLIENTS", 50, 1..=500)?,
        })
    }
}

fn main() {
    let bench = Bench::from_env().unwrap_or_else(|e| {
        eprintln!("seed_workloads: {e}");
        std::process::exit(2)
    });
    if !bench.oha.is_file() {
        eprintln!(
            "seed_workloads: the load generator oha is not at {} (install it with \
             `cargo install oha --locked --root .cache/tools -j2`, or set OHA)",
            bench.oha.display()
        );
        std::process::exit(2);
    }
    let started = Instant::now();
    ensure_operator_installed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(with_temp_ns("seed_workloads", move |env| run(env, bench)));
    eprintln!(
        "[seed] whole run (operator install, set-up, three workloads, clean-up): {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

async fn run(env: TestEnv, bench: Bench) {
    let stack = Arc::new(
        TestStack::new(
            "seed-flash",
            TestStackOptions {
                visibility_timeout_seconds: 30,
                max_receive_count: None,
            },
        )
        .await,
    );
    create_aws_secret(&env.client, &env.ns).await;
    let tag = format!("image.tag={}", bench.image_tag);
    let api = api_server::install_with(&env, &stack, &[&tag]).await;
    eprintln!(
        "[seed] API server reached via {} at {}",
        api.via, api.base_url
    );
    let pool = create_default_pool(&env, &stack, &bench.image_tag).await;
    let defaults = format!(
        "poll every {} s, scale-down window {} s, scale-up window {} s",
        pool.spec.poll_interval_seconds,
        pool.spec.scale_down.stabilization_window_seconds,
        pool.spec.scale_up.stabilization_window_seconds
    );
    eprintln!("[seed] pool {POOL} stored with the defaults: {defaults}");
    first_queue_reading(&env.client, &env.ns, POOL).await;

    let flash = flash_sale(&env, &stack, &api, &bench).await;
    let upload = upload_to_result(&env, &stack, &api, &bench).await;
    let status = status_reads(&api, &bench, &flash.finished).await;
    let idle_sqs_per_hour = idle_pool_sqs_calls(&env).await;

    let mut table = report_table(&bench, &flash, &upload, &status);
    let _ = writeln!(
        table,
        "| **Idle pool**: the operator's SQS calls per pool per hour, no submissions for {} s | — | {} |",
        IDLE_WINDOW.as_secs(),
        idle_sqs_per_hour.map_or_else(
            |e| format!("not measured: {e}"),
            |calls| format!("{calls:.0}")
        ),
    );
    let notes = format!(
        "Pool: `sleep` {JOB_SECONDS} s per job, concurrency {CONCURRENCY}, minReplicas 0, \
         maxReplicas {MAX_REPLICAS}, {defaults}; queue visibility timeout 30 s; API server: \
         the chart's, 1 replica, reached via {}; API server and worker images `:{}`.\n",
        api.via, bench.image_tag
    );
    println!("\n{table}\n{notes}");
    std::fs::create_dir_all(&bench.out_dir).expect("create the output directory");
    let table_path = bench.out_dir.join("seed-workloads.md");
    std::fs::write(&table_path, format!("{table}\n{notes}")).expect("write the table");
    eprintln!("[seed] table written to {}", table_path.display());

    remove_stack(&stack).await;
}

/// The flash sale's pool: the suite's pool object (sleep processor, the stack's queue) with
/// every scaling setting removed, so the API server fills in the CRD's defaults.
async fn create_default_pool(env: &TestEnv, stack: &TestStack, image_tag: &str) -> QueueWorkerPool {
    let mut options = PoolOptions::new(POOL);
    options.min_replicas = 0;
    options.max_replicas = MAX_REPLICAS;
    options.concurrency = CONCURRENCY;
    options.sleep_seconds = format!("{JOB_SECONDS}");
    options.visibility_timeout_seconds = 30;
    let mut object = serde_json::to_value(pool_object(stack, &options)).expect("pool as JSON");
    let s = Settings::get();
    object["spec"]["template"]["spec"]["containers"][0]["image"] =
        format!("{}qwp-worker:{image_tag}", s.image_registry).into();
    let spec = object["spec"].as_object_mut().expect("the pool has a spec");
    for defaulted in [
        "pollIntervalSeconds",
        "scaleUp",
        "scaleDown",
        "countInFlight",
        "countDelayed",
        "activationBacklog",
        "targetBacklogPerPod",
        "paused",
    ] {
        spec.remove(defaulted);
    }
    let resource = ApiResource::erase::<QueueWorkerPool>(&());
    let pools: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource);
    let object: DynamicObject = serde_json::from_value(object).expect("pool object");
    pools
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("cannot create pool {POOL}: {e}"));
    let typed: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
    typed.get(POOL).await.expect("read the stored pool back")
}

// ---------------------------------------------------------------------------------------
// oha

/// What one oha run measured.
#[derive(Debug, Default)]
struct OhaRun {
    seconds: f64,
    average_ms: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    statuses: BTreeMap<String, u64>,
    /// Connection errors, timeouts; without requests cut off at the end of a `-z` run.
    errors: BTreeMap<String, u64>,
}

impl OhaRun {
    fn count(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    /// Answers other than `expected`, and errors.
    fn unexpected(&self, expected: &str) -> u64 {
        self.total() - self.count(expected)
    }

    fn rate(&self, status: &str) -> f64 {
        self.count(status) as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// Runs `oha --no-tui --output-format json <args>` and reads its summary.
async fn oha(bench: &Bench, args: &[String]) -> OhaRun {
    let output = tokio::process::Command::new(&bench.oha)
        .args(["--no-tui", "--output-format", "json"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bench.oha.display()));
    assert!(
        output.status.success(),
        "oha {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "oha printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN) * 1000.0;
    let counts = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut errors = counts(&report["errorDistribution"]);
    errors.remove("aborted due to deadline");
    OhaRun {
        seconds: report["summary"]["total"].as_f64().unwrap_or(f64::NAN),
        average_ms: ms(&report["summary"]["average"]),
        p50_ms: ms(&report["latencyPercentiles"]["p50"]),
        p95_ms: ms(&report["latencyPercentiles"]["p95"]),
        p99_ms: ms(&report["latencyPercentiles"]["p99"]),
        max_ms: ms(&report["summary"]["slowest"]),
        statuses: counts(&report["statusCodeDistribution"]),
        errors,
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Flash sale

/// One sample of the timeline plus the pods of the pool that exist (starting, running or
/// terminating), which is what costs.
#[derive(Clone, Copy, Debug)]
struct Tick {
    sample: Sample,
    pods: usize,
}

/// Reads queue depth (SQS), desired (pool status), ready (Deployment) and the pool's pods
/// once a second; once `stop` is set, ends with the first tick that shows the pool at rest
/// (nothing queued, desired, ready or left), so the timeline ends where the sale did.
fn spawn_sampler(
    client: Client,
    ns: String,
    stack: Arc<TestStack>,
    started: Instant,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Tick>> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let selector = ListParams::default().labels(&format!("{POOL_LABEL}={POOL}"));
        let mut ticks: Vec<Tick> = Vec::new();
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let at_rest = ticks.last().is_some_and(|tick| {
                let s = tick.sample;
                (s.visible, s.in_flight, s.desired, s.ready, tick.pods) == (0, 0, 0, 0, 0)
            });
            if *stop.borrow() && at_rest {
                break;
            }
            every.tick().await;
            let t = started.elapsed().as_secs_f64();
            let ((visible, in_flight), status, deploy, pod_list) = tokio::join!(
                stack.queue_depth(),
                pool_status(&client, &ns, POOL),
                deployment(&client, &ns, POOL),
                pods.list(&selector),
            );
            let ready = deploy
                .and_then(|d| d.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let existing = pod_list
                .map(|list| {
                    list.items
                        .iter()
                        .filter(|p| {
                            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                            !matches!(phase, Some("Succeeded" | "Failed"))
                        })
                        .count()
                })
                .unwrap_or(0);
            ticks.push(Tick {
                sample: Sample {
                    t,
                    visible,
                    in_flight,
                    desired: status.map(|s| s.desired_replicas).unwrap_or(0),
                    ready,
                },
                pods: existing,
            });
        }
        ticks
    })
}

/// Watches the pool's Deployment from before the first request: when its `spec.replicas`
/// first goes above 0 and when its first pod is ready, in seconds after `started`. Returns
/// once the watch is established (its first event seen), so no change can be missed.
async fn spawn_first_scale_watch(
    client: Client,
    ns: String,
    started: Instant,
) -> tokio::task::JoinHandle<(f64, f64)> {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={POOL}"));
    let (watching_tx, watching_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let events = kube::runtime::watcher(deployments, config).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut watching = Some(watching_tx);
        let (mut written, mut ready) = (f64::NAN, f64::NAN);
        while let Some(event) = events.next().await {
            if let Some(tx) = watching.take() {
                let _ = tx.send(());
            }
            let Ok(
                kube::runtime::watcher::Event::Apply(d)
                | kube::runtime::watcher::Event::InitApply(d),
            ) = event
            else {
                continue;
            };
            let t = started.elapsed().as_secs_f64();
            if written.is_nan() && d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0 {
                written = t;
            }
            if ready.is_nan()
                && d.status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
                    > 0
            {
                ready = t;
            }
            if !written.is_nan() && !ready.is_nan() {
                break;
            }
        }
        (written, ready)
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), watching_rx).await;
    task
}

struct FlashSale {
    oha: OhaRun,
    /// Where the API server's time went during the sale (its own histograms).
    breakdown: Breakdown,
    accepted: u64,
    /// visible, and visible + in flight.
    peak_visible: u64,
    peak_backlog: u64,
    peak_desired: i32,
    peak_ready: i32,
    first_ready_seconds: f64,
    /// First request → the Deployment's `spec.replicas` above 0, and its first ready pod
    /// (both from a watch of the Deployment: every change is seen, not a 1 s sample).
    replicas_written_seconds: f64,
    first_ready_watched_seconds: f64,
    all_ready_seconds: f64,
    /// First request → last result stored (the result objects' LastModified).
    drain_seconds: f64,
    /// max(arrival + one job, work / capacity + one job).
    ideal_drain_seconds: f64,
    /// First request → queue seen empty by the sampler.
    queue_empty_seconds: f64,
    /// Queue seen empty → no pod of the pool left.
    back_to_zero_seconds: f64,
    pod_seconds: f64,
    ideal_pod_seconds: f64,
    results_done: usize,
    results_stored: usize,
    /// Ids of finished jobs, for the status reads.
    finished: Vec<String>,
}

async fn flash_sale(
    env: &TestEnv,
    stack: &Arc<TestStack>,
    api: &ApiServer,
    bench: &Bench,
) -> FlashSale {
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let wall_start = SystemTime::now();
    let sampler = spawn_sampler(
        env.client.clone(),
        env.ns.clone(),
        stack.clone(),
        started,
        stop_rx,
    );
    let first_scale = spawn_first_scale_watch(env.client.clone(), env.ns.clone(), started).await;

    let mut args = vec![
        "-z".to_string(),
        format!("{}s", bench.flash_seconds),
        "-w".into(),
        "-c".into(),
        bench.flash_clients.to_string(),
        "-t".into(),
        "30s".into(),
    ];
    if bench.flash_qps > 0 {
        args.extend(["-q".to_string(), bench.flash_qps.to_string()]);
    }
    args.extend(strings(&[
        "-m",
        "POST",
        "-T",
        "application/octet-stream",
        "-d",
        ORDER,
    ]));
    args.push(format!("{}/jobs?filename=order.json&wait=0", api.base_url));
    eprintln!(
        "[seed] flash sale: {} clients for {} s, POST /jobs?wait=0",
        bench.flash_clients, bench.flash_seconds
    );
    let metrics_before = api_server::scrape_metrics(env).await;
    let run = oha(bench, &args).await;
    let metrics = ApiMetrics::between(metrics_before, api_server::scrape_metrics(env).await);
    let breakdown = metrics.breakdown("/jobs");
    let accepted = run.count("202");
    eprintln!(
        "[seed] flash sale: {accepted} accepted in {:.1} s ({:.1}/s), p50 {:.0} ms, p99 {:.0} ms, \
         {} other answers or errors {:?} {:?}",
        run.seconds,
        run.rate("202"),
        run.p50_ms,
        run.p99_ms,
        run.unexpected("202"),
        run.statuses,
        run.errors
    );
    assert!(accepted > 0, "the API server accepted no job: {run:?}");

    // Capacity-bound work plus the scale-down window and slack, capped for a stuck run.
    let work = accepted as f64 * JOB_SECONDS / f64::from(MAX_REPLICAS * CONCURRENCY);
    let patience = Duration::from_secs_f64((work * 3.0 + 300.0).min(1800.0));
    until(
        "the queue to drain",
        patience,
        Duration::from_secs(2),
        || async {
            match stack.queue_depth().await {
                (0, 0) => Ok(()),
                (visible, in_flight) => Err(format!("visible={visible} in_flight={in_flight}")),
            }
        },
    )
    .await;
    eprintln!(
        "[seed] flash sale: queue empty at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let stored = until(
        &format!("{accepted} results in the output bucket"),
        Duration::from_secs(120),
        Duration::from_secs(2),
        || async {
            let (count, _) = stored_results(stack).await;
            if count as u64 >= accepted {
                Ok(count)
            } else {
                Err(format!("{count} stored"))
            }
        },
    )
    .await;
    until(
        "the pool back at 0 pods",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || async {
            let desired = pool_status(&env.client, &env.ns, POOL)
                .await
                .map(|s| s.desired_replicas);
            let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
            let left = pods
                .list(&ListParams::default().labels(&format!("{POOL_LABEL}={POOL}")))
                .await
                .map(|l| l.items.len())
                .unwrap_or(usize::MAX);
            if desired == Some(0) && left == 0 {
                Ok(())
            } else {
                Err(format!("desired={desired:?} pods={left}"))
            }
        },
    )
    .await;
    stop_tx.send_replace(true);
    let ticks = tokio::time::timeout(Duration::from_secs(60), sampler)
        .await
        .expect("the sampler saw the pool at rest")
        .expect("sampler");
    eprintln!(
        "[seed] flash sale: pool back at 0 at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // Every stored result, checked: done, for its own job, from the sleep processor.
    let all = results(stack).await;
    let mut finished = Vec::new();
    let mut results_done = 0;
    for (key, result) in &all {
        let own = result.job_id.to_string() == *key;
        if let (true, Outcome::Done { result: output }) = (own, &result.outcome)
            && output.get("slept_ms").and_then(Value::as_u64).is_some()
        {
            results_done += 1;
            finished.push(key.clone());
        }
    }
    let (_, last_modified) = stored_results(stack).await;
    let first_request = wall_start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let drain_seconds = last_modified - first_request;

    let samples: Vec<Sample> = ticks.iter().map(|t| t.sample).collect();
    let (replicas_written_seconds, first_ready_watched_seconds) =
        tokio::time::timeout(Duration::from_secs(5), first_scale)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or((f64::NAN, f64::NAN));
    let arrival = run.seconds;
    let queue_empty_seconds = ticks
        .iter()
        .find(|t| t.sample.t > arrival && t.sample.visible + t.sample.in_flight == 0)
        .map(|t| t.sample.t)
        .unwrap_or(f64::NAN);
    let pods_gone_seconds = ticks
        .iter()
        .rev()
        .take_while(|t| t.pods == 0)
        .last()
        .map(|t| t.sample.t)
        .unwrap_or(f64::NAN);
    // Left Riemann sum of the pods that existed, sample to sample.
    let pod_seconds: f64 = ticks
        .windows(2)
        .map(|w| w[0].pods as f64 * (w[1].sample.t - w[0].sample.t))
        .sum();
    let flash = FlashSale {
        breakdown,
        accepted,
        peak_visible: samples.iter().map(|s| s.visible).max().unwrap_or(0),
        peak_backlog: samples
            .iter()
            .map(|s| s.visible + s.in_flight)
            .max()
            .unwrap_or(0),
        peak_desired: samples.iter().map(|s| s.desired).max().unwrap_or(0),
        peak_ready: samples.iter().map(|s| s.ready).max().unwrap_or(0),
        first_ready_seconds: first_time(&samples, |s| s.ready > 0),
        replicas_written_seconds,
        first_ready_watched_seconds,
        all_ready_seconds: first_time(&samples, |s| s.ready >= MAX_REPLICAS),
        drain_seconds,
        ideal_drain_seconds: (arrival + JOB_SECONDS).max(work + JOB_SECONDS),
        queue_empty_seconds,
        back_to_zero_seconds: pods_gone_seconds - queue_empty_seconds,
        pod_seconds,
        ideal_pod_seconds: accepted as f64 * JOB_SECONDS / f64::from(CONCURRENCY),
        results_done,
        results_stored: stored.max(all.len()),
        finished,
        oha: run,
    };
    write_timeline(bench, &ticks, &flash);
    assert_eq!(
        flash.results_done as u64, accepted,
        "{accepted} jobs accepted, {} results stored, {} of them done for their own job",
        flash.results_stored, flash.results_done
    );
    flash
}

fn first_time(samples: &[Sample], hit: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .find(|s| hit(s))
        .map(|s| s.t)
        .unwrap_or(f64::NAN)
}

/// (number of result objects, latest LastModified in seconds since the epoch).
async fn stored_results(stack: &TestStack) -> (usize, f64) {
    let objects = qwp_e2e::jobs::result_objects(stack).await;
    let latest = objects
        .iter()
        .map(|(_, modified)| *modified)
        .fold(f64::NAN, f64::max);
    (objects.len(), latest)
}

/// `flash-sale-timeline.csv` (the suite's columns plus `pods`) and `.png`.
fn write_timeline(bench: &Bench, ticks: &[Tick], flash: &FlashSale) {
    std::fs::create_dir_all(&bench.out_dir).expect("create the output directory");
    let samples: Vec<Sample> = ticks.iter().map(|t| t.sample).collect();
    let mut csv = String::new();
    for (i, line) in to_csv(&samples).lines().enumerate() {
        let pods = match i {
            0 => "pods".to_string(),
            _ => ticks[i - 1].pods.to_string(),
        };
        let _ = writeln!(csv, "{line},{pods}");
    }
    let csv_path = bench.out_dir.join("flash-sale-timeline.csv");
    std::fs::write(&csv_path, csv).expect("write the timeline CSV");
    let png_path = bench.out_dir.join("flash-sale-timeline.png");
    let title = format!(
        "flash sale: {} jobs in {:.0} s, sleep 3 s, concurrency 5, max 15 pods, default scaling",
        flash.accepted, flash.oha.seconds
    );
    render_png(&samples, &title, &png_path).expect("render the timeline PNG");
    eprintln!(
        "[seed] timeline written to {} and {}",
        csv_path.display(),
        png_path.display()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Upload to result

struct UploadToResult {
    oha: OhaRun,
    /// Results in the bucket with the upload's checksum.
    done: usize,
    peak_desired: i32,
    /// Waiters woken by a worker's completion hint, and the waiters' S3 reads (the API
    /// server's counters over the run).
    hints_woke: u64,
    result_polls: u64,
    /// Where the API server's time went during the run.
    breakdown: Breakdown,
}

/// Switches the pool to the `checksum` processor with one warm pod, so the run measures the
/// pipeline (upload, queue, worker, result, the waiting API server), not a cold start.
async fn upload_to_result(
    env: &TestEnv,
    stack: &TestStack,
    api: &ApiServer,
    bench: &Bench,
) -> UploadToResult {
    let pools: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
    let mut pool = pools.get(POOL).await.expect("read the pool");
    pool.spec.min_replicas = 1;
    let containers = pool
        .spec
        .template
        .spec
        .as_mut()
        .map(|s| &mut s.containers)
        .expect("the pool has a pod spec");
    for container in containers.iter_mut() {
        for var in container.env.iter_mut().flatten() {
            if var.name == "WORKER_PROCESSOR" {
                var.value = Some("checksum".into());
            }
        }
    }
    pools
        .replace(POOL, &PostParams::default(), &pool)
        .await
        .expect("switch the pool to the checksum processor");
    until(
        "one ready checksum pod",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let status = deployment(&env.client, &env.ns, POOL)
                .await
                .and_then(|d| d.status);
            let s = status.unwrap_or_default();
            let (all, ready, updated) = (
                s.replicas.unwrap_or(0),
                s.ready_replicas.unwrap_or(0),
                s.updated_replicas.unwrap_or(0),
            );
            if all == 1 && ready == 1 && updated == 1 {
                Ok(())
            } else {
                Err(format!("replicas={all} ready={ready} updated={updated}"))
            }
        },
    )
    .await;

    // A photo-sized upload (100 KiB), the same for every request so each result can be checked.
    let payload: Vec<u8> = (0..100 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&payload));
    let dir = std::env::temp_dir().join(format!("qwp-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let photo = dir.join("photo.jpg");
    std::fs::write(&photo, &payload).expect("write the upload");

    // The peak of desired replicas, from a watch of the pool: every status update is seen.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let watcher = {
        let pools: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
        let updates = kube::runtime::watcher(
            pools,
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={POOL}")),
        )
        .default_backoff()
        .applied_objects();
        tokio::spawn(async move {
            let mut updates = std::pin::pin!(updates);
            let mut peak = 0;
            loop {
                tokio::select! {
                    Some(pool) = updates.next() => {
                        if let Some(status) = pool.ok().and_then(|p| p.status) {
                            peak = peak.max(status.desired_replicas);
                        }
                    }
                    _ = stop_rx.changed() => break peak,
                }
            }
        })
    };
    eprintln!(
        "[seed] upload to result: {} requests, {} at a time, POST /?wait=30 multipart inputFile",
        bench.upload_requests, bench.upload_clients
    );
    let metrics_before = api_server::scrape_metrics(env).await;
    let run = oha(
        bench,
        &[
            "-n".into(),
            bench.upload_requests.to_string(),
            "-c".into(),
            bench.upload_clients.to_string(),
            "-t".into(),
            "60s".into(),
            "-m".into(),
            "POST".into(),
            "-F".into(),
            format!("inputFile=@{}", photo.display()),
            format!("{}/?wait=30", api.base_url),
        ],
    )
    .await;
    stop_tx.send_replace(true);
    let peak_desired = watcher.await.unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    // How the waiters learnt of their results: completion hints, or the S3 poll.
    let metrics = ApiMetrics::between(metrics_before, api_server::scrape_metrics(env).await);
    let hints_woke = metrics.increase("qwp_api_result_hints_total", r#"outcome="woke""#) as u64;
    let result_polls = metrics.increase("qwp_api_result_polls_total", "") as u64;
    let breakdown = metrics.breakdown("/");

    let done = results(stack)
        .await
        .values()
        .filter(|r| match &r.outcome {
            Outcome::Done { result } => {
                result.get("sha256").and_then(Value::as_str) == Some(sha256.as_str())
            }
            Outcome::Failed { .. } => false,
        })
        .count();
    eprintln!(
        "[seed] upload to result: {} answered 200, {done} checksum results stored; average {:.0} ms, \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; statuses {:?} errors {:?}",
        run.count("200"),
        run.average_ms,
        run.p50_ms,
        run.p99_ms,
        run.max_ms,
        run.statuses,
        run.errors
    );
    eprintln!(
        "[seed] upload to result: {hints_woke} waiters woken by a hint, {result_polls} S3 polls"
    );
    UploadToResult {
        oha: run,
        done,
        peak_desired,
        hints_woke,
        result_polls,
        breakdown,
    }
}

// ---------------------------------------------------------------------------------------
// 4. An idle pool's cost

/// How long the idle pool is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(60);

/// The operator's SQS calls (`qwp_operator_sqs_requests_total`, all replicas) over
/// [`IDLE_WINDOW`] with no job submitted, as calls per hour: with this run's pool the only
/// one on the cluster, what one idle pool costs (a queue read per poll; wake-up hints come
/// only with submissions).
async fn idle_pool_sqs_calls(env: &TestEnv) -> Result<f64, String> {
    let s = Settings::get();
    let calls = || async {
        let text =
            api_server::scrape_pods(&env.client, &s.operator_namespace, OPERATOR_PODS).await?;
        Ok::<f64, String>(sum_of(&text, "qwp_operator_sqs_requests_total", ""))
    };
    eprintln!(
        "[seed] idle pool: counting the operator's SQS calls for {} s",
        IDLE_WINDOW.as_secs()
    );
    let before = calls().await?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = calls().await?;
    Ok((after - before) * 3600.0 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// 3. Status reads

async fn status_reads(api: &ApiServer, bench: &Bench, finished: &[String]) -> OhaRun {
    let dir = std::env::temp_dir().join(format!("qwp-seed-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let urls = dir.join("urls.txt");
    let list: String = finished
        .iter()
        .take(1000)
        .map(|id| format!("{}/status/{id}\n", api.base_url))
        .collect();
    std::fs::write(&urls, list).expect("write the URL list");
    eprintln!(
        "[seed] status reads: {} clients for {} s, GET /status/{{id}} of {} finished jobs",
        bench.status_clients,
        bench.status_seconds,
        finished.len().min(1000)
    );
    let run = oha(
        bench,
        &[
            "-z".into(),
            format!("{}s", bench.status_seconds),
            "-c".into(),
            bench.status_clients.to_string(),
            "--urls-from-file".into(),
            urls.to_string_lossy().into_owned(),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "[seed] status reads: {:.1} rps (200), average {:.0} ms, p95 {:.0} ms, p99 {:.0} ms; {:?} {:?}",
        run.rate("200"),
        run.average_ms,
        run.p95_ms,
        run.p99_ms,
        run.statuses,
        run.errors
    );
    run
}

// ---------------------------------------------------------------------------------------
// Report

fn report_table(
    bench: &Bench,
    flash: &FlashSale,
    upload: &UploadToResult,
    status: &OhaRun,
) -> String {
    let f = &flash.oha;
    let mut t = String::new();
    let mut row = |metric: &str, seed: &str, here: String| {
        let _ = writeln!(t, "| {metric} | {seed} | {here} |");
    };
    row(
        "**Flash sale** (seeds 002/004)",
        "locust, 20 users, 60 s",
        format!(
            "oha, {} clients, {:.0} s, no think time{}",
            bench.flash_clients,
            f.seconds,
            if bench.flash_qps > 0 {
                format!(", capped at {}/s", bench.flash_qps)
            } else {
                String::new()
            }
        ),
    );
    row(
        "jobs accepted (202)",
        "2,884",
        format!(
            "{} ({} other answers/errors)",
            flash.accepted,
            f.unexpected("202")
        ),
    );
    row("accepted jobs/s", "48.27", format!("{:.1}", f.rate("202")));
    row(
        "API latency p50 / p95 / p99",
        "110 / 120 / 190 ms",
        format!("{:.0} / {:.0} / {:.0} ms", f.p50_ms, f.p95_ms, f.p99_ms),
    );
    row(
        "peak backlog (visible / visible + in flight)",
        "2,759 queued at the end",
        format!("{} / {}", flash.peak_visible, flash.peak_backlog),
    );
    row(
        "worker pods",
        "1 (seed 004); 0 → ~15 (seed 000)",
        format!(
            "0 → {} desired, {} ready (first ready {:.0} s, {} ready {:.0} s after the first request)",
            flash.peak_desired,
            flash.peak_ready,
            flash.first_ready_seconds,
            MAX_REPLICAS,
            flash.all_ready_seconds
        ),
    );
    row(
        "first request → Deployment replicas written / first pod ready (watched)",
        "—",
        format!(
            "{:.2} s / {:.2} s",
            flash.replicas_written_seconds, flash.first_ready_watched_seconds
        ),
    );
    row(
        "drain: first request → last result",
        "~29 min (one worker)",
        format!(
            "{:.0} s (queue empty at {:.0} s); ideal {:.0} s = max(arrival + 3 s, jobs × 3 s / 75 slots + 3 s)",
            flash.drain_seconds, flash.queue_empty_seconds, flash.ideal_drain_seconds
        ),
    );
    row(
        "queue empty → pool at 0 pods",
        "— (worker always on)",
        format!(
            "{:.0} s (scale-down window 60 s)",
            flash.back_to_zero_seconds
        ),
    );
    row(
        "worker pod-seconds",
        "—",
        format!(
            "{:.0} (ideal {:.0} = jobs × 3 s / 5 slots; ratio {:.2})",
            flash.pod_seconds,
            flash.ideal_pod_seconds,
            flash.pod_seconds / flash.ideal_pod_seconds
        ),
    );
    row(
        "results stored, `done`, for their own job",
        "—",
        format!("{} / {}", flash.results_done, flash.accepted),
    );
    flash.breakdown.add_rows(&mut row);
    let u = &upload.oha;
    row(
        "**Upload → result** (seed 000)",
        "100-request load test, AWS",
        format!(
            "oha, {} requests, {} at a time, `POST /?wait=30` multipart 100 KiB, `checksum`, 1 warm pod",
            bench.upload_requests, bench.upload_clients
        ),
    );
    row(
        "answered 200 with the result",
        "100 %",
        format!(
            "{} / {} ({} checksum results stored)",
            u.count("200"),
            bench.upload_requests,
            upload.done
        ),
    );
    row(
        "end-to-end latency average",
        "~0.96 s",
        format!("{:.2} s", u.average_ms / 1000.0),
    );
    row(
        "end-to-end latency p50 / p99",
        "—",
        format!("{:.0} / {:.0} ms", u.p50_ms, u.p99_ms),
    );
    row(
        "worker pods during the run",
        "0 → ~15",
        format!("1 → {} desired", upload.peak_desired),
    );
    row(
        "waiters woken by a completion hint / S3 polls by waiters",
        "—",
        format!("{} / {}", upload.hints_woke, upload.result_polls),
    );
    upload.breakdown.add_rows(&mut row);
    row(
        "**Status reads** (seed 003 style)",
        "locust, 50 users",
        format!(
            "oha, {} clients, {} s, `GET /status/{{id}}` of finished jobs",
            bench.status_clients, bench.status_seconds
        ),
    );
    row("requests/s", "~32.7", format!("{:.1}", status.rate("200")));
    row(
        "latency average / p95 / p99",
        "~44 / ~110 / — ms",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            status.average_ms, status.p95_ms, status.p99_ms
        ),
    );
    row(
        "answers other than 200",
        "0 % failures",
        status.unexpected("200").to_string(),
    );
    format!("| metric | seed | here |\n|---|---|---|\n{t}")
}

/// Mean and quantiles of one histogram series over an interval.
#[derive(Clone, Copy, Debug)]
struct Latency {
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} / {:.1} / {:.1} ms",
            self.mean_ms, self.p50_ms, self.p99_ms
        )
    }
}

/// The flash sale seen from inside the API server: `POST /jobs` as the server timed it, and
/// the S3 and SQS calls each acceptance makes (`qwp_api_aws_call_duration_seconds`), from
/// two scrapes of its metrics around the run. Quantiles are interpolated within the
/// histograms' power-of-two buckets, so they are estimates.
#[derive(Debug, Default)]
struct Breakdown {
    rows: Vec<(String, Latency)>,
}

impl Breakdown {
    /// One table row per series: `row(metric, seed, here)`.
    fn add_rows(&self, row: &mut impl FnMut(&str, &str, String)) {
        for (what, latency) in &self.rows {
            row(
                &format!("API server's own time: {what} (mean / p50 / p99)"),
                "—",
                latency.to_string(),
            );
        }
    }

    /// `route`: the request's route template as the server labels it (`/jobs`, `/`).
    fn between(before: &str, after: &str, route: &str) -> Self {
        let route_label = format!("route=\"{route}\"");
        let series: [(String, &str, &str); 4] = [
            (
                format!("{route}, request in → answer out"),
                "qwp_api_http_request_duration_seconds",
                &route_label,
            ),
            (
                "S3 PutObject (input)".into(),
                "qwp_api_aws_call_duration_seconds",
                r#"call="s3_put_input""#,
            ),
            (
                "SQS SendMessage".into(),
                "qwp_api_aws_call_duration_seconds",
                r#"call="sqs_send_message""#,
            ),
            (
                "S3 GetObject (result)".into(),
                "qwp_api_aws_call_duration_seconds",
                r#"call="s3_get_result""#,
            ),
        ];
        let rows = series
            .into_iter()
            .filter_map(|(what, name, labels)| {
                histogram_delta(before, after, name, labels).map(|latency| (what, latency))
            })
            .collect();
        Breakdown { rows }
    }
}

/// Two scrapes of the API server's metrics around a workload; empty (every figure 0, no
/// breakdown rows) when either could not be read, which is printed.
struct ApiMetrics {
    before: String,
    after: String,
}

impl ApiMetrics {
    fn between(before: Result<String, String>, after: Result<String, String>) -> Self {
        match (before, after) {
            (Ok(before), Ok(after)) => ApiMetrics { before, after },
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("[seed] the API server's metrics could not be read: {e}");
                ApiMetrics {
                    before: String::new(),
                    after: String::new(),
                }
            }
        }
    }

    /// How much the counters `name` with `labels` grew between the scrapes.
    fn increase(&self, name: &str, labels: &str) -> f64 {
        sum_of(&self.after, name, labels) - sum_of(&self.before, name, labels)
    }

    fn breakdown(&self, route: &str) -> Breakdown {
        Breakdown::between(&self.before, &self.after, route)
    }
}

/// The sum of the samples of `name` whose label set contains `labels`.
fn sum_of(text: &str, name: &str, labels: &str) -> f64 {
    sample_lines(text, name, labels)
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// The samples of `name{...} value` (or `name value`) lines in Prometheus text whose label
/// set contains `labels` (in any position: the encoder may put `le` first): the label set and
/// the value.
fn sample_lines<'a>(text: &'a str, name: &str, labels: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_set, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            label_set
                .contains(labels)
                .then_some((label_set, value.trim().parse().ok()?))
        })
        .collect()
}

/// The interval's mean and p50/p99 of a histogram from two scrapes; `None` without samples.
fn histogram_delta(before: &str, after: &str, name: &str, labels: &str) -> Option<Latency> {
    let total = |text: &str, suffix: &str| sum_of(text, &format!("{name}_{suffix}"), labels);
    let count = total(after, "count") - total(before, "count");
    if count <= 0.0 {
        return None;
    }
    let mean = (total(after, "sum") - total(before, "sum")) / count;
    let cumulative = |text: &str| -> Vec<(f64, f64)> {
        sample_lines(text, &format!("{name}_bucket"), labels)
            .into_iter()
            .filter_map(|(more, v)| {
                let le = more.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect()
    };
    let earlier = cumulative(before);
    let buckets: Vec<(f64, f64)> = cumulative(after)
        .into_iter()
        .map(|(le, v)| {
            let was = earlier
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, v)| *v);
            (le, v - was)
        })
        .collect();
    let quantile = |q: f64| {
        let rank = q * count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let share = (rank - lower.1) / (cumulative - lower.1).max(f64::MIN_POSITIVE);
                return lower.0 + (le - lower.0) * share;
            }
            lower = (le, cumulative);
        }
        lower.0
    };
    Some(Latency {
        mean_ms: mean * 1e3,
        p50_ms: quantile(0.5) * 1e3,
        p99_ms: quantile(0.99) * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwp_api_server::metrics::{CallLabels, Metrics, RouteLabels};

    fn encoded(metrics: &Metrics) -> String {
        let mut text = String::new();
        let registry: &prometheus_client::registry::Registry = metrics.as_ref();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn the_breakdown_reads_the_api_servers_own_histograms_over_the_interval() {
        let metrics = Metrics::default();
        let route = RouteLabels {
            route: "/jobs".into(),
        };
        let put = CallLabels {
            call: "s3_put_input",
        };
        // Before the interval: slow answers that must not count.
        metrics.latency.get_or_create(&route).observe(5.0);
        let before = encoded(&metrics);
        for _ in 0..99 {
            metrics.latency.get_or_create(&route).observe(0.003);
            metrics.aws_calls.get_or_create(&put).observe(0.0015);
        }
        metrics.latency.get_or_create(&route).observe(0.1);
        metrics.aws_calls.get_or_create(&put).observe(0.1);
        // Another route of the same histogram is not mixed in.
        let other = RouteLabels {
            route: "/jobs/{job_id}".into(),
        };
        metrics.latency.get_or_create(&other).observe(9.0);
        let after = encoded(&metrics);

        let breakdown = Breakdown::between(&before, &after, "/jobs");
        let rows: BTreeMap<_, _> = breakdown.rows.iter().cloned().collect();
        let request = rows["/jobs, request in → answer out"];
        assert!((request.mean_ms - 3.97).abs() < 0.01, "{request:?}");
        // 0.003 s falls in the (2 ms, 4 ms] bucket; the p99 rank still lies in it.
        assert!(request.p50_ms > 2.0 && request.p50_ms <= 4.0, "{request:?}");
        assert!(request.p99_ms > 2.0 && request.p99_ms <= 4.0, "{request:?}");
        let put = rows["S3 PutObject (input)"];
        assert!(put.p50_ms > 1.0 && put.p50_ms <= 2.0, "{put:?}");
        assert!(
            !rows.contains_key("SQS SendMessage"),
            "no SendMessage in the interval"
        );
    }
}
