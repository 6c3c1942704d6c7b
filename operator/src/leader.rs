//! Leader election on a `coordination.k8s.io/v1` Lease ([`kube_lease_manager`]): of the
//! operator's replicas only the holder of the Lease reconciles — reads queues, probes pods,
//! writes Deployments, statuses and Events. The others keep their watches (and caches) warm and
//! wait; [`Leadership::acquired`] wakes every pool when one takes over.
//!
//! The holder renews the Lease every `duration - grace` seconds; a standby takes it once it has
//! not been renewed for `duration` seconds (a killed leader), or at once when the leader
//! releases it on a graceful shutdown ([`Elector::stop`]).

use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::FIELD_MANAGER;
use crate::metrics::Metrics;

/// Name of the Lease when the install does not choose one.
pub const DEFAULT_LEASE_NAME: &str = "qwp-operator";
/// A standby takes over at most this long after the leader's last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 10;
/// The leader renews this long before its Lease would expire (also the clock skew tolerated
/// between nodes).
pub const LEASE_GRACE_SECONDS: u64 = 3;
/// Wait before asking the API server again after a failed Lease call.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Which Lease, and who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// The holder identity this replica writes (its pod name).
    pub identity: String,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

impl LeaseSettings {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseSettings {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration_seconds: LEASE_DURATION_SECONDS,
            grace_seconds: LEASE_GRACE_SECONDS,
        }
    }
}

/// Whether this replica leads now; cheap to clone and to ask before every reconcile.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// A replica that always leads (leader election disabled: one replica only).
    pub fn always() -> Self {
        Leadership(watch::channel(true).1)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// One item each time this replica becomes the leader (not for a leadership it already had
    /// when the stream was made).
    pub fn acquired(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut receiver = self.0.clone();
        receiver.mark_unchanged();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                receiver.changed().await.ok()?;
                if *receiver.borrow_and_update() {
                    return Some(((), receiver));
                }
            }
        })
    }

    /// Waits until this replica leads.
    pub async fn wait_until_leader(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|leading| *leading).await;
    }
}

/// The task that takes and renews the Lease.
pub struct Elector {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Steps down and releases the Lease (a standby takes over at once), then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts competing for the Lease (created when missing). The returned [`Leadership`] turns
/// true once this replica holds it; [`Metrics::leader`] follows.
pub async fn elect(
    client: Client,
    settings: &LeaseSettings,
    metrics: std::sync::Arc<Metrics>,
) -> Result<(Leadership, Elector), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(settings.grace_seconds)
        // One field manager per candidate: two taking the Lease at once conflict instead of
        // both winning.
        .with_field_manager(format!("{FIELD_MANAGER}-{}", settings.identity))
        .build()
        .await?;
    let (sender, receiver) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let identity = settings.identity.clone();
    let lease = format!("{}/{}", settings.namespace, settings.name);
    let task = tokio::spawn(campaign(manager, sender, stopped, metrics, identity, lease));
    Ok((Leadership(receiver), Elector { stop, task }))
}

async fn campaign(
    manager: LeaseManager,
    sender: watch::Sender<bool>,
    mut stopped: oneshot::Receiver<()>,
    metrics: std::sync::Arc<Metrics>,
    identity: String,
    lease: String,
) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            changed = manager.changed() => match changed {
                Ok(leading) => {
                    metrics.leader.set(i64::from(leading));
                    sender.send_replace(leading);
                    if leading {
                        info!(%identity, %lease, "leading: this replica reconciles the pools");
                    } else {
                        warn!(%identity, %lease, "lost the Lease: standing by");
                    }
                }
                // The Lease is not renewed while this lasts; once it expires, another replica
                // takes it and this one hears so from the next successful call.
                Err(error) => {
                    warn!(%error, %lease, "Lease call failed; retrying");
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                    }
                }
            },
        }
    }
    // Stop acting before giving the Lease away, so two replicas never act at once.
    sender.send_replace(false);
    metrics.leader.set(0);
    match manager.release().await {
        Ok(()) => info!(%identity, %lease, "released the Lease"),
        Err(error) => warn!(%error, %lease, "cannot release the Lease; it expires by itself"),
    }
}

/// Who leads, for the admin server's `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderStatus {
    /// This replica's identity.
    pub identity: String,
    /// Whether this replica leads.
    pub leader: bool,
    /// `namespace/name` of the Lease; absent with leader election disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The Lease's holder as the API server has it (absent when it cannot be read or is free).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// This replica's view, plus the holder read from the Lease.
pub async fn status(
    client: &Client,
    identity: &str,
    settings: Option<&LeaseSettings>,
    leadership: &Leadership,
) -> LeaderStatus {
    let mut status = LeaderStatus {
        identity: identity.to_string(),
        leader: leadership.is_leader(),
        lease: None,
        holder: None,
    };
    let Some(settings) = settings else {
        status.holder = status.leader.then(|| identity.to_string());
        return status;
    };
    status.lease = Some(format!("{}/{}", settings.namespace, settings.name));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    match leases.get_opt(&settings.name).await {
        Ok(lease) => {
            status.holder = lease
                .and_then(|l| l.spec)
                .and_then(|spec| spec.holder_identity)
        }
        Err(error) => warn!(%error, "cannot read the Lease for /status"),
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::lease_server::{FakeLeaseServer, LEASE, LEASE_NS};
    use futures::StreamExt;
    use serde_json::json;

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings {
            duration_seconds: 2,
            grace_seconds: 1,
            ..LeaseSettings::new(LEASE, LEASE_NS, identity)
        }
    }

    async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    #[tokio::test]
    async fn a_lone_candidate_takes_the_lease_and_releases_it_on_stop() {
        let server = FakeLeaseServer::start(None);
        let metrics = std::sync::Arc::new(Metrics::default());
        let (leadership, elector) = elect(server.client(), &settings("pod-a"), metrics.clone())
            .await
            .expect("the Lease is created");
        assert!(
            !leadership.is_leader(),
            "nobody leads before the Lease is taken"
        );
        within("leadership", leadership.wait_until_leader()).await;
        assert!(metrics.encode().contains("qwp_operator_leader 1"));
        assert_eq!(server.holder().as_deref(), Some("pod-a"));
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.method == "POST" && r.path == server.collection_path()),
            "the missing Lease is created: {requests:?}"
        );
        let take = requests
            .iter()
            .find(|r| r.method == "PATCH" && r.body["spec"]["holderIdentity"] == "pod-a")
            .expect("a patch naming this replica the holder");
        assert_eq!(take.path, server.lease_path());
        assert!(
            take.query.contains("fieldManager=qwp-operator-pod-a"),
            "{}",
            take.query
        );
        assert_eq!(take.body["spec"]["leaseDurationSeconds"], 2);

        within("release", elector.stop()).await;
        assert!(!leadership.is_leader());
        assert!(metrics.encode().contains("qwp_operator_leader 0"));
        assert_eq!(
            server.holder(),
            None,
            "released at once, not left to expire"
        );
        let release = server.requests().into_iter().last().unwrap();
        assert_eq!(release.method, "GET", "the release is read back");
        assert!(server.requests().iter().any(|r| r.method == "PATCH"
            && r.body["spec"].get("holderIdentity") == Some(&serde_json::Value::Null)));
    }

    #[tokio::test]
    async fn a_standby_waits_while_the_holder_renews_and_takes_over_when_it_stops() {
        // Someone else holds the Lease and renewed it just now.
        let server = FakeLeaseServer::start(Some(json!({
            "holderIdentity": "pod-b",
            "leaseDurationSeconds": 2,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now()),
        })));
        let metrics = std::sync::Arc::new(Metrics::default());
        let started = std::time::Instant::now();
        let (leadership, elector) = elect(server.client(), &settings("pod-a"), metrics)
            .await
            .unwrap();
        let mut acquired = Box::pin(leadership.acquired());
        // pod-b never renews again (it was killed): pod-a takes the Lease once it expires.
        within("takeover", acquired.next()).await.unwrap();
        assert!(leadership.is_leader());
        assert_eq!(server.holder().as_deref(), Some("pod-a"));
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "a Lease renewed within its duration is not taken: {:?}",
            started.elapsed()
        );
        elector.stop().await;
    }

    #[tokio::test]
    async fn status_names_the_holder_of_the_lease() {
        let server = FakeLeaseServer::start(Some(json!({"holderIdentity": "pod-b"})));
        let standby = Leadership(watch::channel(false).1);
        let status = status(
            &server.client(),
            "pod-a",
            Some(&settings("pod-a")),
            &standby,
        )
        .await;
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({"identity": "pod-a", "leader": false,
                   "lease": format!("{LEASE_NS}/{LEASE}"), "holder": "pod-b"})
        );
        let requests = server.requests();
        assert_eq!(
            (requests[0].method.as_str(), requests[0].path.as_str()),
            ("GET", server.lease_path().as_str())
        );
        let alone = super::status(&server.client(), "pod-a", None, &Leadership::always()).await;
        assert_eq!(
            (alone.leader, alone.holder.as_deref()),
            (true, Some("pod-a"))
        );
    }
}
