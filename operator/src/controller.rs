//! Runs the reconciles ([`crate::reconcile`]): what triggers one, and when a failed one runs
//! again ([`error_policy`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use qwp_pool::crd::{POOL_LABEL, QueueWorkerPool};
use tracing::warn;

use crate::Error;
use crate::reconcile::validate::is_controlled_by;
use crate::reconcile::{Context, reconcile};
use crate::wake::WakeReceiver;

/// First retry after a transient error; doubles per consecutive one up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Reconcile requests for one pool within this time cause one reconcile. The scheduler adds
/// it to every request, so requeues ask for the poll interval minus this.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

/// A permanent error waits for a change of the pool (or of the Deployment in its way, see
/// [`pool_blocked_by`]): retrying cannot fix it, and the pool's status already says why.
/// Transient errors retry with exponential backoff per pool: 5 s, 10 s, 20 s, … up to 5
/// minutes, reset by a success.
pub fn error_policy(pool: Arc<QueueWorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(error.kind());
    let key = ObjectRef::from_obj(pool.as_ref());
    if error.is_permanent() {
        // The next reconcile follows a change, not a run of failures.
        ctx.clear_failures(&key);
        warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), %error, "reconcile failed; waiting for a change");
        return Action::await_change();
    }
    let failures = ctx.count_failure(key);
    let delay = backoff(failures);
    warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF)
}

/// The pool a Deployment it does not control stands in the way of: one of the pool's name
/// makes the pool fail with [`Error::DeploymentNotOwned`] and wait, so a change of it — its
/// deletion above all — wakes the pool. The pools' own Deployments trigger through `owns`.
pub fn pool_blocked_by(
    deployment: &Deployment,
    pools: &Store<QueueWorkerPool>,
) -> Option<ObjectRef<QueueWorkerPool>> {
    let key = ObjectRef::new(&deployment.name_any()).within(&deployment.namespace()?);
    let pool = pools.get(&key)?;
    (!is_controlled_by(deployment, &pool)).then_some(key)
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
/// `namespace` limits it to one namespace; `None` watches all.
/// `wakes` are the API server's wake-up hints ([`crate::wake`]): each reconciles the pools
/// reading that queue at once (subject to the same debounce as watch events).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    wakes: WakeReceiver,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (pools, deployments, pods): (Api<QueueWorkerPool>, Api<Deployment>, Api<Pod>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        };
    let pod_cache = ctx
        .take_pod_writer()
        .map(|writer| tokio::spawn(cache_pods(pods, writer)));
    let controller = Controller::new(pools, watcher::Config::default().any_semantic());
    let store = controller.store();
    // A replica that becomes the leader reconciles every pool at once (a standby's reconciles
    // did nothing, so nothing is scheduled), starting from fresh histories.
    let histories_ctx = ctx.clone();
    let took_over = ctx.leadership.acquired().map(move |()| {
        histories_ctx.forget_histories();
        tracing::info!("took over the lead: reconciling every pool");
    });
    let blocking_store = store.clone();
    let controller = controller
        .owns(
            deployments.clone(),
            watcher::Config::default().labels(POOL_LABEL).any_semantic(),
        )
        .watches(
            deployments,
            watcher::Config::default().any_semantic(),
            move |deployment| pool_blocked_by(&deployment, &blocking_store),
        )
        // Merges the bursts of watch events a rollout produces; also keeps two writers of the
        // same pool (e.g. two operators during an upgrade) from reconciling in a hot loop.
        .with_config(controller::Config::default().debounce(WATCH_DEBOUNCE))
        .reconcile_all_on(took_over)
        .reconcile_on(wakes.into_reconciles(store.clone(), ctx.clone()))
        .graceful_shutdown_on(shutdown);
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
    if let Some(pod_cache) = pod_cache {
        pod_cache.abort();
    }
}

/// Keeps the pools' pods (those with the pool label) in `writer`'s store, for the deletion
/// costs of a scale-down. Only what the ranking reads is kept (names, annotations, labels,
/// IP, deletion time): a 200-pod pool costs kilobytes, not megabytes.
async fn cache_pods(pods: Api<Pod>, writer: Writer<Pod>) {
    watcher::watcher(
        pods,
        watcher::Config::default().labels(POOL_LABEL).any_semantic(),
    )
    .default_backoff()
    .modify(|pod| {
        pod.managed_fields_mut().clear();
        pod.spec = None;
        if let Some(status) = pod.status.as_mut() {
            *status = PodStatus {
                pod_ip: status.pod_ip.take(),
                phase: status.phase.take(),
                ..PodStatus::default()
            };
        }
    })
    .reflect(writer)
    .for_each(|event| async move {
        if let Err(error) = event {
            warn!(%error, "pod watch failed; retrying");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NS, POOL, test_pool};
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_foreign_deployment_of_a_pools_name_wakes_that_pool_only() {
        let pool = test_pool(json!({}));
        let mut writer = Writer::<QueueWorkerPool>::default();
        writer.apply_watcher_event(&Event::Apply(pool.clone()));
        let pools = writer.as_reader();
        let deployment = |name: &str, namespace: &str, owned: bool| {
            let mut d: Deployment =
                serde_json::from_value(crate::fixtures::existing_deployment(&pool, 1, 1)).unwrap();
            d.metadata.name = Some(name.into());
            d.metadata.namespace = Some(namespace.into());
            if !owned {
                d.metadata.owner_references = None;
            }
            d
        };
        assert_eq!(
            pool_blocked_by(&deployment(POOL, NS, false), &pools),
            Some(ObjectRef::new(POOL).within(NS))
        );
        assert_eq!(
            pool_blocked_by(&deployment(POOL, NS, true), &pools),
            None,
            "the pool's own Deployment triggers through owns"
        );
        assert_eq!(pool_blocked_by(&deployment("web", NS, false), &pools), None);
        assert_eq!(
            pool_blocked_by(&deployment(POOL, "other", false), &pools),
            None
        );
    }
}
