//! Safe scale-down: before lowering replicas, the pool's pods get the
//! `controller.kubernetes.io/pod-deletion-cost` annotation set to their in-flight job count
//! (read from each worker's admin endpoint `GET /status`, [`qwp_pool::contract::WorkerStatus`]),
//! so the ReplicaSet removes idle pods first and busy ones last.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use qwp_pool::contract::{STATUS_PATH, WorkerStatus};
pub use qwp_pool::crd::DELETION_COST_ANNOTATION;

/// Asks one worker how many jobs it is running; `None` when it cannot tell.
pub trait InFlightProbe: Send + Sync {
    fn in_flight<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Option<u32>>;
}

/// `GET http://<pod IP>:<port>/status` → [`WorkerStatus`], with a short timeout so a hung pod
/// cannot stall the reconcile.
pub struct HttpInFlightProbe {
    client: reqwest::Client,
    port: u16,
}

impl HttpInFlightProbe {
    pub fn new(port: u16, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client with timeouts builds");
        HttpInFlightProbe { client, port }
    }
}

impl InFlightProbe for HttpInFlightProbe {
    fn in_flight<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Option<u32>> {
        Box::pin(async move {
            // An IPv6 pod address needs brackets in a URL.
            let host = if pod_ip.contains(':') {
                format!("[{pod_ip}]")
            } else {
                pod_ip.to_string()
            };
            let url = format!("http://{host}:{}{STATUS_PATH}", self.port);
            let response = self.client.get(&url).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response
                .json::<WorkerStatus>()
                .await
                .ok()
                .map(|s| u32::try_from(s.in_flight).unwrap_or(u32::MAX))
        })
    }
}

/// A pod whose deletion cost must be (re)written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostChange {
    pub pod: String,
    pub cost: i32,
}

/// The cost of each pod from its in-flight count; a pod that could not be asked costs 0 (the
/// ReplicaSet prefers unready pods anyway). Pods already being deleted are left alone, and
/// pods whose annotation already holds the cost are skipped to save API writes.
pub fn plan_costs(pods: &[(Pod, Option<u32>)]) -> Vec<CostChange> {
    pods.iter()
        .filter(|(pod, _)| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|(pod, in_flight)| {
            let cost = i32::try_from(in_flight.unwrap_or(0)).unwrap_or(i32::MAX);
            let current = pod.annotations().get(DELETION_COST_ANNOTATION);
            (current.map(String::as_str) != Some(cost.to_string().as_str())).then(|| CostChange {
                pod: pod.name_any(),
                cost,
            })
        })
        .collect()
}

/// The merge patch that sets one pod's cost.
pub fn cost_patch(cost: i32) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, annotation: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        if let Some(value) = annotation {
            pod.annotations_mut()
                .insert(DELETION_COST_ANNOTATION.into(), value.into());
        }
        pod
    }

    #[test]
    fn busy_pods_cost_more_and_unknown_pods_cost_nothing() {
        let pods = vec![
            (pod("idle", None), Some(0)),
            (pod("busy", None), Some(3)),
            (pod("mute", None), None),
        ];
        assert_eq!(
            plan_costs(&pods),
            vec![
                CostChange {
                    pod: "idle".into(),
                    cost: 0
                },
                CostChange {
                    pod: "busy".into(),
                    cost: 3
                },
                CostChange {
                    pod: "mute".into(),
                    cost: 0
                },
            ]
        );
    }

    #[test]
    fn unchanged_and_terminating_pods_are_not_patched() {
        let mut leaving = pod("leaving", None);
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = vec![
            (pod("same", Some("2")), Some(2)),
            (leaving, Some(5)),
            (pod("stale", Some("9")), Some(1)),
        ];
        assert_eq!(
            plan_costs(&pods),
            vec![CostChange {
                pod: "stale".into(),
                cost: 1
            }]
        );
    }

    #[test]
    fn patch_sets_the_annotation_as_a_string() {
        assert_eq!(
            cost_patch(4),
            serde_json::json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "4"}}})
        );
    }

    #[tokio::test]
    async fn http_probe_reads_the_worker_status_and_tolerates_silence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            let body = r#"{"in_flight": 2, "concurrency": 4, "draining": false}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        let probe = HttpInFlightProbe::new(port, Duration::from_secs(2));
        assert_eq!(probe.in_flight("127.0.0.1").await, Some(2));
        // Nothing listens any more: the probe answers None instead of failing the reconcile.
        assert_eq!(probe.in_flight("127.0.0.1").await, None);
    }
}
