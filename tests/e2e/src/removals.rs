//! Every pod a pool's ReplicaSet removes, seen on a watch stream of the pool's pods (and of its
//! Deployment, to tell one scale-down from the next): the pod's deletion cost and readiness
//! when it was picked, and the lowest cost among the ready pods that scale-down kept.
//!
//! Each pod is seen being deleted: its `deletionTimestamp` update, or, for a pod deleted
//! without grace, its delete event; a pod that disappeared while the watch was re-listing is
//! noticed on the new list. Pods deleted together in one scale-down are not each other's
//! "kept" pods: one change of the Deployment's replicas makes one batch.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use qwp_pool::crd::DELETION_COST_ANNOTATION;

use crate::logs::has_started;

/// One pod the ReplicaSet deleted.
#[derive(Debug, Clone)]
pub struct Removal {
    pub pod: String,
    /// Its deletion cost and readiness when its deletion was seen.
    pub cost: i64,
    pub ready: bool,
    /// A container of it ran (it has a log).
    pub ran: bool,
    /// The lowest cost among the ready pods that stayed when it was removed (pods removed by
    /// the same scale-down excluded); `None` when no ready pod stayed.
    pub lowest_kept_cost: Option<i64>,
}

/// A pod's deletion-cost annotation (0 when absent).
pub fn deletion_cost(pod: &Pod) -> i64 {
    pod.annotations()
        .get(DELETION_COST_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub struct RemovalWatch {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Removal>>,
}

impl RemovalWatch {
    /// Watches the pods of `pool` (label `queueworker.io/pool`) and its Deployment; returns
    /// once both watches have listed what exists, so no later removal can be missed.
    pub async fn start(client: &Client, ns: &str, pool: &str) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let pod_events = watcher(
            pods,
            watcher::Config::default().labels(&format!("queueworker.io/pool={pool}")),
        )
        .default_backoff()
        .map(Change::Pod);
        let deployment_events = watcher(
            deployments,
            watcher::Config::default().fields(&format!("metadata.name={pool}")),
        )
        .default_backoff()
        .map(Change::Deployment);
        let (stop, stop_rx) = watch::channel(false);
        let (listed_tx, listed) = oneshot::channel();
        let task = tokio::spawn(observe(
            futures::stream::select(pod_events, deployment_events),
            stop_rx,
            listed_tx,
        ));
        listed
            .await
            .expect("the removal watch lists the pool's pods and Deployment");
        RemovalWatch { stop, task }
    }

    /// Waits until none of the pool's pods is left (every removal seen through to the pod's
    /// disappearance), then returns the removals in the order they were seen.
    pub async fn finish(self, timeout: Duration) -> Vec<Removal> {
        self.stop.send_replace(true);
        tokio::time::timeout(timeout, self.task)
            .await
            .unwrap_or_else(|_| panic!("pods of the pool still there {timeout:?} after the end"))
            .expect("removal watch task")
    }
}

enum Change {
    Pod(Result<watcher::Event<Pod>, watcher::Error>),
    Deployment(Result<watcher::Event<Deployment>, watcher::Error>),
}

/// A removal as seen, before the pods removed with it are known.
struct Seen {
    pod: String,
    cost: i64,
    ready: bool,
    ran: bool,
    /// Which scale-down: the number of replica changes of the Deployment seen before.
    batch: u64,
    /// Ready pods not being deleted at that moment, with their costs.
    others_ready: Vec<(String, i64)>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    /// Pods seen with a running or finished container.
    ran: HashSet<String>,
    removed: HashSet<String>,
    seen: Vec<Seen>,
    replicas: Option<i32>,
    batch: u64,
}

impl State {
    fn apply(&mut self, pod: Pod) {
        let name = pod.name_any();
        if has_started(&pod) {
            self.ran.insert(name.clone());
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        self.pods.insert(name.clone(), pod);
        if deleting {
            self.removed_now(&name);
        }
    }

    fn delete(&mut self, pod: Pod) {
        let name = pod.name_any();
        // A pod deleted without grace goes at once, with no update marking it first.
        self.pods.insert(name.clone(), pod);
        self.removed_now(&name);
        self.pods.remove(&name);
    }

    fn removed_now(&mut self, name: &str) {
        if !self.removed.insert(name.to_string()) {
            return;
        }
        let pod = &self.pods[name];
        let others_ready = self
            .pods
            .values()
            .filter(|p| p.name_any() != name && p.metadata.deletion_timestamp.is_none())
            .filter(|p| is_ready(p))
            .map(|p| (p.name_any(), deletion_cost(p)))
            .collect();
        self.seen.push(Seen {
            pod: name.to_string(),
            cost: deletion_cost(pod),
            ready: is_ready(pod),
            ran: self.ran.contains(name),
            batch: self.batch,
            others_ready,
        });
    }

    fn deployment(&mut self, deployment: &Deployment) {
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
        if replicas != self.replicas {
            self.replicas = replicas;
            self.batch += 1;
        }
    }

    fn removals(self) -> Vec<Removal> {
        let batch_of: BTreeMap<&str, u64> = self
            .seen
            .iter()
            .map(|s| (s.pod.as_str(), s.batch))
            .collect();
        self.seen
            .iter()
            .map(|s| Removal {
                pod: s.pod.clone(),
                cost: s.cost,
                ready: s.ready,
                ran: s.ran,
                lowest_kept_cost: s
                    .others_ready
                    .iter()
                    .filter(|(other, _)| batch_of.get(other.as_str()) != Some(&s.batch))
                    .map(|&(_, cost)| cost)
                    .min(),
            })
            .collect()
    }
}

async fn observe(
    changes: impl futures::Stream<Item = Change>,
    mut stop: watch::Receiver<bool>,
    listed: oneshot::Sender<()>,
) -> Vec<Removal> {
    let mut state = State::default();
    let mut changes = std::pin::pin!(changes);
    let mut listed = Some(listed);
    let (mut pods_listed, mut deployment_listed) = (false, false);
    // Pods of a re-list, replacing the known ones at its end.
    let mut relist: Option<BTreeMap<String, Pod>> = None;
    loop {
        if *stop.borrow() && state.pods.is_empty() {
            break;
        }
        let change = tokio::select! {
            change = changes.next() => change,
            stopping = stop.changed() => match stopping {
                Ok(()) => continue,
                // The test gave up on the watch (it failed): stop watching.
                Err(_) => break,
            },
        };
        match change {
            None => panic!("the removal watch ended"),
            // The watcher retries with backoff; what happened meanwhile comes with the re-list.
            Some(Change::Pod(Err(_)) | Change::Deployment(Err(_))) => {}
            Some(Change::Pod(Ok(event))) => match event {
                watcher::Event::Apply(pod) => state.apply(pod),
                watcher::Event::Delete(pod) => state.delete(pod),
                watcher::Event::Init => relist = Some(BTreeMap::new()),
                watcher::Event::InitApply(pod) => {
                    if let Some(relist) = relist.as_mut() {
                        relist.insert(pod.name_any(), pod);
                    }
                }
                watcher::Event::InitDone => {
                    let relist = relist.take().unwrap_or_default();
                    let gone: Vec<Pod> = state
                        .pods
                        .iter()
                        .filter(|(name, _)| !relist.contains_key(*name))
                        .map(|(_, pod)| pod.clone())
                        .collect();
                    for pod in gone {
                        state.delete(pod);
                    }
                    for pod in relist.into_values() {
                        state.apply(pod);
                    }
                    pods_listed = true;
                }
            },
            Some(Change::Deployment(Ok(event))) => match event {
                watcher::Event::Apply(d) | watcher::Event::InitApply(d) => state.deployment(&d),
                watcher::Event::InitDone => deployment_listed = true,
                watcher::Event::Init | watcher::Event::Delete(_) => {}
            },
        }
        if pods_listed
            && deployment_listed
            && let Some(listed) = listed.take()
        {
            let _ = listed.send(());
        }
    }
    state.removals()
}
