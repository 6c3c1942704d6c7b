//! Safe scale-down: before lowering replicas, the pool's pods get the
//! `controller.kubernetes.io/pod-deletion-cost` annotation set to their in-flight job count
//! (read from each worker's admin endpoint `GET /status`, [`qwp_pool::contract::WorkerStatus`]),
//! so the ReplicaSet removes idle pods first and busy ones last. A pod that does not answer
//! (often a busy, CPU-starved one) is treated as busy, never as idle. The probes and the patches
//! run in parallel, at most [`PROBE_CONCURRENCY`] and [`PATCH_CONCURRENCY`] at a time.

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

/// Pods asked at once: a 200-pod pool takes a few rounds of the probe timeout at worst, and the
/// operator never opens hundreds of connections at once.
pub const PROBE_CONCURRENCY: usize = 32;
/// Deletion-cost patches sent at once (the API server's client-side rate limits apply too).
pub const PATCH_CONCURRENCY: usize = 16;

/// `GET http://<pod IP>:<port>/status` → [`WorkerStatus`], with a short timeout so a hung pod
/// cannot stall the reconcile, and no redirects (a pod cannot send the operator elsewhere).
pub struct HttpInFlightProbe {
    client: reqwest::Client,
    port: u16,
}

impl HttpInFlightProbe {
    pub fn new(port: u16, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
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

/// The cost of each pod from its in-flight count. A pod that could not be asked counts as busy:
/// it keeps its previous cost, and costs at least `busy_cost` (a full pod's jobs), so it goes
/// after every pod known to be idle. (Unready pods go first anyway: the ReplicaSet ranks
/// readiness before cost.) Pods already being deleted are left alone, and pods whose
/// annotation already holds the cost are skipped to save API writes.
pub fn plan_costs(pods: &[(Pod, Option<u32>)], busy_cost: i32) -> Vec<CostChange> {
    pods.iter()
        .filter(|(pod, _)| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|(pod, in_flight)| {
            let current = pod.annotations().get(DELETION_COST_ANNOTATION);
            let cost = match in_flight {
                Some(n) => i32::try_from(*n).unwrap_or(i32::MAX),
                None => current
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or(busy_cost)
                    .max(busy_cost),
            };
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
    fn busy_pods_cost_more_and_silent_pods_count_as_busy() {
        let pods = vec![
            (pod("idle", None), Some(0)),
            (pod("busy", None), Some(3)),
            (pod("mute", None), None),
            (pod("mute-was-busier", Some("9")), None),
            (pod("mute-was-idle", Some("0")), None),
        ];
        assert_eq!(
            plan_costs(&pods, 4),
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
                    cost: 4
                },
                // "mute-was-busier" keeps its 9: nothing to write.
                CostChange {
                    pod: "mute-was-idle".into(),
                    cost: 4
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
            plan_costs(&pods, 1),
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

    /// One connection on `listener` answered with `response` (after reading the request).
    async fn answer_once(listener: tokio::net::TcpListener, response: String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await.unwrap();
        socket.write_all(response.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn http_probe_does_not_follow_redirects() {
        // Where a redirect would lead: a worker status saying 7 jobs. Never asked.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_port = elsewhere.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(answer_once(
            listener,
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{elsewhere_port}/status\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
        ));
        let probe = HttpInFlightProbe::new(port, Duration::from_secs(2));
        assert_eq!(probe.in_flight("127.0.0.1").await, None);
        let followed = tokio::time::timeout(Duration::from_millis(1), elsewhere.accept()).await;
        assert!(followed.is_err(), "the redirect target got a connection");
    }

    #[tokio::test]
    async fn http_probe_gives_up_on_a_pod_that_does_not_answer_in_time() {
        // Accepts (the kernel does, from the backlog) and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = HttpInFlightProbe::new(port, Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(probe.in_flight("127.0.0.1").await, None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(listener);
    }
}
