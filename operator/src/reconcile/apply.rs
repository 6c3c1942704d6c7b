//! Apply: pod deletion costs before a scale-down, then the Deployment with server-side apply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use qwp_pool::crd::POOL_LABEL;
use qwp_pool::decision::Decision;
use qwp_pool::deployment::{build_deployment, is_up_to_date};
use tracing::warn;

use super::observe::Observed;
use super::{Context, ValidPool};
use crate::deletion_cost::{PATCH_CONCURRENCY, PROBE_CONCURRENCY, cost_patch, plan_costs};
use crate::{Error, FIELD_MANAGER, Result};

/// How long a scale-down waits for the pod cache's first list (only right after a start).
const POD_CACHE_WAIT: Duration = Duration::from_secs(5);

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
    let now = Instant::now();
    let resync_due = ctx.with_memory(&pool.key, now, observed.current, |memory| {
        now.duration_since(memory.synced_at) >= ctx.resync
    });
    // The hash says whether the pool changed, not whether someone edited the Deployment's
    // template by hand: that is undone by the apply every resync period.
    if !resync_due
        && observed
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
        Ok(_) => {
            ctx.with_memory(&pool.key, now, observed.current, |memory| {
                memory.synced_at = now
            });
            Ok(())
        }
        Err(source) => Err(Error::DeploymentApply {
            name: pool.name.clone(),
            source,
        }),
    }
}

/// Annotates the pool's pods with their in-flight job count as deletion cost. Best effort:
/// a pod that cannot be asked or patched does not stop the scale-down. The pods come from the
/// operator's pod cache (a reflector of the pools' pods), not from a LIST per scale-down.
async fn deletion_costs(pool: &ValidPool<'_>, ctx: &Context) {
    let ready = tokio::time::timeout(POD_CACHE_WAIT, ctx.pods.wait_until_ready()).await;
    if !matches!(ready, Ok(Ok(()))) {
        warn!("the pod cache is not filled yet; scaling down without deletion costs");
        return;
    }
    let members: Vec<Arc<Pod>> = ctx.pods.state_filter(|pod| {
        pod.namespace().as_deref() == Some(pool.namespace.as_str())
            && pod.labels().get(POOL_LABEL) == Some(&pool.name)
    });
    let observed: Vec<(Pod, Option<u32>)> = futures::stream::iter(members)
        .map(|pod| async move {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let in_flight = match ip {
                Some(ip) => ctx.probe.in_flight(&ip).await,
                None => None,
            };
            (Pod::clone(&pod), in_flight)
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let busy = pool.resource.spec.concurrency.max(1);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pool.namespace);
    futures::stream::iter(plan_costs(&observed, busy))
        .for_each_concurrent(PATCH_CONCURRENCY, |change| {
            let pods = pods.clone();
            async move {
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
        })
        .await;
}
