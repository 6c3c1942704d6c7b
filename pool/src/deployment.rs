//! The pool's Deployment, built (purely) from the pool, the desired replicas and the port the
//! operator asks workers for `/status` on. Every container gets the worker environment of
//! [`crate::contract::container_env`]. The operator applies it; the KEDA benchmark creates the
//! same Deployment for KEDA to scale.
//!
//! The operator owns the Deployment: it is named after the pool, carries an owner reference
//! (garbage-collected with the pool) and is applied with server-side apply and force, so a
//! hand edit of `spec.replicas` is taken back on the next reconcile.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::contract::{INJECTED_ENV, WorkerEnv, container_env};
use crate::crd::{POOL_LABEL, QueueWorkerPool};

/// Hash of everything the operator sets on the Deployment except the replicas; equal hashes
/// and equal replicas mean there is nothing to apply.
pub const SPEC_HASH_ANNOTATION: &str = "queueworker.io/spec-hash";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "qwp-operator");

/// A pool without a namespace cannot have a Deployment (QueueWorkerPool is namespaced).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pool {0} has no namespace (QueueWorkerPool is namespaced)")]
pub struct MissingNamespace(pub String);

pub fn selector_labels(pool: &QueueWorkerPool) -> BTreeMap<String, String> {
    BTreeMap::from([(POOL_LABEL.to_string(), pool.name_any())])
}

/// The Deployment to apply for `pool` with `replicas`; its workers serve `/status` on
/// `worker_admin_port`, where the operator asks them.
pub fn build_deployment(
    pool: &QueueWorkerPool,
    replicas: i32,
    worker_admin_port: u16,
) -> Result<Deployment, MissingNamespace> {
    let name = pool.name_any();
    let namespace = pool
        .namespace()
        .ok_or_else(|| MissingNamespace(name.clone()))?;
    let selector = selector_labels(pool);

    let mut template = pool.spec.template.clone();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(selector.clone());
    let pod_spec = template.spec.get_or_insert_with(Default::default);
    let worker = WorkerEnv::for_pool(&pool.spec, worker_admin_port);
    let injected = container_env(&pool.spec, &worker);
    for container in &mut pod_spec.containers {
        // Ours win: a pool's queue must not be overridden by a stale value in the template.
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|var| !INJECTED_ENV.contains(&var.name.as_str()));
        env.extend(injected.iter().cloned());
    }
    // One budget: the kubelet waits the drain plus the release margin before SIGKILL. (The
    // CRD rejects a template with another grace period; one stored before the rule is
    // overridden here.)
    pod_spec.termination_grace_period_seconds = Some(worker.termination_grace_seconds());

    let mut labels = selector.clone();
    labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    let mut deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let hash = spec_hash(&deployment);
    deployment
        .annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    Ok(deployment)
}

/// SHA-256 of the Deployment's canonical JSON (object keys sorted, as serde_json's map keeps
/// them): the same for the same Deployment across builds, Rust releases and platforms, so an
/// operator upgrade does not re-apply every Deployment.
fn spec_hash(deployment: &Deployment) -> String {
    let canonical = serde_json::to_value(deployment)
        .and_then(|value| serde_json::to_vec(&value))
        .expect("a Deployment serializes");
    Sha256::digest(&canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `existing` already is what applying `wanted` would make it.
pub fn is_up_to_date(existing: &Deployment, wanted: &Deployment) -> bool {
    let hash = |d: &Deployment| d.annotations().get(SPEC_HASH_ANNOTATION).cloned();
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    hash(existing).is_some()
        && hash(existing) == hash(wanted)
        && replicas(existing) == replicas(wanted)
}

/// The Deployment's `spec.replicas`, 0 when it does not exist yet.
pub fn current_replicas(existing: Option<&Deployment>) -> u32 {
    existing
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{
        AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AWS_REGION, AWS_SECRET_ACCESS_KEY, DEFAULT_ADMIN_PORT,
        SQS_QUEUE_URL, SQS_REQ_QUEUE_NAME, WORKER_ADMIN_PORT, WORKER_CONCURRENCY,
        WORKER_DRAIN_SECONDS,
    };
    use crate::crd::{CredentialsSecretRef, QueueWorkerPoolSpec};
    use serde_json::json;

    pub fn pool(spec: serde_json::Value) -> QueueWorkerPool {
        let spec: QueueWorkerPoolSpec = serde_json::from_value(spec).unwrap();
        let mut pool = QueueWorkerPool::new("thumbs", spec);
        pool.metadata.namespace = Some("jobs".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    fn spec() -> serde_json::Value {
        json!({
            "queue": {"url": "http://localstack:4566/000000000000/q", "region": "eu-west-1",
                      "endpoint": "http://localstack:4566"},
            "maxReplicas": 5,
            "concurrency": 4,
            "template": {
                "metadata": {"labels": {"app": "thumbs"}},
                "spec": {"containers": [
                    {"name": "worker", "image": "qwp-worker:dev",
                     "env": [{"name": "WORKER_PROCESSOR", "value": "sleep"},
                             {"name": SQS_QUEUE_URL, "value": "stale"},
                             {"name": WORKER_DRAIN_SECONDS, "value": "600"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]}
            }
        })
    }

    fn env_of(deployment: &Deployment, container: usize) -> Vec<(String, String)> {
        let spec = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        spec.containers[container]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let value = e.value.unwrap_or_else(|| {
                    let key = e.value_from.unwrap().secret_key_ref.unwrap();
                    format!("secret:{}/{}", key.name, key.key)
                });
                (e.name, value)
            })
            .collect()
    }

    #[test]
    fn deployment_is_owned_labelled_and_sized() {
        let d = build_deployment(&pool(spec()), 3, DEFAULT_ADMIN_PORT).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("thumbs"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("jobs"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("QueueWorkerPool", "thumbs", "uid-1", Some(true))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(selector.get(POOL_LABEL).map(String::as_str), Some("thumbs"));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(
            pod_labels.get("app").map(String::as_str),
            Some("thumbs"),
            "user labels kept"
        );
        assert_eq!(
            pod_labels.get(POOL_LABEL).map(String::as_str),
            Some("thumbs")
        );
        let pod_spec = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod_spec.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn queue_settings_are_injected_into_every_container_and_win() {
        let d = build_deployment(&pool(spec()), 1, DEFAULT_ADMIN_PORT).unwrap();
        for container in 0..2 {
            let env = env_of(&d, container);
            let get = |name: &str| {
                env.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                get(SQS_QUEUE_URL),
                ["http://localstack:4566/000000000000/q"]
            );
            assert_eq!(get(AWS_REGION), ["eu-west-1"]);
            assert_eq!(get(AWS_ENDPOINT_URL), ["http://localstack:4566"]);
            assert_eq!(get(WORKER_CONCURRENCY), ["4"]);
            assert_eq!(get(WORKER_ADMIN_PORT), ["9090"]);
            assert_eq!(
                get(WORKER_DRAIN_SECONDS),
                ["25"],
                "the template's 600 is replaced"
            );
            assert!(
                get(AWS_ACCESS_KEY_ID).is_empty(),
                "no keys without a Secret: IRSA"
            );
        }
        assert!(env_of(&d, 0).contains(&("WORKER_PROCESSOR".into(), "sleep".into())));
    }

    #[test]
    fn credentials_come_from_the_secret_and_names_are_passed_on() {
        let mut pool = pool(spec());
        pool.spec.queue.url = None;
        pool.spec.queue.name = Some("jobs".into());
        pool.spec.queue.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "aws".into(),
            access_key_id_key: "id".into(),
            secret_access_key_key: "secret".into(),
        });
        let env = env_of(&build_deployment(&pool, 1, DEFAULT_ADMIN_PORT).unwrap(), 0);
        assert!(env.contains(&(SQS_REQ_QUEUE_NAME.into(), "jobs".into())));
        assert!(
            !env.iter().any(|(n, _)| n == SQS_QUEUE_URL),
            "the stale template value is gone"
        );
        assert!(env.contains(&(AWS_ACCESS_KEY_ID.into(), "secret:aws/id".into())));
        assert!(env.contains(&(AWS_SECRET_ACCESS_KEY.into(), "secret:aws/secret".into())));
    }

    #[test]
    fn the_drain_and_the_grace_period_come_from_one_budget() {
        let grace_of = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .termination_grace_period_seconds
        };
        let drain_of = |d: &Deployment| {
            env_of(d, 0)
                .into_iter()
                .find(|(n, _)| n == WORKER_DRAIN_SECONDS)
                .map(|(_, v)| v)
        };
        let default = build_deployment(&pool(spec()), 1, DEFAULT_ADMIN_PORT).unwrap();
        assert_eq!(
            (grace_of(&default), drain_of(&default).as_deref()),
            (Some(30), Some("25"))
        );

        let mut short = pool(spec());
        short.spec.drain_seconds = 10;
        let short = build_deployment(&short, 1, DEFAULT_ADMIN_PORT).unwrap();
        assert_eq!(
            (grace_of(&short), drain_of(&short).as_deref()),
            (Some(15), Some("10"))
        );

        let mut stale = pool(spec());
        stale
            .spec
            .template
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = Some(2);
        let stale = build_deployment(&stale, 1, DEFAULT_ADMIN_PORT).unwrap();
        assert_eq!(
            (grace_of(&stale), drain_of(&stale).as_deref()),
            (Some(30), Some("25")),
            "a template's own grace period (stored before the CRD rule) does not cut the drain short"
        );
    }

    #[test]
    fn workers_serve_status_on_the_port_the_operator_asks() {
        let d = build_deployment(&pool(spec()), 1, 9191).unwrap();
        assert!(env_of(&d, 1).contains(&(WORKER_ADMIN_PORT.into(), "9191".into())));
    }

    #[test]
    fn hash_ignores_replicas_but_not_the_template() {
        let p = pool(spec());
        let a = build_deployment(&p, 1, DEFAULT_ADMIN_PORT).unwrap();
        let b = build_deployment(&p, 7, DEFAULT_ADMIN_PORT).unwrap();
        assert_eq!(
            a.annotations()[SPEC_HASH_ANNOTATION],
            b.annotations()[SPEC_HASH_ANNOTATION]
        );
        assert!(
            is_up_to_date(&a, &a) && !is_up_to_date(&a, &b),
            "replicas differ"
        );
        let mut changed = p.clone();
        changed.spec.concurrency = 8;
        let c = build_deployment(&changed, 1, DEFAULT_ADMIN_PORT).unwrap();
        assert!(!is_up_to_date(&a, &c), "template changed");
    }

    #[test]
    fn the_hash_is_sha256_of_the_canonical_deployment_and_stable() {
        let d = build_deployment(&pool(spec()), 1, DEFAULT_ADMIN_PORT).unwrap();
        let hash = &d.annotations()[SPEC_HASH_ANNOTATION];
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        // Recomputed by hand from the Deployment without the annotation and the replicas.
        let mut bare = d.clone();
        bare.annotations_mut().remove(SPEC_HASH_ANNOTATION);
        bare.metadata.annotations = None;
        bare.spec.as_mut().unwrap().replicas = None;
        let canonical = serde_json::to_vec(&serde_json::to_value(&bare).unwrap()).unwrap();
        let expected: String = Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, &expected);
    }

    #[test]
    fn a_pool_without_namespace_is_an_error() {
        let mut p = pool(spec());
        p.metadata.namespace = None;
        assert_eq!(
            build_deployment(&p, 1, DEFAULT_ADMIN_PORT),
            Err(MissingNamespace("thumbs".into()))
        );
    }
}
