//! Polling with a deadline, watch streams of the values the tests follow, and short readers
//! of the objects the tests look at.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use qwp_pool::crd::{QueueWorkerPool, QueueWorkerPoolStatus};
use serde::de::DeserializeOwned;

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

/// Waits (at most 60 s) for the operator's first reading of the pool's queue: its status
/// shows a backlog.
pub async fn first_queue_reading(client: &Client, ns: &str, pool: &str) {
    until(
        "the operator's first reading of the queue",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            match pool_status(client, ns, pool).await {
                Some(status) if status.backlog.is_some() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
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

/// One value of the object `name`, from a watch stream: its value when the stream starts
/// (once the object exists), then every change, so no change is missed between two looks.
fn value_changes<K, T>(
    api: Api<K>,
    name: &str,
    value: fn(K) -> T,
) -> impl Stream<Item = T> + use<K, T>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Clone,
{
    watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects()
    // The watcher retries errors itself and re-lists; nothing to do with them here.
    .filter_map(|object| futures::future::ready(object.ok()))
    .map(value)
    .scan(None, |last: &mut Option<T>, value| {
        let changed = last.as_ref() != Some(&value);
        *last = Some(value.clone());
        futures::future::ready(Some(changed.then_some(value)))
    })
    .filter_map(futures::future::ready)
}

/// The Deployment's `spec.replicas`, each value it takes ([`value_changes`]).
pub fn replica_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = i32> + Send + use<> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    value_changes(deployments, name, |d| {
        d.spec.and_then(|s| s.replicas).unwrap_or(0)
    })
}

/// The Deployment's `status.readyReplicas`, each value it takes.
pub fn ready_replica_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = i32> + Send + use<> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    value_changes(deployments, name, |d| {
        d.status.and_then(|s| s.ready_replicas).unwrap_or(0)
    })
}

/// The pool's `status.desiredReplicas` (0 before it has a status), each value it takes.
pub fn desired_replica_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = i32> + Send + use<> {
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), ns);
    value_changes(pools, name, |p| p.status.map_or(0, |s| s.desired_replicas))
}

/// Collects what `stream` yields until `stop` is set; the stream is read from the moment
/// this is called, in a task of its own.
pub fn collect_until<T: Send + 'static>(
    stream: impl Stream<Item = T> + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<T>> {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                Some(item) = stream.next() => seen.push(item),
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        seen
    })
}

/// The status of condition `type_` ("True"/"False"/"Unknown") on the pool.
pub fn condition(status: &QueueWorkerPoolStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The pool's `Ready` condition as (status, reason, message), each value it takes (absent
/// before the pool has one).
pub fn ready_condition_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = Option<(String, String, String)>> + Send + use<> {
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), ns);
    value_changes(pools, name, |p| {
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason, c.message))
    })
}

/// The first container's image of the Deployment's pod template, each value it takes.
pub fn template_image_changes(
    client: &Client,
    ns: &str,
    name: &str,
) -> impl Stream<Item = String> + Send + use<> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    value_changes(deployments, name, |d| {
        d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default()
    })
}

/// Waits (at most `timeout`) for the first item of `stream` that `accept` takes; panics
/// naming `what` and the items seen.
pub async fn first_matching<T: Debug>(
    what: &str,
    timeout: Duration,
    stream: impl Stream<Item = T>,
    mut accept: impl FnMut(&T) -> bool,
) -> T {
    let mut stream = std::pin::pin!(stream);
    let mut seen = Vec::new();
    let found = tokio::time::timeout(timeout, async {
        while let Some(item) = stream.next().await {
            if accept(&item) {
                return Some(item);
            }
            seen.push(format!("{item:?}"));
        }
        None
    })
    .await;
    match found {
        Ok(Some(item)) => item,
        _ => panic!("no {what} within {timeout:?}; seen: {seen:?}"),
    }
}
