//! What the operator and the worker agree on, in one place, so that a change on one side fails
//! to compile (or a test) on the other:
//!
//! - the environment the operator sets in every worker container: built by
//!   [`container_env`] (the operator) and read by [`QueueEnv::from_vars`] and
//!   [`WorkerEnv::from_vars`] (the worker; the API server reads [`QueueEnv`] too);
//! - the API server's wake-up hint to the operator, [`WAKE_PATH`] (see there);
//! - the worker's `GET` [`STATUS_PATH`] document, [`WorkerStatus`], which the operator reads to
//!   give busy pods a higher deletion cost;
//! - the defaults: [`DEFAULT_ADMIN_PORT`], [`DEFAULT_DRAIN_SECONDS`] (the pool's `drainSeconds`)
//!   and the [`RELEASE_MARGIN_SECONDS`] that turn a drain into the pod's grace period
//!   ([`termination_grace_seconds`]), within which the worker bounds its hand-back.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
use serde::{Deserialize, Serialize};

use crate::crd::QueueWorkerPoolSpec;
use crate::env::{ConfigError, Vars};

/// A full queue URL; wins over [`SQS_REQ_QUEUE_NAME`].
pub const SQS_QUEUE_URL: &str = "SQS_QUEUE_URL";
/// A queue name, resolved to a URL with GetQueueUrl.
pub const SQS_REQ_QUEUE_NAME: &str = "SQS_REQ_QUEUE_NAME";
pub const AWS_REGION: &str = "AWS_REGION";
/// Endpoint override (LocalStack); unset means real AWS.
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// Static keys, from the pool's Secret; unset means the default credential chain (IRSA).
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Jobs one worker process runs at once.
pub const WORKER_CONCURRENCY: &str = "WORKER_CONCURRENCY";
/// Port of the worker's admin server (`/healthz`, `/readyz`, `/metrics`, [`STATUS_PATH`]).
pub const WORKER_ADMIN_PORT: &str = "WORKER_ADMIN_PORT";
/// After SIGTERM, how long in-flight jobs may still run before they are handed back.
pub const WORKER_DRAIN_SECONDS: &str = "WORKER_DRAIN_SECONDS";

/// Every variable [`container_env`] may set. A template's own value of one of them is dropped:
/// a pool's queue must not be overridden by a stale value in the template.
pub const INJECTED_ENV: [&str; 9] = [
    SQS_QUEUE_URL,
    SQS_REQ_QUEUE_NAME,
    AWS_REGION,
    AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    WORKER_CONCURRENCY,
    WORKER_ADMIN_PORT,
    WORKER_DRAIN_SECONDS,
];

/// `spec.concurrency`'s default, and the worker's without the variable.
pub const DEFAULT_CONCURRENCY: u32 = 1;
/// `spec.concurrency`'s maximum, and the most the worker accepts.
pub const MAX_CONCURRENCY: u32 = 1000;
pub const DEFAULT_ADMIN_PORT: u16 = 9090;
pub const DEFAULT_DRAIN_SECONDS: u32 = 25;
/// The longest drain the worker accepts.
pub const MAX_DRAIN_SECONDS: u32 = 3600;
/// Time after the drain for the worker to hand unfinished messages back to the queue and exit
/// before the kubelet's SIGKILL; the worker bounds its hand-back to fit in it.
pub const RELEASE_MARGIN_SECONDS: u32 = 5;
/// Where the worker serves its [`WorkerStatus`] on the admin port.
pub const STATUS_PATH: &str = "/status";

/// The API server's wake-up hint to the operator: `POST` [`WAKE_PATH`]`?queue=NAME` on the
/// operator's admin port. The operator reconciles, at once, the pools whose queue has that
/// name (the last segment of a queue URL, or `queue.name`); it never scales on the hint
/// itself, the reconcile reads the queue as always. Answers: 202 taken by the leader, 503
/// from a standby replica (leader election: only the leader reconciles).
pub const WAKE_PATH: &str = "/internal/v1/wake";
/// The operator's admin port (`QWP_ADMIN_PORT`) by default, where [`WAKE_PATH`] is served.
pub const DEFAULT_OPERATOR_ADMIN_PORT: u16 = 8080;
/// The query parameter of [`WAKE_PATH`].
pub const WAKE_QUEUE_PARAM: &str = "queue";
/// The API server's setting: `host:port` of the operator's admin port (the chart's headless
/// Service, so every replica's address resolves and the hint reaches the leader), or several
/// comma-separated (the replicas' pod IPs, where there is no cluster DNS); unset turns the
/// wake-up off.
pub const OPERATOR_WAKE_ADDRESS_ENV: &str = "OPERATOR_WAKE_ADDRESS";

/// The name a queue URL ends with (`https://sqs…/123/jobs` → `jobs`), or the name itself.
pub fn queue_name_of(url_or_name: &str) -> &str {
    url_or_name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url_or_name)
}

/// The pod's `terminationGracePeriodSeconds` for a worker that drains `drain_seconds`.
pub fn termination_grace_seconds(drain_seconds: u32) -> i64 {
    i64::from(drain_seconds) + i64::from(RELEASE_MARGIN_SECONDS)
}

/// The worker's own part of the injected environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerEnv {
    /// Jobs one pod runs at once.
    pub concurrency: u32,
    /// The admin port: where the worker listens and the operator asks for [`STATUS_PATH`].
    pub admin_port: u16,
    /// After SIGTERM, how long in-flight jobs may still run before they are handed back.
    pub drain_seconds: u32,
}

impl Default for WorkerEnv {
    fn default() -> Self {
        WorkerEnv {
            concurrency: DEFAULT_CONCURRENCY,
            admin_port: DEFAULT_ADMIN_PORT,
            drain_seconds: DEFAULT_DRAIN_SECONDS,
        }
    }
}

impl WorkerEnv {
    /// What the operator sets for a pool, with the admin port it probes. The drain is the
    /// pool's `drainSeconds` (within what the worker accepts, as the CRD's bounds already
    /// ensure); the pod's grace period follows from it ([`Self::termination_grace_seconds`]).
    pub fn for_pool(spec: &QueueWorkerPoolSpec, admin_port: u16) -> Self {
        WorkerEnv {
            concurrency: u32::try_from(spec.concurrency).unwrap_or(DEFAULT_CONCURRENCY),
            admin_port,
            drain_seconds: u32::try_from(spec.drain_seconds)
                .map_or(0, |drain| drain.min(MAX_DRAIN_SECONDS)),
        }
    }

    /// What the worker reads; unset variables take the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(WorkerEnv {
            concurrency: vars.parse_in(
                WORKER_CONCURRENCY,
                DEFAULT_CONCURRENCY,
                1..=MAX_CONCURRENCY,
            )?,
            admin_port: vars.parse(WORKER_ADMIN_PORT, DEFAULT_ADMIN_PORT)?,
            drain_seconds: vars.parse_in(
                WORKER_DRAIN_SECONDS,
                DEFAULT_DRAIN_SECONDS,
                0..=MAX_DRAIN_SECONDS,
            )?,
        })
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(u64::from(self.drain_seconds))
    }

    /// The pod's grace period for this drain.
    pub fn termination_grace_seconds(&self) -> i64 {
        termination_grace_seconds(self.drain_seconds)
    }
}

/// Where the queue is and how to reach it, as a process reads it from its environment: the
/// worker from what the operator injected, the API server from its own deployment. Unset
/// variables are `None`; the defaults are the reader's (see `qwp_jobs::Config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueEnv {
    pub queue_url: Option<String>,
    pub queue_name: Option<String>,
    pub region: Option<String>,
    /// An `http://` or `https://` URL, without a trailing slash.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl QueueEnv {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let endpoint = vars.parse_with(AWS_ENDPOINT_URL, None, |v| {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(Some(v.trim_end_matches('/').to_string()))
            } else {
                Err("must start with http:// or https://".into())
            }
        })?;
        Ok(QueueEnv {
            queue_url: vars.optional(SQS_QUEUE_URL),
            queue_name: vars.optional(SQS_REQ_QUEUE_NAME),
            region: vars.optional(AWS_REGION),
            endpoint,
            access_key_id: vars.optional(AWS_ACCESS_KEY_ID),
            secret_access_key: vars.optional(AWS_SECRET_ACCESS_KEY),
        })
    }
}

/// The environment the operator sets in every container of a pool's pods: the queue (its
/// URL, or its name for the worker to resolve), region, endpoint, the keys as references to
/// the pool's Secret, and `worker`.
pub fn container_env(spec: &QueueWorkerPoolSpec, worker: &WorkerEnv) -> Vec<EnvVar> {
    let queue = &spec.queue;
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    };
    let mut env = Vec::new();
    match (&queue.url, &queue.name) {
        (Some(url), _) => env.push(plain(SQS_QUEUE_URL, url.clone())),
        (None, Some(name)) => env.push(plain(SQS_REQ_QUEUE_NAME, name.clone())),
        (None, None) => {}
    }
    env.push(plain(AWS_REGION, queue.region.clone()));
    if let Some(endpoint) = &queue.endpoint {
        env.push(plain(AWS_ENDPOINT_URL, endpoint.clone()));
    }
    if let Some(secret) = &queue.credentials_secret_ref {
        let from_secret = |name: &str, key: &str| EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: key.to_string(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        };
        env.push(from_secret(AWS_ACCESS_KEY_ID, &secret.access_key_id_key));
        env.push(from_secret(
            AWS_SECRET_ACCESS_KEY,
            &secret.secret_access_key_key,
        ));
    }
    env.push(plain(WORKER_CONCURRENCY, worker.concurrency.to_string()));
    env.push(plain(WORKER_ADMIN_PORT, worker.admin_port.to_string()));
    env.push(plain(
        WORKER_DRAIN_SECONDS,
        worker.drain_seconds.to_string(),
    ));
    env
}

/// The worker's `GET /status` document. The operator needs only `in_flight`; the other fields
/// default when absent, so a worker that sends less still gets its pods ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Jobs running now.
    pub in_flight: usize,
    /// Job slots of the process.
    #[serde(default)]
    pub concurrency: usize,
    /// True from SIGTERM on: the worker receives nothing new.
    #[serde(default)]
    pub draining: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::crd::CredentialsSecretRef;
    use serde_json::json;

    #[test]
    fn a_queue_is_named_by_the_last_segment_of_its_url() {
        assert_eq!(
            queue_name_of("http://localstack:4566/000000000000/jobs"),
            "jobs"
        );
        assert_eq!(
            queue_name_of("https://sqs.eu-west-1.amazonaws.com/1/jobs/"),
            "jobs"
        );
        assert_eq!(queue_name_of("jobs"), "jobs");
    }

    fn spec(template_spec: serde_json::Value) -> QueueWorkerPoolSpec {
        serde_json::from_value(json!({
            "queue": {"url": "http://localstack:4566/000000000000/q", "region": "eu-west-1",
                      "endpoint": "http://localstack:4566"},
            "maxReplicas": 5,
            "concurrency": 4,
            "template": {"spec": template_spec},
        }))
        .unwrap()
    }

    fn containers() -> serde_json::Value {
        json!([{"name": "worker", "image": "qwp-worker"}])
    }

    /// The variables as a container would see them, with secret references resolved from
    /// `secret` (the kubelet's job).
    fn as_seen_by_the_container(
        env: &[EnvVar],
        secret: &HashMap<&str, &str>,
    ) -> HashMap<String, String> {
        env.iter()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), _) => value.clone(),
                    (None, Some(source)) => {
                        let key = &source.secret_key_ref.as_ref().unwrap().key;
                        secret[key.as_str()].to_string()
                    }
                    (None, None) => String::new(),
                };
                (var.name.clone(), value)
            })
            .collect()
    }

    fn vars(seen: HashMap<String, String>) -> Vars<'static> {
        Vars::new(move |name| seen.get(name).cloned())
    }

    #[test]
    fn what_the_operator_builds_the_worker_reads_back() {
        let mut spec = spec(json!({"containers": containers()}));
        spec.queue.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "aws".into(),
            access_key_id_key: "id".into(),
            secret_access_key_key: "key".into(),
        });
        let worker = WorkerEnv::for_pool(&spec, 9191);
        let env = container_env(&spec, &worker);
        let secret = HashMap::from([("id", "AKIDEXAMPLE"), ("key", "s3cr3t")]);
        let seen = vars(as_seen_by_the_container(&env, &secret));

        assert_eq!(WorkerEnv::from_vars(&seen).unwrap(), worker);
        assert_eq!(
            worker,
            WorkerEnv {
                concurrency: 4,
                admin_port: 9191,
                drain_seconds: DEFAULT_DRAIN_SECONDS
            }
        );
        assert_eq!(
            QueueEnv::from_vars(&seen).unwrap(),
            QueueEnv {
                queue_url: spec.queue.url.clone(),
                queue_name: None,
                region: Some("eu-west-1".into()),
                endpoint: Some("http://localstack:4566".into()),
                access_key_id: Some("AKIDEXAMPLE".into()),
                secret_access_key: Some("s3cr3t".into()),
            }
        );
    }

    #[test]
    fn a_queue_name_is_passed_on_for_the_worker_to_resolve() {
        let mut spec = spec(json!({"containers": containers()}));
        spec.queue.url = None;
        spec.queue.name = Some("jobs".into());
        spec.queue.endpoint = None;
        let env = container_env(&spec, &WorkerEnv::for_pool(&spec, DEFAULT_ADMIN_PORT));
        let queue =
            QueueEnv::from_vars(&vars(as_seen_by_the_container(&env, &HashMap::new()))).unwrap();
        assert_eq!(
            (queue.queue_url, queue.queue_name.as_deref(), queue.endpoint),
            (None, Some("jobs"), None)
        );
        assert_eq!(
            queue.access_key_id, None,
            "no Secret: the default credential chain"
        );
    }

    #[test]
    fn every_variable_the_builder_sets_is_declared_injected() {
        let mut spec = spec(json!({"containers": containers()}));
        spec.queue.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "aws".into(),
            access_key_id_key: AWS_ACCESS_KEY_ID.into(),
            secret_access_key_key: AWS_SECRET_ACCESS_KEY.into(),
        });
        let mut by_name = spec.clone();
        by_name.queue.url = None;
        by_name.queue.name = Some("jobs".into());
        let mut seen: Vec<String> = [spec, by_name]
            .iter()
            .flat_map(|s| container_env(s, &WorkerEnv::for_pool(s, DEFAULT_ADMIN_PORT)))
            .map(|var| var.name)
            .collect();
        seen.sort();
        seen.dedup();
        let mut declared: Vec<String> = INJECTED_ENV.iter().map(|n| n.to_string()).collect();
        declared.sort();
        assert_eq!(seen, declared);
    }

    #[test]
    fn the_grace_period_is_the_pools_drain_plus_the_release_margin() {
        assert_eq!(termination_grace_seconds(DEFAULT_DRAIN_SECONDS), 30);
        let with_drain = |drain: i32| {
            let mut spec = spec(json!({"containers": containers()}));
            spec.drain_seconds = drain;
            WorkerEnv::for_pool(&spec, DEFAULT_ADMIN_PORT)
        };
        assert_eq!(with_drain(10).drain_seconds, 10);
        assert_eq!(with_drain(10).termination_grace_seconds(), 15);
        assert_eq!(
            with_drain(0).termination_grace_seconds(),
            i64::from(RELEASE_MARGIN_SECONDS),
            "no drain: hand back at once, still within the margin"
        );
        // Past the CRD's bounds (an API server without validation): what the worker accepts.
        assert_eq!(with_drain(100_000).drain_seconds, MAX_DRAIN_SECONDS);
        assert_eq!(with_drain(-1).drain_seconds, 0);
        let default = WorkerEnv::for_pool(&spec(json!({"containers": containers()})), 1);
        assert_eq!(default.drain(), Duration::from_secs(25));
        assert_eq!(default.termination_grace_seconds(), 30);
    }

    #[test]
    fn unset_variables_take_the_defaults_and_bad_ones_are_named() {
        let none = Vars::new(|_| None);
        assert_eq!(WorkerEnv::from_vars(&none).unwrap(), WorkerEnv::default());
        assert_eq!(QueueEnv::from_vars(&none).unwrap(), QueueEnv::default());
        for (name, value) in [
            (WORKER_CONCURRENCY, "0"),
            (WORKER_CONCURRENCY, "1001"),
            (WORKER_DRAIN_SECONDS, "-1"),
            (WORKER_DRAIN_SECONDS, "3601"),
            (WORKER_ADMIN_PORT, "70000"),
            (AWS_ENDPOINT_URL, "localstack:4566"),
        ] {
            let vars = Vars::from_pairs(&[(name, value)]);
            let err = WorkerEnv::from_vars(&vars)
                .err()
                .or(QueueEnv::from_vars(&vars).err())
                .unwrap_or_else(|| panic!("{name}={value} accepted"));
            assert_eq!(err.name, name, "{value}: {err}");
        }
        let trimmed = QueueEnv::from_vars(&Vars::from_pairs(&[(
            AWS_ENDPOINT_URL,
            "http://localhost:4566/",
        )]))
        .unwrap();
        assert_eq!(trimmed.endpoint.as_deref(), Some("http://localhost:4566"));
    }

    #[test]
    fn the_crd_defaults_and_bounds_are_the_workers() {
        let minimal = spec(json!({"containers": containers()}));
        let defaulted: QueueWorkerPoolSpec = serde_json::from_value(json!({
            "queue": {"url": "http://x/1/q", "region": "us-east-1"},
            "maxReplicas": 1,
            "template": minimal.template,
        }))
        .unwrap();
        assert_eq!(
            WorkerEnv::for_pool(&defaulted, DEFAULT_ADMIN_PORT),
            WorkerEnv::default()
        );
        let crd = serde_json::to_value(<crate::QueueWorkerPool as kube::CustomResourceExt>::crd())
            .unwrap();
        let properties = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        let concurrency = &properties["concurrency"];
        assert_eq!(concurrency["maximum"], json!(f64::from(MAX_CONCURRENCY)));
        assert_eq!(concurrency["default"], json!(DEFAULT_CONCURRENCY));
        let drain = &properties["drainSeconds"];
        assert_eq!(drain["minimum"], json!(0.0));
        assert_eq!(drain["maximum"], json!(f64::from(MAX_DRAIN_SECONDS)));
        assert_eq!(drain["default"], json!(DEFAULT_DRAIN_SECONDS));
    }

    #[test]
    fn the_status_document_reads_in_full_or_with_in_flight_alone() {
        let status = WorkerStatus {
            in_flight: 2,
            concurrency: 4,
            draining: true,
        };
        let json = serde_json::to_value(status).unwrap();
        assert_eq!(
            json,
            json!({"in_flight": 2, "concurrency": 4, "draining": true})
        );
        assert_eq!(
            serde_json::from_value::<WorkerStatus>(json).unwrap(),
            status
        );
        let minimal: WorkerStatus = serde_json::from_str(r#"{"in_flight": 3}"#).unwrap();
        assert_eq!((minimal.in_flight, minimal.draining), (3, false));
    }
}
