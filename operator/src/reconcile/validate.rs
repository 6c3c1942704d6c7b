//! Validate: pure checks of what the CRD schema cannot express, before anything is read or
//! written. The schema and its CEL rules check the spec's own fields at `kubectl apply` time;
//! the pod template is kept as given (its full schema would make the CRD too large), and the
//! pool's name is not part of the spec. What fails here would fail the Deployment's apply on
//! every retry, so it is a permanent error: the pool says why and waits for a change.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use qwp_pool::crd::{POOL_LABEL, QueueWorkerPool};
use qwp_pool::decision::ScalingPolicy;

use super::ValidPool;
use crate::{Error, Result};

/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;

/// Why a pool's spec cannot become a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "the pool's name has {0} characters; it is the value of the {label} label of its pods, which allows at most {max}",
        label = POOL_LABEL,
        max = MAX_LABEL_VALUE
    )]
    NameTooLong(usize),
    #[error("template.spec.restartPolicy is {0}; the pods of a Deployment must restart Always")]
    RestartPolicyNotAlways(String),
    #[error("the template has two containers named {0}")]
    DuplicateContainerName(String),
}

/// The checks of the spec, and what the later steps read of the pool.
pub fn spec(pool: &QueueWorkerPool) -> Result<ValidPool<'_>> {
    let name = pool.name_any();
    let namespace = pool
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    if name.len() > MAX_LABEL_VALUE {
        return Err(SpecError::NameTooLong(name.len()).into());
    }
    if let Some(pod) = &pool.spec.template.spec {
        if let Some(policy) = pod.restart_policy.as_deref().filter(|p| *p != "Always") {
            return Err(SpecError::RestartPolicyNotAlways(policy.to_string()).into());
        }
        // Init containers and containers share one name space.
        let mut names = HashSet::new();
        let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
        if let Some(twice) = containers.map(|c| &c.name).find(|n| !names.insert(*n)) {
            return Err(SpecError::DuplicateContainerName(twice.clone()).into());
        }
    }
    Ok(ValidPool {
        resource: pool,
        key: ObjectRef::from_obj(pool),
        policy: ScalingPolicy::from(&pool.spec),
        poll: Duration::from_secs(
            u64::try_from(pool.spec.poll_interval_seconds.clamp(1, 300)).unwrap_or(5),
        ),
        namespace,
        name,
    })
}

/// A Deployment of the pool's name must be the pool's own: the operator never takes over (and
/// later garbage-collects) one it did not create.
pub fn ownership(pool: &QueueWorkerPool, deployment: Option<&Deployment>) -> Result<()> {
    match deployment {
        Some(other) if !is_controlled_by(other, pool) => {
            Err(Error::DeploymentNotOwned(other.name_any()))
        }
        _ => Ok(()),
    }
}

/// Whether the pool is the Deployment's controller owner.
pub fn is_controlled_by(deployment: &Deployment, pool: &QueueWorkerPool) -> bool {
    let uid = pool.uid();
    deployment
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NS, POOL, test_pool};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn rejection(pool: &QueueWorkerPool) -> Option<Error> {
        spec(pool).err()
    }

    fn with_pod_spec(pod: serde_json::Value) -> QueueWorkerPool {
        test_pool(json!({"template": {"spec": pod}}))
    }

    #[test]
    fn a_sensible_pool_passes_and_keeps_what_the_steps_read() {
        let pool = test_pool(json!({"pollIntervalSeconds": 7, "minReplicas": 1}));
        let valid = spec(&pool).expect("valid");
        assert_eq!((valid.namespace.as_str(), valid.name.as_str()), (NS, POOL));
        assert_eq!(valid.poll, Duration::from_secs(7));
        assert_eq!(valid.policy, ScalingPolicy::from(&pool.spec));
        assert_eq!(valid.key, ObjectRef::new(POOL).within(NS));
    }

    #[test]
    fn a_pool_without_namespace_is_rejected() {
        let mut pool = test_pool(json!({}));
        pool.metadata.namespace = None;
        let error = rejection(&pool).unwrap();
        assert!(matches!(error, Error::MissingNamespace(_)), "{error}");
        assert!(error.is_permanent());
    }

    #[test]
    fn the_name_must_fit_in_a_label_value() {
        let mut pool = test_pool(json!({}));
        pool.metadata.name = Some("p".repeat(MAX_LABEL_VALUE));
        assert!(spec(&pool).is_ok(), "63 characters fit");
        pool.metadata.name = Some("p".repeat(MAX_LABEL_VALUE + 1));
        let error = rejection(&pool).unwrap();
        assert!(
            matches!(error, Error::InvalidSpec(SpecError::NameTooLong(64))),
            "{error}"
        );
        assert!(error.is_permanent());
        assert!(error.to_string().contains("queueworker.io/pool"), "{error}");
    }

    #[test]
    fn pods_of_a_deployment_restart_always() {
        let container = json!([{"name": "worker", "image": "w"}]);
        for ok in [json!({}), json!({"restartPolicy": "Always"})] {
            let mut pod = ok.clone();
            pod["containers"] = container.clone();
            assert!(spec(&with_pod_spec(pod)).is_ok(), "{ok}");
        }
        for policy in ["Never", "OnFailure"] {
            let pool =
                with_pod_spec(json!({"restartPolicy": policy, "containers": container.clone()}));
            assert_eq!(
                rejection(&pool).map(|e| e.to_string()),
                Some(format!(
                    "invalid spec: template.spec.restartPolicy is {policy}; the pods of a Deployment must restart Always"
                ))
            );
        }
    }

    #[test]
    fn container_names_are_unique_across_init_containers_and_containers() {
        let twice = with_pod_spec(json!({"containers": [
            {"name": "worker", "image": "w"}, {"name": "worker", "image": "w2"}]}));
        let error = rejection(&twice).unwrap();
        assert!(
            matches!(&error, Error::InvalidSpec(SpecError::DuplicateContainerName(n)) if n == "worker"),
            "{error}"
        );
        let across = with_pod_spec(json!({
            "initContainers": [{"name": "setup", "image": "s"}],
            "containers": [{"name": "setup", "image": "w"}]}));
        assert!(matches!(
            rejection(&across),
            Some(Error::InvalidSpec(SpecError::DuplicateContainerName(_)))
        ));
        let distinct = with_pod_spec(json!({
            "initContainers": [{"name": "setup", "image": "s"}],
            "containers": [{"name": "worker", "image": "w"}, {"name": "sidecar", "image": "c"}]}));
        assert!(spec(&distinct).is_ok());
    }

    fn deployment_owned_by(uid: Option<&str>, controller: bool) -> Deployment {
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some(POOL.into());
        deployment.metadata.owner_references = uid.map(|uid| {
            vec![OwnerReference {
                api_version: "queueworker.io/v1alpha1".into(),
                kind: "QueueWorkerPool".into(),
                name: POOL.into(),
                uid: uid.into(),
                controller: Some(controller),
                block_owner_deletion: Some(true),
            }]
        });
        deployment
    }

    #[test]
    fn only_the_pools_own_deployment_is_taken() {
        let pool = test_pool(json!({}));
        assert!(
            ownership(&pool, None).is_ok(),
            "none yet: the pool creates it"
        );
        assert!(ownership(&pool, Some(&deployment_owned_by(Some("pool-uid"), true))).is_ok());
        for foreign in [
            deployment_owned_by(None, false),
            // A pool of the same name deleted and created again has a new uid.
            deployment_owned_by(Some("old-uid"), true),
            deployment_owned_by(Some("pool-uid"), false),
        ] {
            let error = ownership(&pool, Some(&foreign)).unwrap_err();
            assert!(matches!(error, Error::DeploymentNotOwned(ref n) if n == POOL));
            assert!(error.is_permanent());
        }
    }
}
