//! Observe: the network reads of a reconcile — the pool's Deployment, its credentials Secret
//! (checked by [`crate::access::check_secret`]) and the queue depth. (The pods are listed only before a scale-down, by [`super::apply`].)

use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use qwp_pool::crd::QueueWorkerPool;
use qwp_pool::deployment::current_replicas;
use tracing::warn;

use super::{Context, ValidPool};
use crate::Result;
use crate::access::{Refusal, check_secret};
use crate::queue::{QueueError, QueueTarget, Reading, StaticCredentials};

/// What a reconcile saw before deciding.
pub struct Observed {
    /// The Deployment as it was before this reconcile applied it.
    pub deployment: Option<Deployment>,
    /// Its `spec.replicas` (0 when there is none yet).
    pub current: u32,
    pub reading: Result<Reading, QueueError>,
    /// Whether `reading` was made by this reconcile (not reused from an earlier one).
    pub fresh: bool,
}

/// A queue reading and when it was made, reused by reconciles triggered by watch events
/// (status writes, Deployment changes) within the poll interval: SQS is read at most once
/// per poll interval and pool, and a status write cannot trigger a fresh read in a loop.
#[derive(Clone)]
pub(crate) struct LastRead {
    at: Instant,
    generation: Option<i64>,
    result: Result<Reading, QueueError>,
}

/// The Deployment named after the pool, if there is one.
pub async fn deployment(pool: &ValidPool<'_>, ctx: &Context) -> Result<Option<Deployment>> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &pool.namespace);
    Ok(deployments.get_opt(&pool.name).await?)
}

/// The queue depth: a fresh read, or the last one when it is younger than the poll interval,
/// the spec has not changed since and no wake-up hint came in ([`crate::wake`]). An
/// unreadable queue is an observation, not an error.
/// A Secret that does not opt in is a refusal (a reconcile error), not an unreadable queue.
pub async fn queue(
    pool: &ValidPool<'_>,
    ctx: &Context,
    deployment: Option<Deployment>,
) -> Result<Observed> {
    let current = current_replicas(deployment.as_ref());
    let generation = pool.resource.metadata.generation;
    let cached = ctx.with_memory(&pool.key, Instant::now(), current, |memory| {
        let woken = std::mem::take(&mut memory.woken);
        memory
            .last_read
            .clone()
            .filter(|last| !woken && last.generation == generation && last.at.elapsed() < pool.poll)
    });
    if let Some(last) = cached {
        ctx.metrics.count_read("cached");
        return Ok(Observed {
            deployment,
            current,
            reading: last.result,
            fresh: false,
        });
    }
    let reading = match queue_target(pool.resource, &ctx.client, &pool.namespace).await {
        Ok(target) => ctx.queue.read(&target).await,
        Err(TargetError::Queue(err)) => Err(err),
        Err(TargetError::Refused(refusal)) => return Err(refusal.into()),
    };
    match &reading {
        Ok(reading) => {
            ctx.metrics.count_read("ok");
            ctx.metrics
                .sqs_requests
                .inc_by(u64::from(reading.api_calls));
        }
        Err(err) => {
            ctx.metrics.count_read("error");
            warn!(error = %err, "queue depth unreadable; holding replicas");
        }
    }
    let last = LastRead {
        at: Instant::now(),
        generation,
        result: reading.clone(),
    };
    ctx.with_memory(&pool.key, Instant::now(), current, |memory| {
        memory.last_read = Some(last)
    });
    Ok(Observed {
        deployment,
        current,
        reading,
        fresh: true,
    })
}

enum TargetError {
    Queue(QueueError),
    Refused(Refusal),
}

impl From<QueueError> for TargetError {
    fn from(error: QueueError) -> Self {
        TargetError::Queue(error)
    }
}

/// Where the pool's queue is, with keys from its Secret when it names one — and the Secret
/// allows it ([`check_secret`], before any value is read).
async fn queue_target(
    pool: &QueueWorkerPool,
    client: &Client,
    namespace: &str,
) -> Result<QueueTarget, TargetError> {
    let queue = &pool.spec.queue;
    let credentials = match &queue.credentials_secret_ref {
        None => None,
        Some(reference) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = secrets
                .get_opt(&reference.name)
                .await
                .map_err(|e| {
                    QueueError::new(
                        "SecretUnreadable",
                        format!("Secret {namespace}/{}: {e}", reference.name),
                    )
                })?
                .ok_or_else(|| {
                    QueueError::new(
                        "SecretNotFound",
                        format!("Secret {namespace}/{} not found", reference.name),
                    )
                })?;
            check_secret(&secret, reference).map_err(TargetError::Refused)?;
            let value = |key: &str| -> Result<String, QueueError> {
                secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(key))
                    .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        QueueError::new(
                            "SecretKeyMissing",
                            format!("Secret {namespace}/{} has no key {key}", reference.name),
                        )
                    })
            };
            Some(StaticCredentials {
                access_key_id: value(&reference.access_key_id_key)?,
                secret_access_key: value(&reference.secret_access_key_key)?,
            })
        }
    };
    Ok(QueueTarget {
        url: queue.url.clone(),
        name: queue.name.clone(),
        region: queue.region.clone(),
        endpoint: queue.endpoint.clone(),
        credentials,
        role_arn: queue.role_arn.clone(),
    })
}
