//! Apply: pod deletion costs before a scale-down, then the Deployment with server-side apply.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use qwp_pool::crd::POOL_LABEL;
use qwp_pool::decision::Decision;
use qwp_pool::deployment::{build_deployment, is_up_to_date};
use tracing::warn;

use super::observe::Observed;
use super::{Context, ValidPool};
use crate::deletion_cost::{cost_patch, plan_costs};
use crate::{Error, FIELD_MANAGER, Result};

/// Deletion costs first (so the ReplicaSet removes idle pods), then the Deployment, unless it
/// already is what the pool asks for.
pub async fn deployment(
    pool: &ValidPool<'_>,
    ctx: &Context,
    observed: &Observed,
    decision: &Decision,
) -> Result<()> {
    if decision.replicas < observed.current {
        deletion_costs(pool, ctx).await;
    }
    let wanted = build_deployment(
        pool.resource,
        i32::try_from(decision.replicas).unwrap_or(i32::MAX),
        ctx.worker_admin_port,
    )?;
    if observed
        .deployment
        .as_ref()
        .is_some_and(|existing| is_up_to_date(existing, &wanted))
    {
        return Ok(());
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &pool.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match deployments
        .patch(&pool.name, &params, &Patch::Apply(&wanted))
        .await
    {
        Ok(_) => Ok(()),
        Err(source) => Err(Error::DeploymentApply {
            name: pool.name.clone(),
            source,
        }),
    }
}

/// Annotates the pool's pods with their in-flight job count as deletion cost. Best effort:
/// a pod that cannot be asked or patched does not stop the scale-down.
async fn deletion_costs(pool: &ValidPool<'_>, ctx: &Context) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pool.namespace);
    let list = match pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={}", pool.name)))
        .await
    {
        Ok(list) => list.items,
        Err(err) => {
            warn!(error = %err, "cannot list pods to set deletion cost");
            return;
        }
    };
    let probes = list.into_iter().map(|pod| async {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let in_flight = match ip {
            Some(ip) => ctx.probe.in_flight(&ip).await,
            None => None,
        };
        (pod, in_flight)
    });
    let observed = futures::future::join_all(probes).await;
    for change in plan_costs(&observed) {
        let result = pods
            .patch(
                &change.pod,
                &PatchParams::default(),
                &Patch::Merge(cost_patch(change.cost)),
            )
            .await;
        if let Err(err) = result {
            warn!(pod = %change.pod, error = %err, "cannot set pod deletion cost");
        }
    }
}
