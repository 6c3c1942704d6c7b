//! The `QueueWorkerPool` custom resource (`queueworker.io/v1alpha1`, short name `qwp`).
//!
//! The Rust types are the source of the CRD: defaults live in the schema (serde defaults become
//! OpenAPI `default`s) and CEL rules (`x-kubernetes-validations`) reject nonsense at
//! `kubectl apply` time. `crdgen` prints [`crd_yaml`]; `crds/queueworkerpool.yaml` is its
//! checked-in output and a test fails when the two differ.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Rule};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract;

pub const GROUP: &str = "queueworker.io";
/// Label on the Deployment and its pods naming the pool they belong to.
pub const POOL_LABEL: &str = "queueworker.io/pool";
/// Kubernetes' annotation the operator sets on a pool's pods before scaling down: their
/// in-flight job count, so the ReplicaSet removes idle pods first.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Label a Secret must carry (value `"true"`) for the operator to read it as a pool's
/// `credentialsSecretRef`.
pub const CREDENTIALS_LABEL: &str = "queueworker.io/credentials";
/// Annotation of such a Secret listing (comma separated) further keys pools may name as
/// `accessKeyIdKey`/`secretAccessKeyKey`, besides AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
pub const CREDENTIAL_KEYS_ANNOTATION: &str = "queueworker.io/credential-keys";

/// A pool of queue workers: a Deployment whose replicas follow the depth of one SQS queue.
// Several `printcolumn(type_ = "integer", …)` look like duplicated attributes to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "queueworker.io",
    version = "v1alpha1",
    kind = "QueueWorkerPool",
    namespaced,
    shortname = "qwp",
    status = "QueueWorkerPoolStatus",
    derive = "PartialEq",
    doc = "A pool of queue workers: a Deployment whose replicas follow the depth of an SQS queue.",
    printcolumn(name = "Queue", type_ = "string", json_path = ".status.queue"),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.backlog.counted"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas")
    .message("maxReplicas must be greater than or equal to minReplicas"))]
#[x_kube(validation = grace_period_rule())]
#[serde(rename_all = "camelCase")]
pub struct QueueWorkerPoolSpec {
    /// The SQS queue whose depth drives the pool.
    pub queue: QueueSpec,

    /// Fewest replicas; 0 lets an idle pool scale to zero.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most replicas; at least 1 and at least minReplicas, at most 1000 (a typo such as 10000
    /// must not become 10000 pods).
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self <= 1000")
        .message("maxReplicas must be at most 1000"))]
    pub max_replicas: i32,

    /// Jobs one pod runs at once (injected as WORKER_CONCURRENCY).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: i32,

    /// After SIGTERM, how long a pod's running jobs may still finish before the worker hands
    /// them back to the queue (injected as WORKER_DRAIN_SECONDS). The pods'
    /// terminationGracePeriodSeconds is this plus 5 s, the time the worker has to hand back
    /// what is unfinished and exit before SIGKILL.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: i32,

    /// Counted messages one pod should have; desired = ceil(backlog / targetBacklogPerPod).
    /// Unset means `concurrency`: one message per job slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_pod: Option<i32>,

    /// Count messages being processed (ApproximateNumberOfMessagesNotVisible) as backlog,
    /// so a busy pool is not scaled down under its own running jobs.
    #[serde(default = "default_true")]
    pub count_in_flight: bool,

    /// Count delayed messages (ApproximateNumberOfMessagesDelayed) as backlog.
    #[serde(default)]
    pub count_delayed: bool,

    /// A pool at zero wakes only when the counted backlog exceeds this; at or below it the
    /// recommendation is zero. 0: any message wakes the pool.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_backlog: i64,

    /// Seconds between two reads of the queue depth.
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub poll_interval_seconds: i32,

    /// How fast the pool grows. Default: immediately, without step limits.
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,

    /// How fast the pool shrinks. Default: after 60 s of lower recommendations, without step limits.
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,

    /// Hold the current replicas; the queue is still read and reported.
    #[serde(default)]
    pub paused: bool,

    /// The worker pod template. The operator sets the queue settings, WORKER_CONCURRENCY,
    /// WORKER_ADMIN_PORT and WORKER_DRAIN_SECONDS in every container's environment, and the
    /// pod's terminationGracePeriodSeconds from drainSeconds (leave it unset here).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
}

/// Where the queue is and how to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.url) != has(self.name)")
    .message("set exactly one of queue.url or queue.name"))]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Full queue URL, e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("queue.url must start with http:// or https://"))]
    pub url: Option<String>,

    /// Queue name, resolved to a URL with GetQueueUrl (alternative to url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 80))]
    pub name: Option<String>,

    /// AWS region of the queue, e.g. us-east-1.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9-]+$')")
        .message("queue.region must be an AWS region name such as us-east-1"))]
    pub region: String,

    /// Endpoint override, e.g. http://localstack.localstack:4566. Unset means real AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("queue.endpoint must start with http:// or https://"))]
    pub endpoint: Option<String>,

    /// An IAM role the operator assumes (STS AssumeRole, with its own credentials or the
    /// Secret's) to read this queue, e.g. in another account. The workers are not given it:
    /// they use their service account's identity (IRSA, EKS Pod Identity) or the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$')")
        .message("queue.roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/reader"))]
    pub role_arn: Option<String>,

    /// A Secret in the pool's namespace with static AWS keys, for the operator and the workers.
    /// Unset means the default AWS credential chain (IRSA, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

/// Stabilization window and step limits for one direction, like the HPA's `behavior`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Scale up to the lowest (down: to the highest) recommendation of this many last seconds,
    /// which smooths out short spikes (dips).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,

    /// Step limits; empty means no limit. Each allows a change of `value` pods or percent per
    /// `periodSeconds`.
    #[serde(default)]
    pub policies: Vec<StepPolicy>,

    /// Which policy wins when there are several: Max allows the largest change, Min the
    /// smallest, Disabled forbids scaling in this direction.
    #[serde(default)]
    pub select_policy: SelectPolicy,
}

impl ScalingRules {
    pub fn default_up() -> Self {
        ScalingRules {
            stabilization_window_seconds: 0,
            policies: Vec::new(),
            select_policy: SelectPolicy::Max,
        }
    }

    pub fn default_down() -> Self {
        ScalingRules {
            stabilization_window_seconds: 60,
            ..Self::default_up()
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepPolicy {
    #[serde(rename = "type")]
    pub kind: StepKind,
    /// Pods, or percent of the replicas at the start of the period.
    #[schemars(range(min = 1))]
    pub value: i32,
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Pods,
    Percent,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// What the operator saw and did, written with server-side apply on the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueWorkerPoolStatus {
    /// The pool generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The queue the operator reads (URL, or name until it is resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Replicas of the Deployment (its status).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the operator set on the Deployment.
    #[serde(default)]
    pub desired_replicas: i32,
    /// The last queue depth read; absent while the queue has never been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Ready, QueueReachable, ScalingLimited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BacklogStatus {
    /// ApproximateNumberOfMessages.
    pub visible: i64,
    /// ApproximateNumberOfMessagesNotVisible.
    pub in_flight: i64,
    /// ApproximateNumberOfMessagesDelayed.
    pub delayed: i64,
    /// The backlog the decision used: visible plus the parts the spec counts.
    pub counted: i64,
}

impl QueueWorkerPoolSpec {
    /// targetBacklogPerPod, or concurrency when unset.
    pub fn effective_target_backlog_per_pod(&self) -> i32 {
        self.target_backlog_per_pod
            .unwrap_or(self.concurrency)
            .max(1)
    }
}

fn default_concurrency() -> i32 {
    contract::DEFAULT_CONCURRENCY as i32
}
fn default_drain_seconds() -> i32 {
    contract::DEFAULT_DRAIN_SECONDS as i32
}
fn default_true() -> bool {
    true
}
fn default_poll_interval() -> i32 {
    5
}
// A Secret's keys default to the names of the variables they end up in.
fn default_access_key_id_key() -> String {
    contract::AWS_ACCESS_KEY_ID.into()
}
fn default_secret_access_key_key() -> String {
    contract::AWS_SECRET_ACCESS_KEY.into()
}

/// The grace period is drainSeconds plus the release margin
/// ([`contract::termination_grace_seconds`]): a template may leave it out or repeat that value,
/// but not set another, which would let the kubelet kill the worker before it has handed its
/// unfinished messages back (or keep a dead pod around for nothing).
fn grace_period_rule() -> Rule {
    Rule::new(format!(
        "!has(self.template.spec.terminationGracePeriodSeconds) || \
         self.template.spec.terminationGracePeriodSeconds == self.drainSeconds + {margin}",
        margin = contract::RELEASE_MARGIN_SECONDS
    ))
    .message(Message::Message(format!(
        "template.spec.terminationGracePeriodSeconds must be unset (or drainSeconds + {margin}): \
         the operator sets it to drainSeconds + {margin} s; set spec.drainSeconds instead",
        margin = contract::RELEASE_MARGIN_SECONDS
    )))
}

/// The pod template as an object with the parts the operator relies on (at least one container
/// with a name and an image); the rest is kept as given and validated by the API server when the
/// operator applies the Deployment. Embedding the full PodTemplateSpec schema would make the CRD
/// several hundred kilobytes, too big for client-side `kubectl apply`.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The worker pod template (a Deployment's spec.template).",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "spec": {
                "type": "object",
                "required": ["containers"],
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    // Declared so the grace-period rule can read it.
                    "terminationGracePeriodSeconds": {"type": "integer", "format": "int64"},
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "image"],
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "image": {"type": "string", "minLength": 1}
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Standard conditions, merged by type under server-side apply.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "message": {"type": "string"}
            }
        }
    })
}

/// The CRD as YAML, as `crdgen` prints it and `crds/queueworkerpool.yaml` holds it.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&QueueWorkerPool::crd()).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::cel::Validator;
    use serde_json::{Value, json};

    const CHECKED_IN: &str = include_str!("../../crds/queueworkerpool.yaml");

    #[test]
    fn checked_in_crd_matches_the_types() {
        assert!(
            CHECKED_IN == crd_yaml(),
            "crds/queueworkerpool.yaml is stale: run `make crds` (cargo run -p qwp-pool --bin crdgen > crds/queueworkerpool.yaml)"
        );
    }

    fn schema() -> Value {
        let crd = QueueWorkerPool::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap(),
        )
        .unwrap()
    }

    fn pool(spec: Value) -> Value {
        json!({
            "apiVersion": "queueworker.io/v1alpha1",
            "kind": "QueueWorkerPool",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": spec,
        })
    }

    fn valid_spec() -> Value {
        json!({
            "queue": {"url": "http://localstack:4566/000000000000/jobs", "region": "us-east-1"},
            "minReplicas": 0,
            "maxReplicas": 5,
            "template": {"spec": {"containers": [{"name": "worker", "image": "qwp-worker"}]}},
        })
    }

    /// The CEL messages the API server would return for this object, evaluated client-side.
    fn cel_errors(spec: Value) -> Vec<String> {
        match Validator::new().validate(&schema(), &pool(spec), None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_sensible_pool_passes_the_cel_rules() {
        assert_eq!(cel_errors(valid_spec()), Vec::<String>::new());
        let mut by_name = valid_spec();
        by_name["queue"] = json!({"name": "jobs", "region": "eu-west-1"});
        assert_eq!(cel_errors(by_name), Vec::<String>::new());
    }

    #[test]
    fn cel_rejects_max_below_min_with_a_readable_message() {
        let mut spec = valid_spec();
        spec["minReplicas"] = json!(4);
        spec["maxReplicas"] = json!(2);
        let errors = cel_errors(spec);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("maxReplicas must be greater than or equal to minReplicas")),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_bounds_max_replicas_and_region_names() {
        let mut spec = valid_spec();
        spec["maxReplicas"] = json!(1000);
        assert_eq!(cel_errors(spec.clone()), Vec::<String>::new());
        spec["maxReplicas"] = json!(1001);
        let errors = cel_errors(spec);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("maxReplicas must be at most 1000")),
            "{errors:?}"
        );
        let mut spec = valid_spec();
        spec["queue"]["region"] = json!("evil.example/");
        let errors = cel_errors(spec);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("queue.region must be an AWS region name")),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_accepts_only_iam_role_arns() {
        let mut spec = valid_spec();
        spec["queue"]["roleArn"] = json!("arn:aws:iam::123456789012:role/reader");
        assert_eq!(cel_errors(spec.clone()), Vec::<String>::new());
        spec["queue"]["roleArn"] = json!("arn:aws:iam::123:user/someone");
        let errors = cel_errors(spec);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("queue.roleArn must be an IAM role ARN")),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_requires_exactly_one_of_url_or_name() {
        let mut both = valid_spec();
        both["queue"]["name"] = json!("jobs");
        let mut neither = valid_spec();
        neither["queue"] = json!({"region": "us-east-1"});
        for spec in [both, neither] {
            let errors = cel_errors(spec);
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("set exactly one of queue.url or queue.name")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn cel_rejects_urls_without_a_scheme() {
        let mut spec = valid_spec();
        spec["queue"]["url"] = json!("sqs.us-east-1.amazonaws.com/1/jobs");
        spec["queue"]["endpoint"] = json!("localstack:4566");
        let errors = cel_errors(spec);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("queue.url must start with")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("queue.endpoint must start with")),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_rejects_a_template_grace_period_other_than_drain_plus_margin() {
        let with = |drain: Option<i64>, grace: Option<i64>| {
            let mut spec = valid_spec();
            if let Some(drain) = drain {
                spec["drainSeconds"] = json!(drain);
            }
            if let Some(grace) = grace {
                spec["template"]["spec"]["terminationGracePeriodSeconds"] = json!(grace);
            }
            cel_errors(spec)
        };
        let rejected = |errors: Vec<String>| {
            errors.iter().any(|e| {
                e.contains("template.spec.terminationGracePeriodSeconds must be unset")
                    && e.contains("set spec.drainSeconds instead")
            })
        };
        assert_eq!(with(Some(10), None), Vec::<String>::new());
        assert_eq!(
            with(Some(10), Some(15)),
            Vec::<String>::new(),
            "the value the operator sets anyway"
        );
        assert_eq!(
            with(None, Some(30)),
            Vec::<String>::new(),
            "the default drain (25) plus the margin"
        );
        assert!(rejected(with(None, Some(2))));
        assert!(rejected(with(Some(25), Some(2))));
        assert!(rejected(with(Some(10), Some(30))));
    }

    #[test]
    fn schema_carries_the_defaults_and_bounds() {
        let schema = schema();
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec["minReplicas"]["default"], json!(0));
        assert_eq!(spec["concurrency"]["default"], json!(1));
        assert_eq!(spec["countInFlight"]["default"], json!(true));
        assert_eq!(spec["countDelayed"]["default"], json!(false));
        assert_eq!(spec["activationBacklog"]["default"], json!(0));
        assert_eq!(spec["pollIntervalSeconds"]["default"], json!(5));
        assert_eq!(
            spec["scaleUp"]["default"]["stabilizationWindowSeconds"],
            json!(0)
        );
        assert_eq!(
            spec["scaleDown"]["default"]["stabilizationWindowSeconds"],
            json!(60)
        );
        assert_eq!(spec["maxReplicas"]["minimum"], json!(1.0));
        assert_eq!(spec["concurrency"]["minimum"], json!(1.0));
        assert_eq!(spec["drainSeconds"]["default"], json!(25));
        assert_eq!(
            (
                &spec["drainSeconds"]["minimum"],
                &spec["drainSeconds"]["maximum"]
            ),
            (&json!(0.0), &json!(3600.0))
        );
        assert_eq!(
            spec["template"]["properties"]["spec"]["properties"]["containers"]["minItems"],
            json!(1)
        );
        let required = schema["properties"]["spec"]["required"].as_array().unwrap();
        assert!(required.contains(&json!("maxReplicas")) && required.contains(&json!("template")));
    }

    #[test]
    fn crd_has_short_name_status_and_printer_columns() {
        let crd = QueueWorkerPool::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("queueworkerpools.queueworker.io")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["qwp".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Queue", "Backlog", "Desired", "Ready", "Age"]);
    }

    #[test]
    fn spec_defaults_apply_when_deserializing_a_minimal_pool() {
        let spec: QueueWorkerPoolSpec = serde_json::from_value(valid_spec()).unwrap();
        assert_eq!(spec.concurrency, 1);
        assert!(spec.count_in_flight && !spec.count_delayed && !spec.paused);
        assert_eq!(spec.effective_target_backlog_per_pod(), 1);
        assert_eq!(spec.scale_down, ScalingRules::default_down());
        assert_eq!(spec.poll_interval_seconds, 5);
        assert_eq!(spec.drain_seconds, 25);
    }
}
