//! The reconciler: observe (queue depth, Deployment, pods) → decide → build → apply →
//! update status. Only [`reconcile`]'s observe and apply steps touch the network; deciding and
//! building are the pure functions of [`crate::decision`], [`crate::deployment`] and
//! [`crate::status`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::{POOL_LABEL, QueueWorkerPool};
use crate::decision::{Decision, History, ScalingPolicy, decide};
use crate::deletion_cost::{InFlightProbe, cost_patch, plan_costs};
use crate::deployment::{build_deployment, current_replicas, is_up_to_date};
use crate::metrics::Metrics;
use crate::queue::{QueueDepthSource, QueueError, QueueTarget, Reading, StaticCredentials};
use crate::status::{QUEUE_REACHABLE, StatusInput, build_status, condition_reason};
use crate::{Error, FIELD_MANAGER, Result};

/// First retry after an error; doubles per consecutive error up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Reconcile requests for one pool within this time cause one reconcile. The scheduler adds
/// it to every request, so requeues ask for the poll interval minus this.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

/// What the reconciler shares across pools.
pub struct Context {
    pub client: Client,
    pub queue: Arc<dyn QueueDepthSource>,
    pub probe: Arc<dyn InFlightProbe>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Reporting instance of the Events this process writes (host or pod name).
    pub instance: String,
    /// Per-pool memory: decision history, last reading, consecutive errors. In memory only:
    /// after a restart the history starts from the running replicas (see
    /// [`History::starting_at`]).
    pools: Mutex<HashMap<ObjectRef<QueueWorkerPool>, PoolMemory>>,
    /// Consecutive failed reconciles per pool, for the backoff.
    failures: Mutex<HashMap<ObjectRef<QueueWorkerPool>, u32>>,
}

struct PoolMemory {
    history: History,
    last_read: Option<LastRead>,
}

/// A queue reading and when it was made, reused by reconciles triggered by watch events
/// (status writes, Deployment changes) within the poll interval: SQS is read at most once
/// per poll interval and pool, and a status write cannot trigger a fresh read in a loop.
#[derive(Clone)]
struct LastRead {
    at: Instant,
    generation: Option<i64>,
    result: Result<Reading, QueueError>,
}

impl Context {
    pub fn new(
        client: Client,
        queue: Arc<dyn QueueDepthSource>,
        probe: Arc<dyn InFlightProbe>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter::from(FIELD_MANAGER);
        Context {
            instance: reporter
                .instance
                .clone()
                .unwrap_or_else(|| FIELD_MANAGER.to_string()),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            queue,
            probe,
            metrics,
            pools: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn with_memory<T>(
        &self,
        key: &ObjectRef<QueueWorkerPool>,
        now: Instant,
        current: u32,
        f: impl FnOnce(&mut PoolMemory) -> T,
    ) -> T {
        let mut pools = self.pools.lock().expect("pool memory lock");
        let memory = pools.entry(key.clone()).or_insert_with(|| PoolMemory {
            history: History::starting_at(now, current),
            last_read: None,
        });
        f(memory)
    }

    /// Forgets pools that no longer exist (their memory and metric series).
    pub fn forget_missing(&self, store: &Store<QueueWorkerPool>) {
        let mut pools = self.pools.lock().expect("pool memory lock");
        self.failures
            .lock()
            .expect("failure count lock")
            .retain(|key, _| store.get(key).is_some());
        pools.retain(|key, _| {
            let keep = store.get(key).is_some();
            if !keep {
                self.metrics
                    .forget_pool(key.namespace.as_deref().unwrap_or_default(), &key.name);
            }
            keep
        });
    }
}

/// Reconciles one pool. Errors go to [`error_policy`]; an unreadable queue is not an error
/// (the pool holds its replicas and says why in its status).
pub async fn reconcile(pool: Arc<QueueWorkerPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&pool, &ctx).await;
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        let key = ObjectRef::from_obj(pool.as_ref());
        ctx.failures
            .lock()
            .expect("failure count lock")
            .remove(&key);
    }
    result
}

async fn reconcile_inner(pool: &QueueWorkerPool, ctx: &Context) -> Result<Action> {
    let name = pool.name_any();
    let namespace = pool
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    let key = ObjectRef::from_obj(pool);
    let policy = ScalingPolicy::from(&pool.spec);
    let poll = Duration::from_secs(
        u64::try_from(pool.spec.poll_interval_seconds.clamp(1, 300)).unwrap_or(5),
    );

    // Observe.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = deployments.get_opt(&name).await?;
    if let Some(other) = existing.as_ref().filter(|d| !is_owned_by(d, pool)) {
        // Never take over (and later garbage-collect) a Deployment the pool did not create.
        let error = Error::DeploymentNotOwned(other.name_any());
        publish(
            ctx,
            pool,
            EventType::Warning,
            "DeploymentNotOwned",
            error.to_string(),
        )
        .await;
        return Err(error);
    }
    let current = current_replicas(existing.as_ref());
    let (reading, fresh) = read_queue(pool, ctx, &key, &namespace, poll, current).await;

    // Decide.
    let now = Instant::now();
    let depth = reading.as_ref().ok().map(|r| r.depth);
    let decision = ctx.with_memory(&key, now, current, |memory| {
        decide(&policy, &memory.history, depth.as_ref(), current, now)
    });

    // Apply: pods' deletion cost first, so the ReplicaSet removes idle pods.
    if decision.replicas < current {
        set_deletion_costs(ctx, &namespace, &name).await;
    }
    let wanted = build_deployment(pool, i32::try_from(decision.replicas).unwrap_or(i32::MAX))?;
    if !existing.as_ref().is_some_and(|e| is_up_to_date(e, &wanted)) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(source) = deployments
            .patch(&name, &params, &Patch::Apply(&wanted))
            .await
        {
            publish(
                ctx,
                pool,
                EventType::Warning,
                "DeploymentApplyFailed",
                format!("applying Deployment {name} failed: {source}"),
            )
            .await;
            return Err(Error::DeploymentApply { name, source });
        }
    }
    ctx.with_memory(&key, now, current, |memory| {
        if fresh {
            memory.history.record(&policy, now, &decision, current);
        } else {
            memory
                .history
                .record_change(now, current, decision.replicas);
        }
    });

    // Tell: events, status, metrics.
    let scaled = decision.replicas != current;
    announce(ctx, pool, &decision, &reading, current).await;
    let queue_name = match &reading {
        Ok(r) => r.url.clone(),
        Err(_) => pool
            .spec
            .queue
            .url
            .clone()
            .or(pool.spec.queue.name.clone())
            .unwrap_or_default(),
    };
    let status = build_status(&StatusInput {
        generation: pool.metadata.generation,
        queue: queue_name,
        depth: reading.as_ref().map(|r| r.depth),
        decision: &decision,
        deployment: existing.as_ref(),
        scaled,
        // Whole seconds: that is what the API server stores, so an unchanged status compares equal.
        now: Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH),
        previous: pool.status.as_ref(),
    });
    if pool.status.as_ref() != Some(&status) {
        let pools: Api<QueueWorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": QueueWorkerPool::api_version(&()),
            "kind": QueueWorkerPool::kind(&()),
            "status": status,
        });
        pools
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    ctx.metrics
        .set_pool(&namespace, &name, decision.backlog, decision.replicas);
    if scaled {
        ctx.metrics
            .scale_events
            .get_or_create(&crate::metrics::PoolLabels {
                namespace: namespace.clone(),
                pool: name.clone(),
            })
            .inc();
        info!(%namespace, pool = %name, from = current, to = decision.replicas, reason = %decision.reason, "scaled");
    }
    Ok(Action::requeue(poll.saturating_sub(WATCH_DEBOUNCE)))
}

fn is_owned_by(deployment: &Deployment, pool: &QueueWorkerPool) -> bool {
    let uid = pool.uid();
    deployment
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The queue depth: a fresh read, or the last one when it is younger than the poll interval
/// and the spec has not changed since. Returns whether the reading is fresh.
async fn read_queue(
    pool: &QueueWorkerPool,
    ctx: &Context,
    key: &ObjectRef<QueueWorkerPool>,
    namespace: &str,
    poll: Duration,
    current: u32,
) -> (Result<Reading, QueueError>, bool) {
    let generation = pool.metadata.generation;
    let cached = ctx.with_memory(key, Instant::now(), current, |memory| {
        memory
            .last_read
            .clone()
            .filter(|last| last.generation == generation && last.at.elapsed() < poll)
    });
    if let Some(last) = cached {
        ctx.metrics.count_read("cached");
        return (last.result, false);
    }
    let result = match queue_target(pool, &ctx.client, namespace).await {
        Ok(target) => ctx.queue.read(&target).await,
        Err(err) => Err(err),
    };
    match &result {
        Ok(reading) => {
            ctx.metrics.count_read("ok");
            ctx.metrics
                .sqs_requests
                .inc_by(u64::from(reading.api_calls));
        }
        Err(err) => {
            ctx.metrics.count_read("error");
            warn!(namespace, pool = %pool.name_any(), error = %err, "queue depth unreadable; holding replicas");
        }
    }
    let last = LastRead {
        at: Instant::now(),
        generation,
        result: result.clone(),
    };
    ctx.with_memory(key, Instant::now(), current, |memory| {
        memory.last_read = Some(last)
    });
    (result, true)
}

/// Where the pool's queue is, with keys from its Secret when it names one.
async fn queue_target(
    pool: &QueueWorkerPool,
    client: &Client,
    namespace: &str,
) -> Result<QueueTarget, QueueError> {
    let queue = &pool.spec.queue;
    let credentials = match &queue.credentials_secret_ref {
        None => None,
        Some(reference) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = secrets
                .get_opt(&reference.name)
                .await
                .map_err(|e| {
                    QueueError::new(
                        "SecretUnreadable",
                        format!("Secret {namespace}/{}: {e}", reference.name),
                    )
                })?
                .ok_or_else(|| {
                    QueueError::new(
                        "SecretNotFound",
                        format!("Secret {namespace}/{} not found", reference.name),
                    )
                })?;
            let value = |key: &str| -> Result<String, QueueError> {
                secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(key))
                    .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        QueueError::new(
                            "SecretKeyMissing",
                            format!("Secret {namespace}/{} has no key {key}", reference.name),
                        )
                    })
            };
            Some(StaticCredentials {
                access_key_id: value(&reference.access_key_id_key)?,
                secret_access_key: value(&reference.secret_access_key_key)?,
            })
        }
    };
    Ok(QueueTarget {
        url: queue.url.clone(),
        name: queue.name.clone(),
        region: queue.region.clone(),
        endpoint: queue.endpoint.clone(),
        credentials,
    })
}

/// Annotates the pool's pods with their in-flight job count as deletion cost. Best effort:
/// a pod that cannot be asked or patched does not stop the scale-down.
async fn set_deletion_costs(ctx: &Context, namespace: &str, pool_name: &str) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = match pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool_name}")))
        .await
    {
        Ok(list) => list.items,
        Err(err) => {
            warn!(namespace, pool = pool_name, error = %err, "cannot list pods to set deletion cost");
            return;
        }
    };
    let probes = list.into_iter().map(|pod| async {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let in_flight = match ip {
            Some(ip) => ctx.probe.in_flight(&ip).await,
            None => None,
        };
        (pod, in_flight)
    });
    let observed = futures::future::join_all(probes).await;
    for change in plan_costs(&observed) {
        let result = pods
            .patch(
                &change.pod,
                &PatchParams::default(),
                &Patch::Merge(cost_patch(change.cost)),
            )
            .await;
        if let Err(err) = result {
            warn!(namespace, pod = %change.pod, error = %err, "cannot set pod deletion cost");
        }
    }
}

/// Events: every scale change with its numbers, and queue outages and recoveries (once per
/// change of state, not every poll).
async fn announce(
    ctx: &Context,
    pool: &QueueWorkerPool,
    decision: &Decision,
    reading: &Result<Reading, QueueError>,
    current: u32,
) {
    if decision.replicas != current {
        let note = format!(
            "scaled from {current} to {} replicas: {}",
            decision.replicas, decision.reason
        );
        publish_scale(ctx, pool, note).await;
    }
    let previous = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == QUEUE_REACHABLE));
    match reading {
        Err(err) => {
            let already_reported = previous
                .is_some_and(|c| c.status == "False" && c.reason == condition_reason(&err.code));
            if !already_reported {
                let note = format!(
                    "cannot read queue depth, holding {} replicas: {err}",
                    decision.replicas
                );
                publish(ctx, pool, EventType::Warning, "QueueUnreachable", note).await;
            }
        }
        Ok(reading) => {
            if previous.is_some_and(|c| c.status == "False") {
                publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    "QueueReachable",
                    format!("reading {} again", reading.url),
                )
                .await;
            }
        }
    }
}

/// One Event per scale change. The Recorder folds repeats of an event key (reason, object,
/// reporter — not the note) into a series that keeps the first note; every scale change must
/// show its own numbers, so these are created directly.
async fn publish_scale(ctx: &Context, pool: &QueueWorkerPool, note: String) {
    let now = Timestamp::now();
    let event = K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", pool.name_any(), now.as_nanosecond())),
            namespace: pool.namespace(),
            ..ObjectMeta::default()
        },
        action: Some("Scale".to_string()),
        reason: Some("Scaled".to_string()),
        note: Some(truncate_note(note)),
        type_: Some("Normal".to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(pool.object_ref(&())),
        reporting_controller: Some(FIELD_MANAGER.to_string()),
        reporting_instance: Some(ctx.instance.clone()),
        ..K8sEvent::default()
    };
    let events: Api<K8sEvent> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    if let Err(err) = events.create(&PostParams::default(), &event).await {
        warn!(pool = %pool.name_any(), error = %err, "cannot publish event");
    }
}

/// events.k8s.io limits a note to 1 kB.
fn truncate_note(mut note: String) -> String {
    const LIMIT: usize = 1024;
    if note.len() > LIMIT {
        let mut cut = LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

async fn publish(
    ctx: &Context,
    pool: &QueueWorkerPool,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate_note(note)),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        warn!(pool = %pool.name_any(), error = %err, "cannot publish event");
    }
}

/// Requeues with exponential backoff per pool: 5 s, 10 s, 20 s, … up to 5 minutes.
pub fn error_policy(pool: Arc<QueueWorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(error.kind());
    let key = ObjectRef::from_obj(pool.as_ref());
    let failures = {
        let mut failures = ctx.failures.lock().expect("failure count lock");
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(failures);
    warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF)
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
/// `namespace` limits it to one namespace; `None` watches all.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (pools, deployments): (Api<QueueWorkerPool>, Api<Deployment>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let controller = Controller::new(pools, watcher::Config::default().any_semantic())
        .owns(
            deployments,
            watcher::Config::default().labels(POOL_LABEL).any_semantic(),
        )
        // Merges the bursts of watch events a rollout produces; also keeps two writers of the
        // same pool (e.g. two operators during an upgrade) from reconciling in a hot loop.
        .with_config(controller::Config::default().debounce(WATCH_DEBOUNCE))
        .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let janitor_ctx = ctx.clone();
    let janitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            janitor_ctx.forget_missing(&store);
        }
    });
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pool = %object, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "controller event"),
            }
        })
        .await;
    janitor.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_event_limit() {
        let note = truncate_note("é".repeat(600));
        assert!(
            note.len() <= 1024 && note.ends_with("..."),
            "{}",
            note.len()
        );
        assert_eq!(truncate_note("short".into()), "short");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
