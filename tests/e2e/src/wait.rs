//! Polling with a deadline, and short readers of the objects the tests look at.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use qwp_operator::crd::{QueueWorkerPool, QueueWorkerPoolStatus};

/// Calls `check` every `every` until it returns `Some`, or panics after `timeout` naming
/// `what` and the last state `check` described.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn pool_status(client: &Client, ns: &str, name: &str) -> Option<QueueWorkerPoolStatus> {
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), ns);
    pools
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|p| p.status)
}

pub async fn deployment(client: &Client, ns: &str, name: &str) -> Option<Deployment> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.get_opt(name).await.ok().flatten()
}

/// (spec.replicas, status.readyReplicas) of a Deployment, zeros when it is absent.
pub async fn replicas(client: &Client, ns: &str, name: &str) -> (i32, i32) {
    match deployment(client, ns, name).await {
        None => (0, 0),
        Some(d) => (
            d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            d.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        ),
    }
}

/// The Deployment's `spec.replicas` (0 while it is absent) from a watch stream: its value when
/// the stream starts, then every change, so no change is missed between two looks.
pub fn replica_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = i32> + Send + use<> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    watcher(
        deployments,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects()
    // The watcher retries errors itself and re-lists; nothing to do with them here.
    .filter_map(|deployment| async move { deployment.ok() })
    .map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(0))
    .scan(None, |last, replicas| {
        let changed = *last != Some(replicas);
        *last = Some(replicas);
        futures::future::ready(Some(changed.then_some(replicas)))
    })
    .filter_map(futures::future::ready)
}

/// The status of condition `type_` ("True"/"False"/"Unknown") on the pool.
pub fn condition(status: &QueueWorkerPoolStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}
