//! One reconcile of one pool, as named steps:
//!
//! 1. [`validate`] the spec (pure): what the CRD schema cannot check; then what the pool may
//!    make the operator call ([`crate::access`]).
//! 2. [`observe`] the Deployment, then [`validate::ownership`] of it (pure), then observe the
//!    queue depth.
//! 3. [`decide`] the replicas (pure, with the pool's in-memory history).
//! 4. [`apply`] pod deletion costs (before a scale-down) and the Deployment.
//! 5. [`report`] Events, status and metrics.
//!
//! Only observe, apply and report touch the network. A failed step ends the reconcile;
//! [`report::failure`] tells the pool why, and [`crate::controller::error_policy`] decides when
//! it runs again.

pub mod apply;
pub mod decide;
pub mod observe;
pub mod report;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::QueueWorkerPool;
use qwp_pool::decision::{Decided, History, ScalingPolicy};

use crate::access::EndpointAllowlist;
use crate::controller::WATCH_DEBOUNCE;
use crate::deletion_cost::InFlightProbe;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::queue::QueueDepthSource;
use crate::{FIELD_MANAGER, Result};

/// Reconciles one pool. Errors go to [`crate::controller::error_policy`]; an unreadable queue
/// is not an error (the pool holds its replicas and says why in its status). Every log line of
/// the reconcile carries the pool's namespace and name (the span).
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(namespace = %pool.namespace().unwrap_or_default(), pool = %pool.name_any())
)]
pub async fn reconcile(pool: Arc<QueueWorkerPool>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        // A standby neither reads nor writes; the leader's loss wakes every pool here again
        // (see `Leadership::acquired`).
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = steps(&pool, &ctx).await;
    if let Err(error) = &result {
        report::failure(&pool, &ctx, error).await;
    }
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        ctx.clear_failures(&ObjectRef::from_obj(pool.as_ref()));
    }
    result
}

async fn steps(pool: &QueueWorkerPool, ctx: &Context) -> Result<Action> {
    let pool = validate::spec(pool)?;
    ctx.allowlist.check(&pool.resource.spec.queue)?;
    let deployment = observe::deployment(&pool, ctx).await?;
    validate::ownership(pool.resource, deployment.as_ref())?;
    let observed = observe::queue(&pool, ctx, deployment).await?;
    let now = Instant::now();
    let Decided { decision, history } = ctx.with_memory(&pool.key, now, observed.current, |m| {
        decide::replicas(&pool, &m.history, &observed, now)
    });
    apply::deployment(&pool, ctx, &observed, &decision).await?;
    // Kept only once applied: a failed apply leaves the history as if nothing was decided.
    ctx.with_memory(&pool.key, now, observed.current, |m| m.history = history);
    report::outcome(&pool, ctx, &observed, &decision).await?;
    Ok(Action::requeue(pool.poll.saturating_sub(WATCH_DEBOUNCE)))
}

/// Default of [`Context::resync`].
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// What the reconciler shares across pools.
pub struct Context {
    pub client: Client,
    pub queue: Arc<dyn QueueDepthSource>,
    pub probe: Arc<dyn InFlightProbe>,
    pub metrics: Arc<Metrics>,
    /// Where workers serve `/status` (injected as their WORKER_ADMIN_PORT; `probe` asks there).
    pub worker_admin_port: u16,
    pub recorder: Recorder,
    /// The pools' pods (labelled with the pool), kept by the reflector [`crate::controller`]
    /// runs with [`Context::take_pod_writer`].
    pub pods: Store<Pod>,
    pod_writer: Mutex<Option<Writer<Pod>>>,
    /// How often a Deployment that looks up to date is applied anyway (drift correction).
    pub resync: Duration,
    /// The queue endpoints pools may name.
    pub allowlist: EndpointAllowlist,
    /// Whether this replica leads; only the leader reconciles.
    pub leadership: Leadership,
    /// Reporting instance of the Events this process writes (host or pod name).
    pub instance: String,
    /// Per-pool memory: decision history, last reading. In memory only: after a restart the
    /// history starts from the running replicas (see [`History::starting_at`]).
    pools: Mutex<HashMap<ObjectRef<QueueWorkerPool>, PoolMemory>>,
    /// Consecutive transient failures per pool, for the backoff.
    failures: Mutex<HashMap<ObjectRef<QueueWorkerPool>, u32>>,
}

pub(crate) struct PoolMemory {
    pub history: History,
    pub last_read: Option<observe::LastRead>,
    /// When the Deployment was last applied (or the pool first seen): an up-to-date one is
    /// applied again once [`Context::resync`] has passed, undoing hand edits of its template.
    pub synced_at: Instant,
    /// A wake-up hint arrived since the last read: the next reconcile reads the queue.
    pub woken: bool,
}

impl Context {
    pub fn new(
        client: Client,
        queue: Arc<dyn QueueDepthSource>,
        probe: Arc<dyn InFlightProbe>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter::from(FIELD_MANAGER);
        let (pods, pod_writer) = reflector::store();
        Context {
            pods,
            pod_writer: Mutex::new(Some(pod_writer)),
            instance: reporter
                .instance
                .clone()
                .unwrap_or_else(|| FIELD_MANAGER.to_string()),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            queue,
            probe,
            metrics,
            worker_admin_port: DEFAULT_ADMIN_PORT,
            leadership: Leadership::always(),
            allowlist: EndpointAllowlist::default(),
            resync: DEFAULT_RESYNC,
            pools: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Workers serve `/status` on `port` (default [`DEFAULT_ADMIN_PORT`]).
    pub fn with_worker_admin_port(mut self, port: u16) -> Self {
        self.worker_admin_port = port;
        self
    }

    /// The writer of [`Context::pods`], for the one reflector that fills it.
    pub fn take_pod_writer(&self) -> Option<Writer<Pod>> {
        self.pod_writer.lock().expect("pod writer lock").take()
    }

    /// Applies up-to-date Deployments again every `resync`.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Pools may name only the queue endpoints `allowlist` allows.
    pub fn with_allowlist(mut self, allowlist: EndpointAllowlist) -> Self {
        self.allowlist = allowlist;
        self
    }

    /// Reconciles only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// Forgets every pool's history: a replica that (re)gains the lead starts from the running
    /// replicas, like after a restart, not from what it decided before another replica led.
    pub fn forget_histories(&self) {
        self.pools.lock().expect("pool memory lock").clear();
    }

    pub(crate) fn with_memory<T>(
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
            synced_at: now,
            woken: false,
        });
        f(memory)
    }

    /// A wake-up hint for this pool: its next reconcile reads the queue afresh.
    pub fn mark_woken(&self, key: &ObjectRef<QueueWorkerPool>) {
        let mut pools = self.pools.lock().expect("pool memory lock");
        if let Some(memory) = pools.get_mut(key) {
            memory.woken = true;
        }
    }

    /// Counts one more transient failure of the pool; returns the count.
    pub(crate) fn count_failure(&self, key: ObjectRef<QueueWorkerPool>) -> u32 {
        let mut failures = self.failures.lock().expect("failure count lock");
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    pub(crate) fn clear_failures(&self, key: &ObjectRef<QueueWorkerPool>) {
        self.failures
            .lock()
            .expect("failure count lock")
            .remove(key);
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

/// A pool that passed [`validate::spec`], with what every later step reads of it.
pub struct ValidPool<'a> {
    pub resource: &'a QueueWorkerPool,
    pub namespace: String,
    pub name: String,
    pub key: ObjectRef<QueueWorkerPool>,
    pub policy: ScalingPolicy,
    /// Time between two queue reads (`pollIntervalSeconds`).
    pub poll: Duration,
}
