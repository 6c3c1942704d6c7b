//! QueueWorkerPools for the tests: the qwp-worker image with the `sleep` processor, reading
//! a test's private queue (qwp_jobs::testing::TestStack) through the endpoint pods reach.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use qwp_jobs::testing::TestStack;
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::{CREDENTIALS_LABEL, QueueWorkerPool};
use serde_json::{Value, json};

use crate::settings::Settings;

/// Name of the Secret with LocalStack's keys that every test namespace gets.
pub const AWS_SECRET: &str = "aws";

#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub name: String,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub concurrency: i32,
    pub poll_interval_seconds: i32,
    pub scale_down_window_seconds: i32,
    pub count_in_flight: bool,
    /// WORKER_SLEEP_SECONDS: `1` or a range `2-20`.
    pub sleep_seconds: String,
    /// The pool's drainSeconds: the operator injects it as WORKER_DRAIN_SECONDS and gives the
    /// pods a grace period of this plus the release margin.
    pub drain_seconds: u32,
    /// SQS_VISIBILITY_TIMEOUT_SECONDS of the workers.
    pub visibility_timeout_seconds: u32,
    /// Endpoint override for pods (the outage test's proxy); default: Settings.
    pub endpoint: Option<String>,
}

impl PoolOptions {
    pub fn new(name: &str) -> Self {
        PoolOptions {
            name: name.to_string(),
            min_replicas: 0,
            max_replicas: 4,
            concurrency: 1,
            poll_interval_seconds: 2,
            scale_down_window_seconds: 20,
            count_in_flight: true,
            sleep_seconds: "1".into(),
            drain_seconds: 10,
            visibility_timeout_seconds: 30,
            endpoint: None,
        }
    }
}

/// The pool object for `stack`'s queue and buckets.
pub fn pool_object(stack: &TestStack, o: &PoolOptions) -> QueueWorkerPool {
    let s = Settings::get();
    let endpoint = o
        .endpoint
        .clone()
        .unwrap_or_else(|| s.pod_aws_endpoint.clone());
    let env = |name: &str, value: String| json!({"name": name, "value": value});
    let value: Value = json!({
        "apiVersion": "queueworker.io/v1alpha1",
        "kind": "QueueWorkerPool",
        "metadata": {"name": o.name},
        "spec": {
            "queue": {
                "name": stack.config.sqs_req_queue_name,
                "region": s.region,
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": AWS_SECRET},
            },
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "concurrency": o.concurrency,
            "pollIntervalSeconds": o.poll_interval_seconds,
            "countInFlight": o.count_in_flight,
            "drainSeconds": o.drain_seconds,
            "scaleDown": {"stabilizationWindowSeconds": o.scale_down_window_seconds},
            "template": {
                "spec": {
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "worker",
                        "image": s.image("qwp-worker"),
                        "imagePullPolicy": "IfNotPresent",
                        "env": [
                            env("S3_IN_BUCKET", stack.config.s3_in_bucket.clone()),
                            env("S3_OUT_BUCKET", stack.config.s3_out_bucket.clone()),
                            env("SQS_WAIT_TIME_SECONDS", "2".into()),
                            env("SQS_VISIBILITY_TIMEOUT_SECONDS", o.visibility_timeout_seconds.to_string()),
                            env("WORKER_PROCESSOR", "sleep".into()),
                            env("WORKER_SLEEP_SECONDS", o.sleep_seconds.clone()),
                            env("WORKER_RETRY_BASE_SECONDS", "1".into()),
                            env("WORKER_RETRY_MAX_SECONDS", "5".into()),
                            env("LOG_FORMAT", "json".into()),
                        ],
                        "ports": [{"name": "admin", "containerPort": DEFAULT_ADMIN_PORT}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        "securityContext": {
                            "runAsNonRoot": true,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    });
    serde_json::from_value(value).expect("the test pool matches the CRD types")
}

/// The Secret with LocalStack's keys (`test`/`test`) the pools and the API server use.
pub async fn create_aws_secret(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": AWS_SECRET, "labels": {CREDENTIALS_LABEL: "true"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    }))
    .expect("secret object");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("cannot create Secret {ns}/{AWS_SECRET}: {e}"));
}

pub async fn create_pool(client: &Client, ns: &str, pool: &QueueWorkerPool) -> QueueWorkerPool {
    let pools: Api<QueueWorkerPool> = Api::namespaced(client.clone(), ns);
    pools
        .create(&PostParams::default(), pool)
        .await
        .unwrap_or_else(|e| panic!("cannot create pool {ns}/{:?}: {e}", pool.metadata.name))
}
