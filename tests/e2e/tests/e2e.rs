//! The end-to-end suite on a real cluster (`make e2e`): the chart, the operator, the API
//! server and workers as pods, LocalStack as S3 and SQS. Each test runs in its own namespace
//! with its own queue and buckets; run them one at a time (`--test-threads=1`): they share
//! the operator, and test 5 restarts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use qwp_e2e::api_server;
use qwp_e2e::cmd;
use qwp_e2e::install::{OPERATOR_PODS, ensure_operator_installed, operator_lease_name};
use qwp_e2e::jobs::{assert_all_done, result_keys, submit_direct};
use qwp_e2e::logs::{handed_back_jobs, redelivered_jobs};
use qwp_e2e::pool::{PoolOptions, create_aws_secret, create_pool, pool_object};
use qwp_e2e::proxy::OutageProxy;
use qwp_e2e::removals::{Removal, RemovalWatch, is_ready};
use qwp_e2e::timeline::{Sample, render_png, to_csv};
use qwp_e2e::wait::{
    collect_until, condition, desired_replica_changes, first_matching, first_queue_reading,
    pool_status, ready_condition_changes, ready_replica_changes, replica_changes, replicas,
    template_image_changes, until,
};
use qwp_e2e::{Settings, TestEnv, with_temp_ns};
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_pool::contract::{WORKER_DRAIN_SECONDS, termination_grace_seconds};
use qwp_pool::crd::QueueWorkerPool;
use tokio::sync::watch;

const SECOND: Duration = Duration::from_secs(1);
const HALF_SECOND: Duration = Duration::from_millis(500);

async fn stack(prefix: &str, visibility_timeout_seconds: u32) -> TestStack {
    TestStack::new(
        prefix,
        TestStackOptions {
            visibility_timeout_seconds,
            max_receive_count: None,
        },
    )
    .await
}

/// Waits until the Deployment of `pool` has `spec.replicas == want` (and as many ready when
/// `ready` is set).
async fn wait_replicas(env: &TestEnv, pool: &str, want: i32, ready: bool, timeout: Duration) {
    until(
        &format!("{pool} at {want} replicas (ready: {ready})"),
        timeout,
        HALF_SECOND,
        || async {
            let (spec, ready_now) = replicas(&env.client, &env.ns, pool).await;
            if spec == want && (!ready || ready_now == want) {
                Ok(())
            } else {
                Err(format!("spec.replicas={spec} ready={ready_now}"))
            }
        },
    )
    .await
}

async fn wait_results(stack: &TestStack, count: usize, timeout: Duration) {
    until(
        &format!("{count} results in the output bucket"),
        timeout,
        SECOND,
        || async {
            let stored = result_keys(stack).await.len();
            if stored >= count {
                Ok(())
            } else {
                Err(format!("{stored} stored"))
            }
        },
    )
    .await
}

async fn wait_drained(stack: &TestStack, timeout: Duration) {
    until("the queue to drain", timeout, SECOND, || async {
        match stack.queue_depth().await {
            (0, 0) => Ok(()),
            (visible, in_flight) => Err(format!("visible={visible} in_flight={in_flight}")),
        }
    })
    .await
}

/// 1. The chart installs the operator, which becomes Ready; `kubectl get qwp` shows the
/// pool's backlog, desired and ready replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_helm_install_makes_the_operator_ready_and_kubectl_shows_the_pool() {
    ensure_operator_installed();
    with_temp_ns("t1_install", |env| async move {
        let s = Settings::get();
        let operator =
            qwp_e2e::wait::deployment(&env.client, &s.operator_namespace, &s.operator_deployment())
                .await
                .expect("the chart created the operator Deployment");
        // Every replica the chart asks for (a leader and its standbys) is Ready.
        let wanted = operator.spec.as_ref().and_then(|spec| spec.replicas);
        let status = operator.status.unwrap_or_default();
        assert!(
            wanted.is_some_and(|n| n >= 1),
            "operator Deployment asks for no replicas: {wanted:?}"
        );
        assert_eq!(
            status.ready_replicas, wanted,
            "operator not Ready: {status:?}"
        );

        // Jobs that outlast the test: 3 jobs, at most 2 pods of one slot each, give a stable
        // backlog of 3 (2 in flight + 1 visible), 2 desired and 2 ready.
        let stack = stack("e2e-install", 60).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("columns");
        options.max_replicas = 2;
        options.sleep_seconds = "600".into();
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        submit_direct(&stack, 3).await;
        wait_replicas(&env, "columns", 2, true, Duration::from_secs(120)).await;

        let table = until(
            "kubectl get qwp to show backlog 3, desired 2, ready 2",
            Duration::from_secs(60),
            SECOND,
            || async {
                let out = cmd::run_async(
                    "kubectl",
                    vec!["-n".into(), env.ns.clone(), "get".into(), "qwp".into()],
                )
                .await;
                let lines: Vec<Vec<String>> = out
                    .stdout
                    .lines()
                    .map(|l| l.split_whitespace().map(str::to_string).collect())
                    .collect();
                match lines.as_slice() {
                    [header, row]
                        if row.len() == header.len()
                            && row[2] == "3"
                            && row[3] == "2"
                            && row[4] == "2" =>
                    {
                        Ok((header.clone(), row.clone()))
                    }
                    _ => Err(format!("{}{}", out.stdout, out.stderr)),
                }
            },
        )
        .await;
        let (header, row) = table;
        assert_eq!(
            header,
            ["NAME", "QUEUE", "BACKLOG", "DESIRED", "READY", "AGE"]
        );
        assert_eq!(row[0], "columns");
        assert!(
            row[1].ends_with(&stack.config.sqs_req_queue_name),
            "queue column {}",
            row[1]
        );
        // The operator may write events (RBAC: events.k8s.io create/patch).
        let event = until(
            "a Scaled event on the pool",
            Duration::from_secs(30),
            SECOND,
            || async {
                let out = cmd::run_async(
                    "kubectl",
                    [
                        "-n",
                        &env.ns,
                        "get",
                        "events",
                        "--field-selector",
                        "reason=Scaled",
                        "-o",
                        "name",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
                .await;
                if out.ok && !out.stdout.trim().is_empty() {
                    Ok(out.stdout)
                } else {
                    Err(format!("{}{}", out.stdout, out.stderr))
                }
            },
        )
        .await;
        eprintln!(
            "[e2e] install: operator Ready, kubectl get qwp columns ok, events: {}",
            event.trim()
        );
    })
    .await;
}

/// 2. The API server refuses invalid pools with the CRD's messages; nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_invalid_pools_are_refused_with_readable_messages() {
    ensure_operator_installed();
    with_temp_ns("t2_invalid", |env| async move {
        let valid = serde_json::json!({
            "apiVersion": "queueworker.io/v1alpha1",
            "kind": "QueueWorkerPool",
            "metadata": {"name": "invalid"},
            "spec": {
                "queue": {"name": "jobs", "region": "us-east-1"},
                "minReplicas": 0,
                "maxReplicas": 3,
                "template": {"spec": {"containers": [{"name": "worker", "image": "qwp-worker:dev"}]}},
            },
        });
        let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut pool = valid.clone();
            f(&mut pool["spec"]);
            pool
        };
        let cases = [
            (
                "minReplicas above maxReplicas",
                mutate(&|s| {
                    s["minReplicas"] = 5.into();
                    s["maxReplicas"] = 2.into();
                }),
                "maxReplicas must be greater than or equal to minReplicas",
            ),
            (
                "concurrency 0",
                mutate(&|s| s["concurrency"] = 0.into()),
                "spec.concurrency in body should be greater than or equal to 1",
            ),
            (
                "a queue with neither url nor name",
                mutate(&|s| s["queue"] = serde_json::json!({"region": "us-east-1"})),
                "set exactly one of queue.url or queue.name",
            ),
            (
                "no queue at all",
                mutate(&|s| {
                    s.as_object_mut().unwrap().remove("queue");
                }),
                "spec.queue: Required value",
            ),
        ];
        for (case, pool, message) in cases {
            let out = cmd::run_with_stdin("kubectl", &["-n", &env.ns, "create", "-f", "-"], &pool.to_string());
            assert!(!out.ok, "{case}: the API server accepted the pool: {}", out.stdout);
            assert!(out.stderr.contains(message), "{case}: expected {message:?} in:\n{}", out.stderr);
            eprintln!("[e2e] {case}: refused: {}", out.stderr.trim());
        }
        let pools: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
        assert!(pools.list(&ListParams::default()).await.unwrap().items.is_empty(), "an invalid pool was stored");
        // And the valid one is accepted, so the refusals above were about the changes.
        let out = cmd::run_with_stdin("kubectl", &["-n", &env.ns, "create", "-f", "-"], &valid.to_string());
        assert!(out.ok, "the valid pool was refused: {}", out.stderr);
    })
    .await;
}

/// Samples queue depth (SQS), desired (pool status) and ready (Deployment) every second;
/// once `stop` is set, ends with the first sample that shows the pool at rest (nothing
/// queued, nothing desired or ready), so the timeline ends where the burst did.
fn spawn_sampler(
    client: Client,
    ns: String,
    pool: String,
    stack: Arc<TestStack>,
    started: Instant,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples: Vec<Sample> = Vec::new();
        let mut tick = tokio::time::interval(SECOND);
        loop {
            let at_rest = samples
                .last()
                .is_some_and(|s| (s.visible, s.in_flight, s.desired, s.ready) == (0, 0, 0, 0));
            if *stop.borrow() && at_rest {
                break;
            }
            tick.tick().await;
            let (visible, in_flight) = stack.queue_depth().await;
            let desired = pool_status(&client, &ns, &pool)
                .await
                .map(|s| s.desired_replicas)
                .unwrap_or(0);
            let (_, ready) = replicas(&client, &ns, &pool).await;
            samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                visible,
                in_flight,
                desired,
                ready,
            });
        }
        samples
    })
}

/// 3. Burst: 500 jobs through the API server's Service, `sleep` 1 s, concurrency 5, at most
/// 8 pods. Pods go 0 → 8, every result is stored and correct, the queue drains and the pool
/// returns to 0 within the scale-down window plus a poll. The timeline goes to
/// out/burst-timeline.{csv,png}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_burst_of_500_jobs_scales_out_completes_and_scales_back() {
    ensure_operator_installed();
    with_temp_ns("t3_burst", |env| async move {
        const JOBS: usize = 500;
        let stack = Arc::new(stack("e2e-burst", 30).await);
        create_aws_secret(&env.client, &env.ns).await;
        let api = api_server::install(&env, &stack).await;
        eprintln!("[e2e] API server reached via {} at {}", api.via, api.base_url);

        let mut options = PoolOptions::new("burst");
        options.max_replicas = 8;
        options.concurrency = 5;
        options.sleep_seconds = "1".into();
        options.scale_down_window_seconds = 20;
        options.poll_interval_seconds = 2;
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        first_queue_reading(&env.client, &env.ns, "burst").await;

        let started = Instant::now();
        let (stop_tx, stop_rx) = watch::channel(false);
        // The assertions read every value desired and ready take (watches); the timeline's
        // samples are for the plot.
        let desired_seen = collect_until(desired_replica_changes(&env.client, &env.ns, "burst"), stop_rx.clone());
        let ready_seen = collect_until(ready_replica_changes(&env.client, &env.ns, "burst"), stop_rx.clone());
        let sampler = spawn_sampler(env.client.clone(), env.ns.clone(), "burst".into(), stack.clone(), started, stop_rx);

        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let submitted: Vec<Result<qwp_jobs::JobId, String>> = futures::stream::iter(0..JOBS)
            .map(|i| {
                let (http, api) = (&http, &api);
                async move { api.submit(http, &format!("burst-{i}.txt"), format!("burst job {i}").into_bytes()).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let submit_seconds = started.elapsed().as_secs_f64();
        let errors: Vec<&String> = submitted.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(errors.is_empty(), "{} of {JOBS} submissions failed, first: {}", errors.len(), errors[0]);
        let ids: Vec<qwp_jobs::JobId> = submitted.into_iter().map(Result::unwrap).collect();

        wait_results(&stack, JOBS, Duration::from_secs(360)).await;
        let results_seconds = started.elapsed().as_secs_f64();
        wait_drained(&stack, Duration::from_secs(60)).await;
        let drained_at = Instant::now();
        let drained_seconds = started.elapsed().as_secs_f64();
        until("desired replicas back at the minimum (0)", Duration::from_secs(120), HALF_SECOND, || async {
            match pool_status(&env.client, &env.ns, "burst").await {
                Some(s) if s.desired_replicas == 0 => Ok(()),
                other => Err(format!("{:?}", other.map(|s| (s.desired_replicas, s.backlog)))),
            }
        })
        .await;
        let scale_down_seconds = drained_at.elapsed().as_secs_f64();
        wait_replicas(&env, "burst", 0, false, Duration::from_secs(30)).await;
        stop_tx.send_replace(true);
        let samples = tokio::time::timeout(Duration::from_secs(30), sampler)
            .await
            .expect("the sampler saw the pool at rest")
            .expect("sampler");

        let desired_seen = desired_seen.await.expect("desired watch");
        let ready_seen = ready_seen.await.expect("ready watch");

        assert_all_done(&stack, &ids).await;
        let peak_desired = desired_seen.iter().copied().max().unwrap_or(0);
        let peak_ready = ready_seen.iter().copied().max().unwrap_or(0);
        assert_eq!(desired_seen.first(), Some(&0), "the pool did not start at 0: {desired_seen:?}");
        assert_eq!(peak_desired, 8, "500 jobs at 5 per pod want the maximum, 8 pods: {desired_seen:?}");
        assert!(peak_ready >= 2, "pods never went past {peak_ready} ready");
        // The window counts from the first poll that sees the empty queue (≤ one poll after
        // it drained); one more poll for the reconcile that applies it.
        let bound = f64::from(options.scale_down_window_seconds + 2 * options.poll_interval_seconds);
        assert!(
            scale_down_seconds <= bound,
            "back at the minimum {scale_down_seconds:.1} s after the queue drained; expected within {bound} s"
        );

        let out = Settings::get().out_dir.clone();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("burst-timeline.csv"), to_csv(&samples)).unwrap();
        render_png(&samples, "qwp burst: 500 jobs, sleep 1 s, concurrency 5, max 8 pods", &out.join("burst-timeline.png"))
            .expect("render the timeline PNG");
        let first_ready = samples.iter().find(|s| s.ready > 0).map(|s| s.t).unwrap_or(f64::NAN);
        let first_full = samples.iter().find(|s| s.ready == 8).map(|s| s.t).unwrap_or(f64::NAN);
        eprintln!(
            "[e2e] burst: submitted {JOBS} in {submit_seconds:.1} s via {}; first pod ready at {first_ready:.0} s, \
             8 ready at {first_full:.0} s; all results at {results_seconds:.1} s; drained at {drained_seconds:.1} s; \
             desired back to 0 {scale_down_seconds:.1} s after draining (window {} s, poll {} s); timeline in {}",
            api.via,
            options.scale_down_window_seconds,
            options.poll_interval_seconds,
            out.join("burst-timeline.csv").display()
        );
    })
    .await;
}

/// 4. Scale-down safety: jobs of 2–20 s on single-slot pods, scale-down without a
/// stabilization window, so the pool shrinks while some pods are still busy. No job is lost;
/// the pods removed were the idle ones (deletion cost); interruptions and redeliveries are
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_scale_down_loses_no_job_and_removes_idle_pods_first() {
    ensure_operator_installed();
    with_temp_ns("t4_scale_down", |env| async move {
        const JOBS: usize = 24;
        let stack = stack("e2e-shrink", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("shrink");
        options.max_replicas = 6;
        options.concurrency = 1;
        options.sleep_seconds = "2-20".into();
        options.scale_down_window_seconds = 0;
        // A short drain: a busy pod that is removed hands its job back instead of finishing
        // it, so removing busy pods would show up as interruptions.
        options.drain_seconds = 2;
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        let removal_watch = RemovalWatch::start(&env.client, &env.ns, "shrink").await;

        let ids = submit_direct(&stack, JOBS).await;
        wait_results(&stack, JOBS, Duration::from_secs(300)).await;
        // One budget: the pool's drainSeconds is the workers' drain, plus the release margin
        // the pods' grace period.
        let shrink = qwp_e2e::wait::deployment(&env.client, &env.ns, "shrink").await.expect("the pool's Deployment");
        let pod_spec = shrink.spec.and_then(|s| s.template.spec).expect("a pod template");
        assert_eq!(pod_spec.termination_grace_period_seconds, Some(termination_grace_seconds(2)));
        let drain: Vec<Option<String>> = pod_spec.containers[0]
            .env
            .iter()
            .flatten()
            .filter(|var| var.name == WORKER_DRAIN_SECONDS)
            .map(|var| var.value.clone())
            .collect();
        assert_eq!(drain, [Some("2".to_string())]);
        wait_drained(&stack, Duration::from_secs(60)).await;
        wait_replicas(&env, "shrink", 0, false, Duration::from_secs(60)).await;
        // Every pod gone, each removal seen; then every line those pods logged read, so the
        // counts below come from complete logs.
        let removals = removal_watch.finish(Duration::from_secs(60)).await;
        let ran: Vec<String> = removals.iter().filter(|r| r.ran).map(|r| r.pod.clone()).collect();
        env.logs.wait_complete(&ran, Duration::from_secs(30)).await;

        assert_all_done(&stack, &ids).await;
        let interrupted = handed_back_jobs(&env.logs);
        let redelivered = redelivered_jobs(&env.logs);
        let busy_removed_while_idle_kept: Vec<&Removal> = removals
            .iter()
            .filter(|r| r.ready && r.lowest_kept_cost.is_some_and(|kept| r.cost > kept))
            .collect();
        let shrinking: Vec<&Removal> = removals.iter().filter(|r| r.lowest_kept_cost.is_some()).collect();
        eprintln!(
            "[e2e] scale-down: {JOBS} jobs, all stored; {} pods removed ({} while others kept running; the logs \
             of all {} that ran read to their end), {} jobs interrupted and handed back, {} redelivered; removed \
             (pod: its cost / lowest cost kept): {}",
            removals.len(),
            shrinking.len(),
            ran.len(),
            interrupted,
            redelivered.len(),
            removals
                .iter()
                .map(|r| format!("{}: {} / {:?}", r.pod, r.cost, r.lowest_kept_cost))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(!shrinking.is_empty(), "the pool never shrank while pods were still running; the test proved nothing");
        assert!(
            busy_removed_while_idle_kept.is_empty(),
            "busy pods were removed while idle ones were kept: {busy_removed_while_idle_kept:?}"
        );
        assert!(
            redelivered.len() as u64 <= interrupted,
            "jobs were redelivered without being handed back ({} > {interrupted}): a pod lost them",
            redelivered.len()
        );
    })
    .await;
}

/// 5a. A worker killed without grace mid-job: its job reappears after the visibility timeout
/// and completes on the replacement pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5a_a_killed_workers_job_is_redelivered_and_completes() {
    ensure_operator_installed();
    with_temp_ns("t5a_kill", |env| async move {
        let stack = stack("e2e-kill", 12).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("kill");
        options.min_replicas = 1;
        options.max_replicas = 1;
        options.sleep_seconds = "8".into();
        options.visibility_timeout_seconds = 12;
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        wait_replicas(&env, "kill", 1, true, Duration::from_secs(90)).await;

        let ids = submit_direct(&stack, 1).await;
        let job = ids[0].to_string();
        let victim = until("the job to start on a worker", Duration::from_secs(60), HALF_SECOND, || async {
            env.logs
                .with_message("job started")
                .into_iter()
                .find(|(_, json)| qwp_e2e::logs::span_field(json, "job_id").and_then(|v| v.as_str()) == Some(job.as_str()))
                .map(|(pod, _)| pod)
                .ok_or_else(|| "not started".to_string())
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
        let killed_at = Instant::now();
        pods.delete(&victim, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
            .await
            .expect("kill the busy worker");

        wait_results(&stack, 1, Duration::from_secs(120)).await;
        let completed_after = killed_at.elapsed().as_secs_f64();
        assert_all_done(&stack, &ids).await;
        let redelivered = redelivered_jobs(&env.logs);
        assert!(redelivered.contains(&job), "the job completed without a redelivery: was the pod really killed mid-job?");
        // The worker logs "job done" once the result is stored: its line may still be on its way.
        let finisher = until("the 'job done' line of the job", Duration::from_secs(30), HALF_SECOND, || async {
            env.logs
                .with_message("job done")
                .into_iter()
                .find(|(_, json)| qwp_e2e::logs::span_field(json, "job_id").and_then(|v| v.as_str()) == Some(job.as_str()))
                .map(|(pod, _)| pod)
                .ok_or_else(|| "no line yet".to_string())
        })
        .await;
        assert_ne!(finisher, victim, "the killed pod cannot have finished the job");
        eprintln!(
            "[e2e] kill: pod {victim} killed mid-job; {finisher} completed it {completed_after:.1} s later \
             (visibility timeout {} s, sleep {} s)",
            options.visibility_timeout_seconds, options.sleep_seconds
        );
    })
    .await;
}

/// 5b. The operator restarted mid-burst: scaling resumes from the running replicas, without
/// scaling down and up again (no thrashing), and the burst completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5b_operator_restart_mid_burst_resumes_without_thrashing() {
    ensure_operator_installed();
    with_temp_ns("t5b_operator_restart", |env| async move {
        const JOBS: usize = 300;
        let s = Settings::get();
        let stack = Arc::new(stack("e2e-restart", 30).await);
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("restart");
        options.max_replicas = 6;
        options.concurrency = 2;
        options.sleep_seconds = "1-2".into();
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;

        let started = Instant::now();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every change of the Deployment's replicas (a watch stream), each with the visible
        // messages of the last queue reading before it (SQS can only be read, every 500 ms).
        let (visible_tx, visible) = watch::channel(stack.queue_depth().await.0);
        let queue_reader = {
            let (stack, mut stop) = (stack.clone(), stop_rx.clone());
            tokio::spawn(async move {
                while !*stop.borrow() {
                    visible_tx.send_replace(stack.queue_depth().await.0);
                    tokio::select! {
                        _ = tokio::time::sleep(HALF_SECOND) => {}
                        _ = stop.changed() => {}
                    }
                }
            })
        };
        let recorder = collect_until(
            replica_changes(&env.client, &env.ns, "restart")
                .map(move |spec| (started.elapsed().as_secs_f64(), spec, *visible.borrow())),
            stop_rx,
        );
        let ids = submit_direct(&stack, JOBS).await;
        wait_replicas(&env, "restart", 6, false, Duration::from_secs(90)).await;

        let operator_pods: Api<Pod> = Api::namespaced(env.client.clone(), &s.operator_namespace);
        let selector = OPERATOR_PODS;
        // The replica that acts: the Lease's holder (a graceful delete hands over at once).
        let old = operator_leader(&env.client).await.1.expect("an operator leads");
        let restarted_at = started.elapsed().as_secs_f64();
        operator_pods.delete(&old, &DeleteParams::default()).await.expect("delete the operator pod");
        until("a new operator pod Ready", Duration::from_secs(120), HALF_SECOND, || async {
            let list = operator_pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|p| p.name_any() != old && is_ready(p))
                .map(|_| ())
                .ok_or_else(|| format!("{:?}", list.items.iter().map(|p| (p.name_any(), is_ready(p))).collect::<Vec<_>>()))
        })
        .await;
        let ready_at = started.elapsed().as_secs_f64();

        wait_results(&stack, JOBS, Duration::from_secs(300)).await;
        wait_drained(&stack, Duration::from_secs(60)).await;
        // Scaling resumed: the new operator brings the pool back to 0 after the window.
        wait_replicas(&env, "restart", 0, false, Duration::from_secs(90)).await;
        stop_tx.send_replace(true);
        let series = recorder.await.unwrap();
        queue_reader.await.unwrap();
        assert_all_done(&stack, &ids).await;

        let changes: Vec<(f64, i32)> = series.iter().map(|&(t, r, _)| (t, r)).collect();
        // Up, then down: once replicas fall they never rise again during the burst.
        let first_fall = changes.windows(2).position(|w| w[1].1 < w[0].1);
        if let Some(fall) = first_fall {
            let rises_after: Vec<_> = changes[fall + 1..].windows(2).filter(|w| w[1].1 > w[0].1).collect();
            assert!(rises_after.is_empty(), "replicas went down and up again (thrashing): {changes:?}");
        }
        let fell_with_backlog: Vec<_> = series
            .windows(2)
            .filter(|w| w[1].1 < w[0].1 && w[1].2 > 0 && w[1].0 > restarted_at)
            .collect();
        assert!(fell_with_backlog.is_empty(), "scaled down while messages were waiting after the restart: {fell_with_backlog:?}");
        eprintln!(
            "[e2e] operator restart at {restarted_at:.1} s, new operator Ready at {ready_at:.1} s; replica changes \
             (t, replicas): {changes:?}"
        );
    })
    .await;
}

/// 5c. LocalStack unreachable for a while (the pool's endpoint is a proxy the test switches
/// off): the pool holds its replicas with QueueReachable=False, then recovers and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5c_queue_outage_holds_replicas_then_recovers() {
    ensure_operator_installed();
    with_temp_ns("t5c_outage", |env| async move {
        let s = Settings::get();
        assert!(!s.host_addr.is_empty(), "set E2E_HOST_ADDR (or QWP_HOST_ADDR): the address pods reach this host at");
        let target: SocketAddr = std::env::var("AWS_ENDPOINT_URL")
            .unwrap_or_else(|_| qwp_jobs::testing::DEFAULT_ENDPOINT.into())
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("AWS_ENDPOINT_URL is http://<ip>:<port> for the outage proxy");
        let proxy = OutageProxy::start(target).await;
        let stack = stack("e2e-outage", 20).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("outage");
        options.max_replicas = 3;
        options.sleep_seconds = "15".into();
        options.visibility_timeout_seconds = 20;
        options.endpoint = Some(format!("http://{}:{}", s.host_addr, proxy.port));
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        let ids = submit_direct(&stack, 3).await;
        wait_replicas(&env, "outage", 3, true, Duration::from_secs(90)).await;

        proxy.set_up(false);
        let down_at = Instant::now();
        until("QueueReachable=False", Duration::from_secs(60), HALF_SECOND, || async {
            let status = pool_status(&env.client, &env.ns, "outage").await.unwrap_or_default();
            match condition(&status, "QueueReachable").as_deref() {
                Some("False") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let detected_after = down_at.elapsed().as_secs_f64();
        // Hold: for five polls with the queue unreadable, every replica count the Deployment
        // has (watched, so none is missed) is 3.
        let mut held = Vec::new();
        let changes = replica_changes(&env.client, &env.ns, "outage");
        let _ = tokio::time::timeout(Duration::from_secs(10), changes.for_each(|spec| {
            held.push(spec);
            futures::future::ready(())
        }))
        .await;
        assert_eq!(held, [3], "the pool changed its replicas while the queue was unreadable");
        proxy.set_up(true);
        let up_at = Instant::now();
        until("QueueReachable=True again", Duration::from_secs(60), HALF_SECOND, || async {
            let status = pool_status(&env.client, &env.ns, "outage").await.unwrap_or_default();
            match condition(&status, "QueueReachable").as_deref() {
                Some("True") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let recovered_after = up_at.elapsed().as_secs_f64();
        wait_results(&stack, 3, Duration::from_secs(180)).await;
        assert_all_done(&stack, &ids).await;
        wait_replicas(&env, "outage", 0, false, Duration::from_secs(120)).await;
        eprintln!(
            "[e2e] outage: QueueReachable=False {detected_after:.1} s after the cut, replicas held at 3 for 10 s, \
             True {recovered_after:.1} s after the restore; all jobs completed, pool back to 0"
        );
    })
    .await;
}

/// 6. Deleting the pool removes its Deployment (owner reference, garbage collector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_deleting_the_pool_removes_its_deployment() {
    ensure_operator_installed();
    with_temp_ns("t6_delete", |env| async move {
        let stack = stack("e2e-delete", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("doomed");
        options.min_replicas = 1;
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        wait_replicas(&env, "doomed", 1, true, Duration::from_secs(90)).await;

        let pools: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
        pools
            .delete("doomed", &DeleteParams::default())
            .await
            .expect("delete the pool");
        until(
            "the Deployment to be gone",
            Duration::from_secs(60),
            HALF_SECOND,
            || async {
                match qwp_e2e::wait::deployment(&env.client, &env.ns, "doomed").await {
                    None => Ok(()),
                    Some(d) => Err(format!(
                        "still there, deletionTimestamp {:?}",
                        d.metadata.deletion_timestamp
                    )),
                }
            },
        )
        .await;
        until(
            "the worker pods to be gone",
            Duration::from_secs(60),
            HALF_SECOND,
            || async {
                let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
                let left = pods
                    .list(&ListParams::default().labels("queueworker.io/pool=doomed"))
                    .await
                    .map_err(|e| e.to_string())?;
                if left.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} pods left", left.items.len()))
                }
            },
        )
        .await;
    })
    .await;
}

/// The chart lints clean and every template, with all options on, passes a server-side
/// dry run against the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t0_chart_lints_and_renders_objects_the_cluster_accepts() {
    ensure_operator_installed();
    let s = Settings::get();
    let chart = s.chart_dir().to_string_lossy().into_owned();
    let lint = cmd::run("helm", &["lint", "--strict", &chart]);
    assert!(lint.ok, "helm lint failed:\n{}{}", lint.stdout, lint.stderr);
    // Every option but monitoring.enabled, whose PodMonitors need the Prometheus Operator's CRDs
    // (tests/chart.rs checks those renders without a cluster).
    let everything = "apiServer.enabled=true,apiServer.replicas=2,samplePool.enabled=true,\
                      aws.endpoint=http://localstack:4566,aws.credentials.create=true,\
                      aws.credentials.accessKeyId=test,aws.credentials.secretAccessKey=test,\
                      grafanaDashboard.enabled=true,networkPolicy.enabled=true";
    let lint = cmd::run("helm", &["lint", "--strict", &chart, "--set", everything]);
    assert!(
        lint.ok,
        "helm lint with every option failed:\n{}{}",
        lint.stdout, lint.stderr
    );
    for (values, namespace) in [
        (everything, "default"),
        ("operator.watchNamespace=default", "default"),
    ] {
        let rendered = cmd::must(
            "helm",
            &[
                "template",
                "dry",
                &chart,
                "--namespace",
                namespace,
                "--set",
                values,
            ],
        );
        let applied = cmd::run_with_stdin(
            "kubectl",
            &["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
            &rendered,
        );
        assert!(
            applied.ok,
            "server-side dry run of the chart ({values}) failed:\n{}{}",
            applied.stdout, applied.stderr
        );
    }
}

/// 7. The chart's own API server and sample pool, as a user would install them, answer the
/// seed's `POST /` with the checksum result: the pool wakes from zero, a worker processes the
/// upload and the API server returns the result while the client waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_chart_api_server_and_sample_pool_answer_the_seed_request() {
    ensure_operator_installed();
    with_temp_ns("t7_sample", |env| async move {
        let stack = stack("e2e-sample", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let api = api_server::install_with(
            &env,
            &stack,
            &[
                "samplePool.enabled=true",
                "samplePool.processor=checksum",
                "samplePool.pollIntervalSeconds=2",
            ],
        )
        .await;
        let body = b"hello from the e2e suite\n".to_vec();
        let form = reqwest::multipart::Form::new().part(
            "inputFile",
            reqwest::multipart::Part::bytes(body.clone()).file_name("hello.txt"),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let response = http
            .post(format!("{}/", api.base_url))
            .multipart(form)
            .send()
            .await
            .expect("POST / to the chart's API server");
        let status = response.status();
        let answer: serde_json::Value = response.json().await.expect("a JSON answer");
        assert_eq!(status, 200, "no result within MAX_WAIT_SECONDS: {answer}");
        assert_eq!(answer["status"], "done", "{answer}");
        assert_eq!(answer["result"]["bytes"], body.len(), "{answer}");
        let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body));
        assert_eq!(answer["result"]["sha256"], sha256, "{answer}");
        let status = pool_status(&env.client, &env.ns, "qwp-sample")
            .await
            .expect("the sample pool has a status");
        assert!(
            status.last_scale_time.is_some(),
            "the sample pool never scaled: {status:?}"
        );
        // The Service carries the public port only: the admin routes are not behind it.
        for path in ["/metrics", "/readyz"] {
            let response = http
                .get(format!("{}{path}", api.base_url))
                .send()
                .await
                .expect("GET through the API server's Service");
            assert_eq!(
                response.status(),
                404,
                "{path} is reachable through the public Service"
            );
        }
        eprintln!("[e2e] sample: POST / answered {answer}");
    })
    .await;
}

/// Photos of one person of dlib's johns set (`make face-fetch`), sorted.
fn johns_photos(person: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/face/photos/johns")
        .join(person);
    let mut photos: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (make face-fetch)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos
}

/// 8. The seed system's own workload: a pool with the face processor (the worker image
/// carries the models) names the person in a photo sent to the chart's API server, from a
/// gallery under `gallery/` in the input bucket. Also prints the upload→result latency
/// (docs/benchmarks.md compares it with the seed's ~0.96 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8_face_pool_names_the_person_in_a_posted_photo() {
    ensure_operator_installed();
    with_temp_ns("t8_face", |env| async move {
        let stack = stack("e2e-face", 60).await;
        for person in ["John_Salley", "John_Savage"] {
            for photo in &johns_photos(person)[..2] {
                let key = format!(
                    "gallery/{}/{}",
                    person.replace('_', " "),
                    photo.file_name().unwrap().to_string_lossy()
                );
                stack
                    .clients
                    .s3
                    .put_object()
                    .bucket(&stack.config.s3_in_bucket)
                    .key(key)
                    .body(std::fs::read(photo).unwrap().into())
                    .send()
                    .await
                    .expect("upload a gallery photo");
            }
        }
        create_aws_secret(&env.client, &env.ns).await;
        let api = api_server::install_with(
            &env,
            &stack,
            &[
                "samplePool.enabled=true",
                "samplePool.processor=face",
                "samplePool.pollIntervalSeconds=2",
                "samplePool.resources.limits.memory=512Mi",
                "apiServer.maxWaitSeconds=60",
            ],
        )
        .await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let post = |name: &'static str, photo: Vec<u8>| {
            let http = http.clone();
            let url = format!("{}/", api.base_url);
            async move {
                let form = reqwest::multipart::Form::new().part(
                    "inputFile",
                    reqwest::multipart::Part::bytes(photo).file_name(name),
                );
                let started = Instant::now();
                let response = http
                    .post(url)
                    .multipart(form)
                    .send()
                    .await
                    .expect("POST / to the chart's API server");
                let status = response.status();
                let answer: serde_json::Value = response.json().await.expect("a JSON answer");
                (status, answer, started.elapsed())
            }
        };
        // From zero replicas: the pool wakes, the worker loads the models and the gallery.
        let photo = std::fs::read(&johns_photos("John_Salley")[6]).unwrap();
        let (status, answer, cold) = post("salley.jpg", photo).await;
        assert_eq!(status, 200, "no result within MAX_WAIT_SECONDS: {answer}");
        assert_eq!(answer["status"], "done", "{answer}");
        assert_eq!(answer["result"], "John Salley", "{answer}");
        // Warm: one worker up, sequential requests as the seed's latency test sent them.
        let mut warm = Vec::new();
        for (i, photo) in johns_photos("John_Savage")[2..7].iter().enumerate() {
            let (status, answer, took) = post("savage.jpg", std::fs::read(photo).unwrap()).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["result"], "John Savage", "photo {i}: {answer}");
            warm.push(took);
        }
        warm.sort();
        eprintln!(
            "[e2e] face: cold (from zero replicas) {:.2} s; warm upload→result median {:.3} s, max {:.3} s over {} photos",
            cold.as_secs_f64(),
            warm[warm.len() / 2].as_secs_f64(),
            warm[warm.len() - 1].as_secs_f64(),
            warm.len()
        );
    })
    .await;
}

/// The operator pods and the holder of their Lease.
async fn operator_leader(client: &Client) -> (Vec<Pod>, Option<String>) {
    let s = Settings::get();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &s.operator_namespace);
    let selector = OPERATOR_PODS;
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &s.operator_namespace);
    let holder = leases
        .get_opt(&operator_lease_name())
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity);
    (list.items, holder)
}

/// 9. Leader election: two operator replicas, one leads. The leader is killed (no grace)
/// mid-burst: the standby takes the Lease, the burst drains, and the pool is never scaled by
/// two operators (its Scaled events come from one replica, then the other, never interleaved;
/// replicas never go down and up again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_killing_the_leader_mid_burst_hands_over_to_the_standby() {
    ensure_operator_installed();
    with_temp_ns("t9_leader_failover", |env| async move {
        const JOBS: usize = 300;
        let s = Settings::get();
        let (pods, holder) = operator_leader(&env.client).await;
        let ready: Vec<String> = pods.iter().filter(|p| is_ready(p)).map(|p| p.name_any()).collect();
        assert!(ready.len() >= 2, "the chart runs two operator replicas, both Ready: {ready:?}");
        let leader = holder.expect("one replica holds the Lease");
        assert!(ready.contains(&leader), "the Lease's holder {leader} is an operator pod: {ready:?}");

        let stack = stack("e2e-failover", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("failover");
        options.max_replicas = 6;
        options.concurrency = 2;
        options.sleep_seconds = "1-2".into();
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        let started = Instant::now();
        let (stop_tx, stop_rx) = watch::channel(false);
        let recorder = collect_until(
            replica_changes(&env.client, &env.ns, "failover").map(move |r| (started.elapsed().as_secs_f64(), r)),
            stop_rx,
        );
        let ids = submit_direct(&stack, JOBS).await;
        wait_replicas(&env, "failover", 6, false, Duration::from_secs(90)).await;

        let operator_pods: Api<Pod> = Api::namespaced(env.client.clone(), &s.operator_namespace);
        let killed_at = Instant::now();
        operator_pods
            .delete(&leader, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
            .await
            .expect("kill the leader");
        let leases: Api<Lease> = Api::namespaced(env.client.clone(), &s.operator_namespace);
        let lease_holders = kube::runtime::watcher(
            leases,
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={}", operator_lease_name())),
        )
        .default_backoff()
        .applied_objects()
        .filter_map(|l| futures::future::ready(l.ok()))
        .map(|l| l.spec.and_then(|s| s.holder_identity));
        let new_leader = first_matching("a new Lease holder", Duration::from_secs(60), lease_holders, |h| {
            h.as_ref().is_some_and(|h| *h != leader)
        })
        .await
        .unwrap();
        let takeover = killed_at.elapsed();

        wait_results(&stack, JOBS, Duration::from_secs(300)).await;
        wait_drained(&stack, Duration::from_secs(60)).await;
        wait_replicas(&env, "failover", 0, false, Duration::from_secs(90)).await;
        stop_tx.send_replace(true);
        let changes = recorder.await.unwrap();
        assert_all_done(&stack, &ids).await;

        let first_fall = changes.windows(2).position(|w| w[1].1 < w[0].1);
        if let Some(fall) = first_fall {
            let rises: Vec<_> = changes[fall + 1..].windows(2).filter(|w| w[1].1 > w[0].1).collect();
            assert!(rises.is_empty(), "replicas went down and up again: {changes:?}");
        }
        // Who scaled: the Scaled events' reporting instances in time order change at most once.
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &env.ns);
        let mut scaled: Vec<(Option<k8s_openapi::jiff::Timestamp>, String)> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Scaled"))
            .map(|e| {
                (e.event_time.map(|t| t.0), e.reporting_instance.unwrap_or_default())
            })
            .collect();
        scaled.sort();
        let writers: Vec<&str> = scaled.iter().map(|(_, who)| who.as_str()).collect();
        let switches = writers.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "two operators scaled the pool in turn: {scaled:?}");
        assert!(
            writers.last() == Some(&new_leader.as_str()),
            "the last scale came from the new leader {new_leader}: {scaled:?}"
        );
        eprintln!(
            "[e2e] leader {leader} killed at {:.1} s; {new_leader} took the Lease {:.1} s later; replica \
             changes (t, replicas): {changes:?}; Scaled events by: {writers:?}",
            started.elapsed().as_secs_f64() - killed_at.elapsed().as_secs_f64(),
            takeover.as_secs_f64()
        );
    })
    .await;
}

/// 10. A pool whose template the API server rejects (an invalid container name passes the
/// CRD's schema and the operator's checks) shows the API server's error in `Ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_an_invalid_template_shows_the_error_in_the_ready_condition() {
    ensure_operator_installed();
    with_temp_ns("t10_invalid_template", |env| async move {
        let stack = stack("e2e-invalid", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut pool = pool_object(&stack, &PoolOptions::new("invalid"));
        pool.spec.template.spec.as_mut().unwrap().containers[0].name = "Not_A_DNS_Label".into();
        let ready = ready_condition_changes(&env.client, &env.ns, "invalid");
        create_pool(&env.client, &env.ns, &pool).await;
        let (status, reason, message) =
            first_matching("Ready=False", Duration::from_secs(60), ready, |c| {
                c.as_ref().is_some_and(|(status, _, _)| status == "False")
            })
            .await
            .unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "DeploymentApplyFailed"),
            "{message}"
        );
        assert!(
            message.contains("Not_A_DNS_Label"),
            "the API server's own message: {message}"
        );
        assert!(
            qwp_e2e::wait::deployment(&env.client, &env.ns, "invalid")
                .await
                .is_none()
        );
    })
    .await;
}

/// 11. Least privilege: a pool naming an endpoint outside the install's allowlist, and one
/// naming a Secret that does not opt in, are refused with a condition; neither gets a
/// Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_pools_naming_unlabelled_secrets_or_foreign_endpoints_are_refused() {
    ensure_operator_installed();
    with_temp_ns("t11_refused", |env| async move {
        let stack = stack("e2e-refused", 30).await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(env.client.clone(), &env.ns);
        let unlabelled = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "unlabelled"},
            "stringData": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
        }))
        .unwrap();
        secrets
            .create(&Default::default(), &unlabelled)
            .await
            .unwrap();

        let mut foreign = pool_object(&stack, &PoolOptions::new("foreign"));
        foreign.spec.queue.endpoint = Some("http://collector.example.com:8080".into());
        let mut secretive = pool_object(&stack, &PoolOptions::new("secretive"));
        secretive
            .spec
            .queue
            .credentials_secret_ref
            .as_mut()
            .unwrap()
            .name = "unlabelled".into();
        for (pool, reason) in [
            (foreign, "EndpointNotAllowed"),
            (secretive, "SecretNotOptedIn"),
        ] {
            let name = pool.name_any();
            let ready = ready_condition_changes(&env.client, &env.ns, &name);
            create_pool(&env.client, &env.ns, &pool).await;
            let (_, got, message) =
                first_matching("Ready=False", Duration::from_secs(60), ready, |c| {
                    c.as_ref().is_some_and(|(status, _, _)| status == "False")
                })
                .await
                .unwrap();
            assert_eq!(got, reason, "{name}: {message}");
            assert!(
                qwp_e2e::wait::deployment(&env.client, &env.ns, &name)
                    .await
                    .is_none(),
                "{name}: a refused pool gets no Deployment"
            );
            let status = pool_status(&env.client, &env.ns, &name).await.unwrap();
            assert!(status.backlog.is_none(), "{name}: its queue was never read");
        }
    })
    .await;
}

/// 12. A hand edit of the worker Deployment's template (`kubectl set image`) is undone
/// within one resync period (10 s in the suite's install).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_a_hand_edit_of_the_worker_template_is_reverted() {
    ensure_operator_installed();
    with_temp_ns("t12_drift", |env| async move {
        let s = Settings::get();
        let stack = stack("e2e-drift", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        create_pool(
            &env.client,
            &env.ns,
            &pool_object(&stack, &PoolOptions::new("drift")),
        )
        .await;
        let images = template_image_changes(&env.client, &env.ns, "drift");
        let mut images = Box::pin(images);
        let original = images.next().await.expect("the Deployment is created");
        assert_eq!(original, s.image("qwp-worker"));
        let edited_at = Instant::now();
        cmd::must(
            "kubectl",
            &[
                "-n",
                &env.ns,
                "set",
                "image",
                "deployment/drift",
                "worker=someone-else:edited",
            ],
        );
        first_matching(
            "the edited image",
            Duration::from_secs(30),
            &mut images,
            |i| i == "someone-else:edited",
        )
        .await;
        first_matching(
            "the pool's image again",
            Duration::from_secs(30),
            &mut images,
            |i| *i == original,
        )
        .await;
        eprintln!(
            "[e2e] hand edit of the template undone after {:.1} s",
            edited_at.elapsed().as_secs_f64()
        );
    })
    .await;
}

/// 13. A pod whose `/status` does not answer (its worker frozen with SIGSTOP, still Ready) is
/// counted as busy: a scale-down removes the idle pods and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_a_pod_whose_status_times_out_is_not_removed_before_idle_ones() {
    ensure_operator_installed();
    with_temp_ns("t13_silent_pod", |env| async move {
        let s = Settings::get();
        let stack = stack("e2e-silent", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("silent");
        options.min_replicas = 3;
        options.max_replicas = 3;
        options.scale_down_window_seconds = 0;
        let mut pool = serde_json::to_value(pool_object(&stack, &options)).unwrap();
        let pod = &mut pool["spec"]["template"]["spec"];
        // A shell next to the worker, in one process namespace, to freeze it.
        pod["shareProcessNamespace"] = serde_json::json!(true);
        pod["containers"].as_array_mut().unwrap().push(serde_json::json!({
            "name": "box", "image": s.image("qwp-testbox"), "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "exec sleep 100000"],
        }));
        // A frozen worker stays Ready (readiness is ranked before cost by the ReplicaSet).
        pod["containers"][0]["readinessProbe"]["failureThreshold"] = serde_json::json!(10000);
        let pool: QueueWorkerPool = serde_json::from_value(pool).unwrap();
        create_pool(&env.client, &env.ns, &pool).await;
        wait_replicas(&env, "silent", 3, true, Duration::from_secs(120)).await;

        let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
        let list = pods.list(&ListParams::default().labels("queueworker.io/pool=silent")).await.unwrap();
        let frozen = list.items[0].name_any();
        cmd::must(
            "kubectl",
            &["-n", &env.ns, "exec", &frozen, "-c", "box", "--", "/bin/sh", "-c", "kill -STOP $(pidof qwp-worker)"],
        );
        let removal_watch = RemovalWatch::start(&env.client, &env.ns, "silent").await;
        let pools: Api<QueueWorkerPool> = Api::namespaced(env.client.clone(), &env.ns);
        pools
            .patch(
                "silent",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"spec": {"minReplicas": 1}})),
            )
            .await
            .unwrap();
        wait_replicas(&env, "silent", 1, true, Duration::from_secs(60)).await;
        let remaining = pods.list(&ListParams::default().labels("queueworker.io/pool=silent")).await.unwrap();
        let kept: Vec<String> = remaining
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        // Let the rest go, so the removal watch can finish.
        pools
            .patch(
                "silent",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"spec": {"minReplicas": 0}})),
            )
            .await
            .unwrap();
        wait_replicas(&env, "silent", 0, false, Duration::from_secs(60)).await;
        let removals = removal_watch.finish(Duration::from_secs(90)).await;
        eprintln!(
            "[e2e] frozen pod {frozen}; kept after 3 → 1: {kept:?}; removals (pod: cost / lowest kept): {}",
            removals.iter().map(|r| format!("{}: {} / {:?}", r.pod, r.cost, r.lowest_kept_cost)).collect::<Vec<_>>().join(", ")
        );
        assert_eq!(kept, vec![frozen.clone()], "the silent pod is kept, the idle ones go");
        let first_two: Vec<&Removal> = removals.iter().take(2).collect();
        assert!(first_two.iter().all(|r| r.pod != frozen && r.cost == 0), "{first_two:?}");
    })
    .await;
}

/// 14. Wake-up on enqueue: a pool at zero that reads its queue only every 300 s gets a worker
/// within seconds of a job submitted through the API server, because the API server's hint
/// made the operator reconcile it (with a fresh queue read) at once; the job then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_a_job_through_the_api_server_wakes_a_pool_at_zero_before_its_next_poll() {
    const POLL_SECONDS: i32 = 300;
    /// Far below the poll interval: only the hint can scale the pool this soon.
    const WAKE_WITHIN: Duration = Duration::from_secs(30);
    ensure_operator_installed();
    with_temp_ns("t14_wake", |env| async move {
        let stack = stack("e2e-wake", 30).await;
        create_aws_secret(&env.client, &env.ns).await;
        let mut options = PoolOptions::new("wake");
        options.poll_interval_seconds = POLL_SECONDS;
        let created = Instant::now();
        create_pool(&env.client, &env.ns, &pool_object(&stack, &options)).await;
        // The first reconcile read the (empty) queue: the next poll is POLL_SECONDS away.
        first_queue_reading(&env.client, &env.ns, "wake").await;
        let api = api_server::install(&env, &stack).await;
        let scaled = tokio::spawn(first_matching(
            "spec.replicas 1",
            WAKE_WITHIN,
            replica_changes(&env.client, &env.ns, "wake"),
            |replicas| *replicas >= 1,
        ));
        let submitted = Instant::now();
        assert!(
            submitted.duration_since(created) + WAKE_WITHIN < Duration::from_secs(POLL_SECONDS as u64),
            "the setup took too long for the poll interval to rule out a poll"
        );
        let response = reqwest::Client::new()
            .post(format!("{}/jobs?filename=wake.txt&wait=0", api.base_url))
            .body("wake up")
            .send()
            .await
            .expect("POST /jobs");
        assert_eq!(response.status(), 202);
        scaled.await.expect("the replica watch");
        let woken_after = submitted.elapsed();
        wait_results(&stack, 1, Duration::from_secs(120)).await;
        eprintln!("[e2e] wake: spec.replicas 1 written {woken_after:?} after the submission (poll interval {POLL_SECONDS} s)");
    })
    .await;
}
