//! qwp against real KEDA on the same cluster (`make bench-keda`, docs/benchmarks.md): three
//! identical worker Deployments, each on its own queue and buckets, fed the same arrivals at
//! the same moments through the same path (`TestStack::submit`: input to S3, then the
//! message, as the API server does):
//!
//! - `qwp`: a QueueWorkerPool with every scaling setting at the CRD's defaults;
//! - `keda-default`: the Deployment the operator would build for the same pool (the operator's
//!   own `build_deployment`, unowned), scaled by a KEDA ScaledObject with KEDA's defaults and
//!   the `aws-sqs-queue` trigger at `queueLength` = concurrency;
//! - `keda-fast`: the same, tuned for fast reaction as KEDA's docs suggest: short
//!   `pollingInterval` and `cooldownPeriod`, HPA `behavior` without scale-up limits.
//!
//! Traces are the simulator's (`qwp_simulator::trace`): the flash sale and the spiky bursts.
//! A sampler reads every queue, Deployment and the lanes' pods once a second; the workers'
//! logs give the jobs a scale-in caught in flight and the redeliveries. Writes, per trace,
//! `<trace>.md` (table), `<trace>.csv` (timeline) and `<trace>.png` (plot), and
//! `<trace>.json` (numbers for the simulator's calibration) into `KEDA_BENCH_OUT_DIR`.
//!
//! Settings (environment): `KEDA_BENCH_TRACES` (`flash-sale,spiky`), `KEDA_BENCH_SPIKY_BURSTS`
//! (2: bursts 10 min apart), `KEDA_BENCH_OUT_DIR` (`docs/bench/keda`),
//! `KEDA_BENCH_FAST_POLLING_SECONDS` (5), `KEDA_BENCH_FAST_COOLDOWN_SECONDS` (60), plus the
//! e2e suite's (docs/e2e.md).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Client, ResourceExt};
use qwp_e2e::install::ensure_operator_installed;
use qwp_e2e::jobs::{remove_stack, result_objects};
use qwp_e2e::logs::{LogCollector, span_field};
use qwp_e2e::pool::{AWS_SECRET, PoolOptions, create_aws_secret, pool_object};
use qwp_e2e::timeline::{Lane as PlotLane, Sample, render_lanes_png, to_csv};
use qwp_e2e::wait::{pool_status, until};
use qwp_e2e::{Settings, TestEnv, with_temp_ns};
use qwp_jobs::config::{ConfigError, Vars};
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{Filename, JobId, JobMessage};
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::{POOL_LABEL, QueueWorkerPool};
use qwp_pool::deployment::{MANAGED_BY, build_deployment};
use qwp_simulator::model::{self, Settings as ModelSettings};
use qwp_simulator::policy::{KedaHpa, KedaSettings, Qwp, Scaler};
use qwp_simulator::trace::{self, Trace};
use serde_json::{Value, json};
use tokio::sync::watch;

/// What a worker holds: the pool's queue visibility timeout (and the workers').
const VISIBILITY_TIMEOUT_SECONDS: u32 = 30;
/// Simulator traces advance in 100 ms ticks; arrivals here follow the same accumulator.
const TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
struct Bench {
    traces: Vec<String>,
    spiky_bursts: u64,
    out_dir: PathBuf,
    fast_polling_seconds: u32,
    fast_cooldown_seconds: u32,
}

impl Bench {
    fn from_env() -> Result<Bench, ConfigError> {
        let vars = Vars::process();
        let root = &Settings::get().repo_root;
        Ok(Bench {
            traces: vars
                .string("KEDA_BENCH_TRACES", "flash-sale,spiky")
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            spiky_bursts: vars.parse_in("KEDA_BENCH_SPIKY_BURSTS", 2, 1..=4)?,
            out_dir: PathBuf::from(vars.string(
                "KEDA_BENCH_OUT_DIR",
                &root.join("docs/bench/keda").to_string_lossy(),
            )),
            fast_polling_seconds: vars.parse_in("KEDA_BENCH_FAST_POLLING_SECONDS", 5, 1..=60)?,
            fast_cooldown_seconds: vars.parse_in(
                "KEDA_BENCH_FAST_COOLDOWN_SECONDS",
                60,
                0..=600,
            )?,
        })
    }

    /// The simulator's trace; the spiky one cut to `spiky_bursts` bursts.
    fn trace(&self, name: &str) -> Option<Trace> {
        let mut t = trace::all().into_iter().find(|t| t.name == name)?;
        if t.name == "spiky" {
            t.arrival_seconds = (self.spiky_bursts - 1) * 600 + 5;
        }
        Some(t)
    }
}

/// How a lane's Deployment is scaled.
#[derive(Clone, Debug)]
enum Scaling {
    /// A QueueWorkerPool with the CRD's defaults.
    Qwp,
    /// A ScaledObject; `spec` holds the fields set beyond the target and the trigger, `model`
    /// the simulator's settings for it.
    Keda { spec: Value, model: KedaSettings },
}

impl Scaling {
    /// The simulator's scaler for this lane (the calibration's other half).
    fn model(&self, trace: &Trace) -> Box<dyn Scaler> {
        match self {
            Scaling::Qwp => Box::new(Qwp::with_defaults(trace.concurrency, trace.max_replicas)),
            Scaling::Keda { model, .. } => Box::new(KedaHpa::new("keda", *model)),
        }
    }
}

#[derive(Clone, Debug)]
struct Lane {
    /// Deployment (and pool) name; pods are `<name>-…`.
    name: &'static str,
    scaling: Scaling,
    /// One line for the table's settings.
    settings: String,
}

fn lanes(bench: &Bench, trace: &Trace) -> Vec<Lane> {
    let fast_behavior = json!({
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": trace.max_replicas, "periodSeconds": 1}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": bench.fast_cooldown_seconds,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
        },
    });
    vec![
        Lane {
            name: "qwp",
            scaling: Scaling::Qwp,
            settings: "QueueWorkerPool defaults: poll 5 s, targetBacklogPerPod = concurrency, \
                       in flight counted, scale-up immediate, scale-down window 60 s"
                .into(),
        },
        Lane {
            name: "keda-default",
            scaling: Scaling::Keda {
                spec: json!({}),
                model: KedaSettings::defaults(trace.concurrency, trace.max_replicas),
            },
            settings: "ScaledObject defaults: pollingInterval 30 s, cooldownPeriod 300 s, \
                       queueLength = concurrency, scaleOnInFlight (default true); HPA defaults \
                       (sync 15 s, tolerance 10 %, scale-up to max(4, 2 × current) per sync (no `behavior`), \
                       scale-down window 300 s)"
                .into(),
        },
        Lane {
            name: "keda-fast",
            scaling: Scaling::Keda {
                spec: json!({
                    "pollingInterval": bench.fast_polling_seconds,
                    "cooldownPeriod": bench.fast_cooldown_seconds,
                    "advanced": {"horizontalPodAutoscalerConfig": {"behavior": fast_behavior}},
                }),
                model: KedaSettings::fast(
                    trace.concurrency,
                    trace.max_replicas,
                    u64::from(bench.fast_polling_seconds),
                    u64::from(bench.fast_cooldown_seconds),
                ),
            },
            settings: format!(
                "ScaledObject tuned: pollingInterval {} s, cooldownPeriod {} s, HPA behavior \
                 scale-up window 0 s, +{} pods/1 s; scale-down window {} s, −100 %/1 s",
                bench.fast_polling_seconds,
                bench.fast_cooldown_seconds,
                trace.max_replicas,
                bench.fast_cooldown_seconds
            ),
        },
    ]
}

fn main() {
    let bench = Bench::from_env().unwrap_or_else(|e| {
        eprintln!("keda_bench: {e}");
        std::process::exit(2)
    });
    for name in &bench.traces {
        if bench.trace(name).is_none() {
            eprintln!("keda_bench: unknown trace {name:?} (flash-sale, steady, spiky, diurnal)");
            std::process::exit(2);
        }
    }
    let started = Instant::now();
    ensure_operator_installed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for name in bench.traces.clone() {
        let trace = bench.trace(&name).expect("checked above");
        let bench = bench.clone();
        let t0 = Instant::now();
        runtime.block_on(with_temp_ns(&format!("keda_bench_{name}"), move |env| {
            run_trace(env, bench, trace)
        }));
        eprintln!("[keda-bench] {name}: {:.0} s", t0.elapsed().as_secs_f64());
    }
    eprintln!(
        "[keda-bench] whole run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Set-up

fn pool_options(name: &str, trace: &Trace) -> PoolOptions {
    let mut o = PoolOptions::new(name);
    o.min_replicas = 0;
    o.max_replicas = trace.max_replicas as i32;
    o.concurrency = trace.concurrency as i32;
    o.sleep_seconds = format!("{}", trace.job_seconds);
    o.visibility_timeout_seconds = VISIBILITY_TIMEOUT_SECONDS;
    o
}

/// The pool as the user would write it: scaling settings left out, so the CRD's defaults
/// apply.
async fn create_default_pool(env: &TestEnv, stack: &TestStack, lane: &Lane, trace: &Trace) {
    let mut object = serde_json::to_value(pool_object(stack, &pool_options(lane.name, trace)))
        .expect("pool as JSON");
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
        .unwrap_or_else(|e| panic!("cannot create pool {}: {e}", lane.name));
}

/// The Deployment the operator builds for the same pool (its own function), without the
/// owner reference, at 0 replicas: what KEDA scales.
async fn create_keda_deployment(env: &TestEnv, stack: &TestStack, lane: &Lane, trace: &Trace) {
    let mut pool = pool_object(stack, &pool_options(lane.name, trace));
    pool.metadata.namespace = Some(env.ns.clone());
    let mut deployment =
        build_deployment(&pool, 0, DEFAULT_ADMIN_PORT).expect("the operator's Deployment");
    deployment.metadata.owner_references = None;
    deployment
        .labels_mut()
        .insert(MANAGED_BY.0.to_string(), "keda".to_string());
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap_or_else(|e| panic!("cannot create Deployment {}: {e}", lane.name));
}

fn keda_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("keda.sh", "v1alpha1", kind))
}

/// The TriggerAuthentication with LocalStack's keys, from the namespace's Secret.
async fn create_trigger_auth(env: &TestEnv) {
    let auth: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": AWS_SECRET},
        "spec": {"secretTargetRef": [
            {"parameter": "awsAccessKeyID", "name": AWS_SECRET, "key": "AWS_ACCESS_KEY_ID"},
            {"parameter": "awsSecretAccessKey", "name": AWS_SECRET, "key": "AWS_SECRET_ACCESS_KEY"},
        ]},
    }))
    .expect("trigger authentication");
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &keda_resource("TriggerAuthentication"),
    );
    api.create(&PostParams::default(), &auth)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot create the TriggerAuthentication (is KEDA installed? make keda-up): {e}")
        });
}

/// `<endpoint>/<account>/<queue>`: the scaler wants exactly two path parts.
fn keda_queue_url(stack: &TestStack) -> String {
    let mut parts = stack.queue_url.rsplit('/');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or_default();
    format!("{}/{account}/{name}", Settings::get().pod_aws_endpoint)
}

async fn create_scaled_object(
    env: &TestEnv,
    stack: &TestStack,
    lane: &Lane,
    extra: &Value,
    trace: &Trace,
) {
    let s = Settings::get();
    let mut spec = json!({
        "scaleTargetRef": {"name": lane.name},
        "minReplicaCount": 0,
        "maxReplicaCount": trace.max_replicas,
        "triggers": [{
            "type": "aws-sqs-queue",
            "authenticationRef": {"name": AWS_SECRET},
            "metadata": {
                "queueURL": keda_queue_url(stack),
                "awsEndpoint": s.pod_aws_endpoint,
                "awsRegion": s.region,
                "queueLength": trace.concurrency.to_string(),
            },
        }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": lane.name},
        "spec": spec,
    }))
    .expect("scaled object");
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &keda_resource("ScaledObject"));
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("cannot create ScaledObject {}: {e}", lane.name));
}

/// Waits until every lane's scaler has read its queue once: the pool's status has a backlog,
/// the ScaledObject is Ready.
async fn wait_scalers_ready(env: &TestEnv, lanes: &[Lane]) {
    let scaled: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &keda_resource("ScaledObject"));
    for lane in lanes {
        until(
            &format!("{}'s scaler to read its queue", lane.name),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || async {
                match &lane.scaling {
                    Scaling::Qwp => match pool_status(&env.client, &env.ns, lane.name).await {
                        Some(s) if s.backlog.is_some() => Ok(()),
                        other => Err(format!("{other:?}")),
                    },
                    Scaling::Keda { .. } => {
                        let so = scaled.get(lane.name).await.map_err(|e| e.to_string())?;
                        let ready = so.data["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True");
                        if ready {
                            Ok(())
                        } else {
                            Err(format!("{}", so.data["status"]))
                        }
                    }
                }
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// Arrivals

/// A stretch of seconds in which jobs arrive.
#[derive(Clone, Copy, Debug)]
struct Burst {
    start: f64,
    end: f64,
    jobs: u64,
}

/// Jobs due at each tick (the simulator's fractional accumulator), and the bursts.
fn schedule(trace: &Trace) -> (Vec<u64>, Vec<Burst>) {
    let ticks = trace.arrival_seconds * 1000 / TICK.as_millis() as u64;
    let mut pending = 0.0_f64;
    let mut due = Vec::new();
    let mut bursts: Vec<Burst> = Vec::new();
    for i in 0..ticks {
        let t = i as f64 * TICK.as_secs_f64();
        pending += trace.rate_at(t) * TICK.as_secs_f64();
        let n = pending.floor() as u64;
        pending -= n as f64;
        due.push(n);
        if n > 0 {
            match bursts.last_mut() {
                Some(b) if t - b.end <= 1.0 => {
                    b.end = t;
                    b.jobs += n;
                }
                _ => bursts.push(Burst {
                    start: t,
                    end: t,
                    jobs: n,
                }),
            }
        }
    }
    (due, bursts)
}

fn jobs(n: u64) -> Vec<(JobMessage, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let filename = Filename::parse("order.json").expect("valid filename");
            (
                JobMessage::new(JobId::new(), filename),
                br#"{"order_id":"bench"}"#.to_vec(),
            )
        })
        .collect()
}

/// Sends the schedule to every stack at the same ticks; returns when every send is done, with
/// the seconds (since `started`) at which each stack's last job was on its queue.
async fn send_arrivals(stacks: &[Arc<TestStack>], due: &[u64], started: Instant) -> Vec<f64> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut every = tokio::time::interval_at(started.into(), TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for &n in due {
        every.tick().await;
        if n == 0 {
            continue;
        }
        for (i, stack) in stacks.iter().enumerate() {
            let (stack, batch) = (stack.clone(), jobs(n));
            tasks.spawn(async move {
                stack.submit(&batch).await;
                (i, started.elapsed().as_secs_f64())
            });
        }
    }
    let mut last = vec![0.0_f64; stacks.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, at) = done.expect("a submission task");
        last[i] = last[i].max(at);
    }
    last
}

// ---------------------------------------------------------------------------------------
// Sampling

/// One lane's second: queue, Deployment, and the pods that exist (starting, serving or
/// terminating: what costs).
#[derive(Clone, Copy, Debug)]
struct Tick {
    sample: Sample,
    pods: usize,
}

async fn sample_lane(client: &Client, ns: &str, stack: &TestStack, lane: &str, t: f64) -> Tick {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = ListParams::default().labels(&format!("{POOL_LABEL}={lane}"));
    let ((visible, in_flight), deployment, pod_list) = tokio::join!(
        stack.queue_depth(),
        deployments.get_opt(lane),
        pods.list(&selector),
    );
    let deployment = deployment.ok().flatten();
    let desired = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let ready = deployment
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
    Tick {
        sample: Sample {
            t,
            visible,
            in_flight,
            desired,
            ready,
        },
        pods: existing,
    }
}

fn spawn_sampler(
    env: &TestEnv,
    stacks: Vec<Arc<TestStack>>,
    names: Vec<&'static str>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Vec<Tick>>> {
    let (client, ns) = (env.client.clone(), env.ns.clone());
    tokio::spawn(async move {
        let mut ticks = vec![Vec::new(); stacks.len()];
        let mut every = tokio::time::interval_at(started.into(), Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => break,
            }
            let t = started.elapsed().as_secs_f64();
            let samples = futures::future::join_all(
                stacks
                    .iter()
                    .zip(&names)
                    .map(|(stack, name)| sample_lane(&client, &ns, stack, name, t)),
            )
            .await;
            for (lane, tick) in ticks.iter_mut().zip(samples) {
                lane.push(tick);
            }
        }
        ticks
    })
}

// ---------------------------------------------------------------------------------------
// The run

async fn run_trace(env: TestEnv, bench: Bench, trace: Trace) {
    let lanes = lanes(&bench, &trace);
    create_aws_secret(&env.client, &env.ns).await;
    let mut stacks = Vec::new();
    for lane in &lanes {
        let stack = TestStack::new(
            &format!("kb-{}", lane.name),
            TestStackOptions {
                visibility_timeout_seconds: VISIBILITY_TIMEOUT_SECONDS,
                max_receive_count: None,
            },
        )
        .await;
        stacks.push(Arc::new(stack));
    }
    if lanes
        .iter()
        .any(|l| matches!(l.scaling, Scaling::Keda { .. }))
    {
        create_trigger_auth(&env).await;
    }
    for (lane, stack) in lanes.iter().zip(&stacks) {
        match &lane.scaling {
            Scaling::Qwp => create_default_pool(&env, stack, lane, &trace).await,
            Scaling::Keda { spec, .. } => {
                create_keda_deployment(&env, stack, lane, &trace).await;
                create_scaled_object(&env, stack, lane, spec, &trace).await;
            }
        }
    }
    wait_scalers_ready(&env, &lanes).await;

    let (due, bursts) = schedule(&trace);
    let total: u64 = due.iter().sum();
    eprintln!(
        "[keda-bench] {}: {total} jobs to each of {} lanes ({}), bursts {:?}",
        trace.name,
        lanes.len(),
        lanes.iter().map(|l| l.name).collect::<Vec<_>>().join(", "),
        bursts
    );
    let started = Instant::now();
    let wall_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = spawn_sampler(
        &env,
        stacks.clone(),
        lanes.iter().map(|l| l.name).collect(),
        started,
        stop_rx,
    );
    let sent_at = send_arrivals(&stacks, &due, started).await;
    eprintln!(
        "[keda-bench] {}: arrivals sent by {:?} s",
        trace.name, sent_at
    );

    // Done when every lane has all results, an empty queue and no pod left.
    let tail = Duration::from_secs(900 + (total as f64 * trace.job_seconds / 10.0) as u64);
    until(
        "every lane drained and back at 0 pods",
        tail,
        Duration::from_secs(5),
        || async {
            let mut open = Vec::new();
            for (lane, stack) in lanes.iter().zip(&stacks) {
                let stored = result_objects(stack).await.len() as u64;
                let tick = sample_lane(&env.client, &env.ns, stack, lane.name, 0.0).await;
                let s = tick.sample;
                if stored < total || s.visible + s.in_flight > 0 || tick.pods > 0 || s.desired > 0
                {
                    open.push(format!(
                        "{}: results {stored}/{total}, visible {}, in flight {}, desired {}, pods {}",
                        lane.name, s.visible, s.in_flight, s.desired, tick.pods
                    ));
                }
            }
            if open.is_empty() {
                Ok(())
            } else {
                Err(open.join("; "))
            }
        },
    )
    .await;
    // One more sample with everything at rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send_replace(true);
    let ticks = sampler.await.expect("sampler");
    eprintln!(
        "[keda-bench] {}: all lanes back at 0 at {:.0} s",
        trace.name,
        started.elapsed().as_secs_f64()
    );

    let logs = env.logs.clone();
    let mut results = Vec::new();
    for ((lane, stack), ticks) in lanes.iter().zip(&stacks).zip(&ticks) {
        let objects = result_objects(stack).await;
        let last_result = objects.iter().map(|(_, m)| *m).fold(f64::NAN, f64::max);
        let shutdowns = scale_in(&logs, lane.name);
        results.push(measure(
            lane,
            &trace,
            &bursts,
            ticks,
            total,
            objects.len() as u64,
            last_result - wall_start,
            shutdowns,
        ));
    }
    let modelled: Vec<LaneResult> = lanes
        .iter()
        .map(|lane| modelled(lane, &trace, &bursts))
        .collect();
    write_outputs(&bench, &trace, &lanes, &ticks, &results, &modelled);
    for stack in &stacks {
        remove_stack(stack).await;
    }
}

// ---------------------------------------------------------------------------------------
// Measures

/// What the workers' logs say about scale-in for one lane.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct ScaleIn {
    /// Pods that received SIGTERM.
    pods_stopped: u64,
    /// Jobs a pod was running when it received SIGTERM (they finish in the drain, or go back).
    jobs_held_at_sigterm: u64,
    /// Jobs whose drain time ran out: aborted, handed back to the queue.
    jobs_handed_back: u64,
    /// Jobs started again from a redelivered message (receive count ≥ 2).
    redelivered: u64,
}

fn scale_in(logs: &LogCollector, lane: &str) -> ScaleIn {
    let prefix = format!("{lane}-");
    let mut running: HashMap<String, HashSet<String>> = HashMap::new();
    let mut stopped: HashSet<String> = HashSet::new();
    let mut out = ScaleIn::default();
    let mut redelivered = HashSet::new();
    for line in logs.lines() {
        if !line.pod.starts_with(&prefix) {
            continue;
        }
        let Some(json) = line.json() else { continue };
        let Some(message) = json.get("message").and_then(Value::as_str) else {
            continue;
        };
        let job = span_field(&json, "job_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let pod = running.entry(line.pod.clone()).or_default();
        match (message, job) {
            ("job started", Some(job)) => {
                if span_field(&json, "receive_count")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n >= 2)
                {
                    redelivered.insert(job.clone());
                }
                pod.insert(job);
            }
            (
                "job done"
                | "job failed; failed result stored"
                | "result already stored; acknowledging the redelivery without running"
                | "transient failure; returning the job to the queue",
                Some(job),
            ) => {
                pod.remove(&job);
            }
            ("received shutdown signal", _) if stopped.insert(line.pod.clone()) => {
                out.pods_stopped += 1;
                out.jobs_held_at_sigterm += pod.len() as u64;
            }
            ("handed unfinished jobs back to the queue", _) => {
                out.jobs_handed_back += json.get("unfinished").and_then(Value::as_u64).unwrap_or(0);
            }
            _ => {}
        }
    }
    out.redelivered = redelivered.len() as u64;
    out
}

#[derive(Clone, Debug, serde::Serialize)]
struct BurstResult {
    start_s: f64,
    jobs: u64,
    /// Burst start → first ready pod (0 when pods were already serving).
    first_ready_s: f64,
    /// Burst start → all `max_replicas` ready (NaN when never reached).
    max_ready_s: f64,
    /// Burst start → the queue seen empty (visible + in flight = 0).
    drain_s: f64,
    /// max(burst length + one job, jobs × job / (max × concurrency) + one job).
    ideal_drain_s: f64,
    peak_backlog: u64,
    peak_ready: i32,
}

#[derive(Clone, Debug, serde::Serialize)]
struct LaneResult {
    lane: String,
    settings: String,
    submitted: u64,
    results: u64,
    bursts: Vec<BurstResult>,
    /// First arrival → newest result object (S3 LastModified).
    drain_s: f64,
    pod_seconds: f64,
    /// jobs × job seconds / concurrency: a pod-second buys `concurrency` job-seconds.
    ideal_pod_seconds: f64,
    /// Last time the queue was seen empty → no pod left.
    back_to_zero_s: f64,
    peak_backlog: u64,
    peak_ready: i32,
    scale_in: ScaleIn,
}

fn first_at(ticks: &[Tick], from: f64, hit: impl Fn(&Tick) -> bool) -> f64 {
    ticks
        .iter()
        .find(|t| t.sample.t >= from && hit(t))
        .map_or(f64::NAN, |t| t.sample.t - from)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    lane: &Lane,
    trace: &Trace,
    bursts: &[Burst],
    ticks: &[Tick],
    submitted: u64,
    results: u64,
    drain_s: f64,
    scale_in: ScaleIn,
) -> LaneResult {
    let max = trace.max_replicas as i32;
    let capacity = f64::from(trace.max_replicas * trace.concurrency);
    let backlog = |t: &Tick| t.sample.visible + t.sample.in_flight;
    let burst_results = bursts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let until = bursts.get(i + 1).map_or(f64::INFINITY, |n| n.start);
            let window: Vec<&Tick> = ticks
                .iter()
                .filter(|t| t.sample.t >= b.start && t.sample.t < until)
                .collect();
            BurstResult {
                start_s: b.start,
                jobs: b.jobs,
                first_ready_s: first_at(ticks, b.start, |t| t.sample.ready > 0),
                max_ready_s: first_at(ticks, b.start, |t| t.sample.ready >= max),
                drain_s: first_at(ticks, b.end + 0.5, |t| backlog(t) == 0)
                    + (b.end + 0.5 - b.start),
                ideal_drain_s: (b.end - b.start + trace.job_seconds)
                    .max(b.jobs as f64 * trace.job_seconds / capacity + trace.job_seconds),
                peak_backlog: window.iter().map(|t| backlog(t)).max().unwrap_or(0),
                peak_ready: window.iter().map(|t| t.sample.ready).max().unwrap_or(0),
            }
        })
        .collect();
    let pod_seconds = ticks
        .windows(2)
        .map(|w| w[0].pods as f64 * (w[1].sample.t - w[0].sample.t))
        .sum();
    let last_end = bursts.last().map_or(0.0, |b| b.end);
    let empty_at = ticks
        .iter()
        .find(|t| t.sample.t > last_end && backlog(t) == 0)
        .map_or(f64::NAN, |t| t.sample.t);
    let gone_at = ticks
        .iter()
        .rev()
        .take_while(|t| t.pods == 0)
        .last()
        .map_or(f64::NAN, |t| t.sample.t);
    LaneResult {
        lane: lane.name.to_string(),
        settings: lane.settings.clone(),
        submitted,
        results,
        bursts: burst_results,
        drain_s,
        pod_seconds,
        ideal_pod_seconds: submitted as f64 * trace.job_seconds / f64::from(trace.concurrency),
        back_to_zero_s: gone_at - empty_at,
        peak_backlog: ticks.iter().map(backlog).max().unwrap_or(0),
        peak_ready: ticks.iter().map(|t| t.sample.ready).max().unwrap_or(0),
        scale_in,
    }
}

/// The same lane in the simulator (same trace, the lane's settings, 5 s pod start-up), measured
/// the same way; no logs there, so no scale-in counts.
fn modelled(lane: &Lane, trace: &Trace, bursts: &[Burst]) -> LaneResult {
    let mut scaler = lane.scaling.model(trace);
    let outcome = model::run(trace, scaler.as_mut(), ModelSettings::default());
    let ticks: Vec<Tick> = outcome
        .timeline
        .iter()
        .map(|s| Tick {
            sample: Sample {
                t: s.second as f64,
                visible: s.visible,
                in_flight: s.in_flight,
                desired: s.desired as i32,
                ready: s.ready as i32,
            },
            pods: s.ready as usize,
        })
        .collect();
    let submitted = outcome.jobs as u64;
    let mut result = measure(
        lane,
        trace,
        bursts,
        &ticks,
        submitted,
        submitted,
        outcome.drain_ms as f64 / 1000.0,
        ScaleIn::default(),
    );
    result.pod_seconds = outcome.pod_seconds;
    result.back_to_zero_s = outcome
        .back_to_zero_ms
        .map_or(f64::NAN, |ms| ms as f64 / 1000.0);
    result
}

// ---------------------------------------------------------------------------------------
// Report

fn per_burst(r: &LaneResult, value: impl Fn(&BurstResult) -> String) -> String {
    r.bursts.iter().map(value).collect::<Vec<_>>().join(" / ")
}

fn secs(v: f64) -> String {
    if v.is_nan() {
        "never".into()
    } else {
        format!("{v:.0} s")
    }
}

fn table(trace: &Trace, results: &[LaneResult]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {} | {} |",
        trace.name,
        results
            .iter()
            .map(|r| format!("`{}`", r.lane))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(t, "|---|{}", "---:|".repeat(results.len()));
    let mut row = |name: &str, value: &dyn Fn(&LaneResult) -> String| {
        let cells: Vec<String> = results.iter().map(value).collect();
        let _ = writeln!(t, "| {name} | {} |", cells.join(" | "));
    };
    let multi = results.first().is_some_and(|r| r.bursts.len() > 1);
    let each = if multi { " (per burst)" } else { "" };
    row("jobs sent / results stored", &|r| {
        format!("{} / {}", r.submitted, r.results)
    });
    row(
        &format!("first ready pod after the first arrival{each}"),
        &|r| per_burst(r, |b| secs(b.first_ready_s)),
    );
    row(
        &format!(
            "all {} pods ready after the first arrival{each}",
            trace.max_replicas
        ),
        &|r| per_burst(r, |b| secs(b.max_ready_s)),
    );
    row(
        &format!("queue empty after the first arrival{each}"),
        &|r| per_burst(r, |b| secs(b.drain_s)),
    );
    row(&format!("capacity bound for that{each}"), &|r| {
        per_burst(r, |b| secs(b.ideal_drain_s))
    });
    row("drain: first arrival → last result", &|r| secs(r.drain_s));
    row(&format!("peak backlog (visible + in flight){each}"), &|r| {
        per_burst(r, |b| b.peak_backlog.to_string())
    });
    row("peak ready pods", &|r| r.peak_ready.to_string());
    row("pod-seconds (bound: jobs × job / concurrency)", &|r| {
        format!(
            "{:.0} ({:.2} × {:.0})",
            r.pod_seconds,
            r.pod_seconds / r.ideal_pod_seconds,
            r.ideal_pod_seconds
        )
    });
    row("last empty queue → no pod left", &|r| {
        secs(r.back_to_zero_s)
    });
    row("pods stopped by scale-in", &|r| {
        r.scale_in.pods_stopped.to_string()
    });
    row("jobs interrupted by scale-in (running at SIGTERM)", &|r| {
        r.scale_in.jobs_held_at_sigterm.to_string()
    });
    row(
        "… of them aborted and handed back (drain ran out)",
        &|r| r.scale_in.jobs_handed_back.to_string(),
    );
    row(
        "redeliveries (jobs started with receive count ≥ 2)",
        &|r| r.scale_in.redelivered.to_string(),
    );
    t
}

fn write_outputs(
    bench: &Bench,
    trace: &Trace,
    lanes: &[Lane],
    ticks: &[Vec<Tick>],
    results: &[LaneResult],
    modelled: &[LaneResult],
) {
    std::fs::create_dir_all(&bench.out_dir).expect("create the output directory");
    let table = format!(
        "{}\nThe simulator on the same trace and settings (`qwp-simulator`, pod start-up 5 s; \
         back to zero counted from the last result; no scale-in counts):\n\n{}",
        table(trace, results),
        table(trace, modelled)
    );
    let mut notes = format!(
        "Trace `{}`: {}{}. Workers: `sleep` {} s per job, concurrency {}, 0–{} pods, queue \
         visibility timeout {VISIBILITY_TIMEOUT_SECONDS} s, drain 10 s.\n",
        trace.name,
        trace.description,
        if trace.name == "spiky" {
            format!(" (cut to {} bursts)", bench.spiky_bursts)
        } else {
            String::new()
        },
        trace.job_seconds,
        trace.concurrency,
        trace.max_replicas
    );
    for lane in lanes {
        let _ = writeln!(notes, "- `{}`: {}", lane.name, lane.settings);
    }
    println!("\n{table}\n{notes}");
    let base = bench.out_dir.join(trace.name);
    std::fs::write(base.with_extension("md"), format!("{table}\n{notes}"))
        .expect("write the table");
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&json!({"measured": results, "model": modelled}))
            .expect("results as JSON"),
    )
    .expect("write the results");

    // CSV: the suite's columns plus pods, one block of columns per lane, joined on the tick.
    let mut csv = String::from("lane,");
    csv.push_str(qwp_e2e::timeline::CSV_HEADER);
    csv.push_str(",pods\n");
    for (lane, ticks) in lanes.iter().zip(ticks) {
        let samples: Vec<Sample> = ticks.iter().map(|t| t.sample).collect();
        for (line, tick) in to_csv(&samples).lines().skip(1).zip(ticks) {
            let _ = writeln!(csv, "{},{line},{}", lane.name, tick.pods);
        }
    }
    std::fs::write(base.with_extension("csv"), csv).expect("write the timeline CSV");
    let samples: Vec<Vec<Sample>> = ticks
        .iter()
        .map(|t| t.iter().map(|t| t.sample).collect())
        .collect();
    let plot: Vec<PlotLane> = lanes
        .iter()
        .zip(&samples)
        .map(|(lane, samples)| PlotLane {
            name: lane.name,
            samples,
        })
        .collect();
    let title = format!(
        "{}: {} jobs per lane, {} s each, concurrency {}, max {} pods; qwp vs KEDA {}",
        trace.name,
        results.first().map_or(0, |r| r.submitted),
        trace.job_seconds,
        trace.concurrency,
        trace.max_replicas,
        std::env::var("KEDA_VERSION").unwrap_or_default()
    );
    render_lanes_png(&plot, &title, &base.with_extension("png")).expect("render the plot");
    eprintln!("[keda-bench] wrote {}.{{md,json,csv,png}}", base.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench() -> Bench {
        Bench {
            traces: vec![],
            spiky_bursts: 2,
            out_dir: PathBuf::new(),
            fast_polling_seconds: 5,
            fast_cooldown_seconds: 60,
        }
    }

    #[test]
    fn schedules_follow_the_simulator_traces() {
        let b = bench();
        let (due, bursts) = schedule(&b.trace("flash-sale").unwrap());
        assert_eq!(due.iter().sum::<u64>(), 2896);
        assert_eq!(bursts.len(), 1);
        let (due, bursts) = schedule(&b.trace("spiky").unwrap());
        assert_eq!(bursts.len(), 2, "{bursts:?}");
        assert_eq!(bursts[1].start, 600.0);
        assert_eq!(due.iter().sum::<u64>(), 600);
    }

    #[test]
    fn the_model_of_each_lane_is_measured_like_the_real_run() {
        let b = bench();
        let trace = b.trace("flash-sale").unwrap();
        let (_, bursts) = schedule(&trace);
        let lanes = lanes(&b, &trace);
        let results: Vec<LaneResult> = lanes
            .iter()
            .map(|lane| modelled(lane, &trace, &bursts))
            .collect();
        let (qwp, keda) = (&results[0].bursts[0], &results[1].bursts[0]);
        // qwp: 15 pods at its second poll (5 s) ready 5 s later; KEDA's HPA needs 3 steps.
        assert_eq!(qwp.max_ready_s, 10.0);
        assert!(keda.max_ready_s > 45.0, "{keda:?}");
        // Nobody beats the capacity bound.
        for r in &results {
            assert!(
                r.bursts[0].drain_s >= r.bursts[0].ideal_drain_s - 1.0,
                "{r:?}"
            );
            assert_eq!(r.results, 2896);
        }
    }
}
