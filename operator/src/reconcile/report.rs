//! Report: what a reconcile did or why it could not — Events, the pool's status (server-side
//! apply, only when it changed) and metrics.

use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use qwp_pool::crd::{QueueWorkerPool, QueueWorkerPoolStatus};
use qwp_pool::decision::Decision;
use tracing::{info, warn};

use super::observe::Observed;
use super::{Context, ValidPool};
use crate::metrics::PoolLabels;
use crate::queue::{QueueError, Reading};
use crate::status::{QUEUE_REACHABLE, StatusInput, build_status, condition_reason, failed_status};
use crate::{Error, FIELD_MANAGER, Result};

/// A reconcile that got through: Events for a scale change and for queue outages and
/// recoveries, the status, the metrics.
pub async fn outcome(
    pool: &ValidPool<'_>,
    ctx: &Context,
    observed: &Observed,
    decision: &Decision,
) -> Result<()> {
    let current = observed.current;
    let scaled = decision.replicas != current;
    announce(pool.resource, ctx, decision, &observed.reading, current).await;
    let spec_queue = &pool.resource.spec.queue;
    let queue_name = match &observed.reading {
        Ok(reading) => reading.url.clone(),
        Err(_) => spec_queue
            .url
            .clone()
            .or(spec_queue.name.clone())
            .unwrap_or_default(),
    };
    let status = build_status(&StatusInput {
        generation: pool.resource.metadata.generation,
        queue: queue_name,
        depth: observed.reading.as_ref().map(|r| r.depth),
        decision,
        deployment: observed.deployment.as_ref(),
        scaled,
        now: whole_second_now(),
        previous: pool.resource.status.as_ref(),
    });
    write_status(pool.resource, ctx, &pool.namespace, status).await?;
    ctx.metrics.set_pool(
        &pool.namespace,
        &pool.name,
        decision.backlog,
        decision.replicas,
    );
    if scaled {
        ctx.metrics
            .scale_events
            .get_or_create(&PoolLabels {
                namespace: pool.namespace.clone(),
                pool: pool.name.clone(),
            })
            .inc();
        info!(from = current, to = decision.replicas, reason = %decision.reason, "scaled");
    }
    Ok(())
}

/// A reconcile that failed. A reported error ([`Error::is_reported`]: everything but an API
/// server error) sets `Ready=False` with the error's reason and message and emits a Warning
/// Event with the same — once: while the status already says so, nothing is written. An API
/// server error is only logged and counted.
pub async fn failure(pool: &QueueWorkerPool, ctx: &Context, error: &Error) {
    let Some(namespace) = pool.namespace() else {
        return; // nowhere to write an Event or a status
    };
    if !error.is_reported() {
        return;
    }
    let status = failed_status(
        pool.status.as_ref(),
        pool.metadata.generation,
        error.reason(),
        error.to_string(),
        whole_second_now(),
    );
    if pool.status.as_ref() == Some(&status) {
        return;
    }
    publish(
        ctx,
        pool,
        EventType::Warning,
        error.reason(),
        error.to_string(),
    )
    .await;
    if let Err(err) = write_status(pool, ctx, &namespace, status).await {
        warn!(error = %err, "cannot write the status of a failed reconcile");
    }
}

/// Whole seconds: that is what the API server stores, so an unchanged status compares equal.
fn whole_second_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

async fn write_status(
    pool: &QueueWorkerPool,
    ctx: &Context,
    namespace: &str,
    status: QueueWorkerPoolStatus,
) -> Result<()> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let pools: Api<QueueWorkerPool> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": QueueWorkerPool::api_version(&()),
        "kind": QueueWorkerPool::kind(&()),
        "status": status,
    });
    pools
        .patch_status(
            &pool.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Events: every scale change with its numbers, and queue outages and recoveries (once per
/// change of state, not every poll).
async fn announce(
    pool: &QueueWorkerPool,
    ctx: &Context,
    decision: &Decision,
    reading: &Result<Reading, QueueError>,
    current: u32,
) {
    if decision.replicas != current {
        let note = format!(
            "scaled from {current} to {} replicas: {}",
            decision.replicas, decision.reason
        );
        publish_scale(ctx, pool, note).await;
    }
    let previous = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == QUEUE_REACHABLE));
    match reading {
        Err(err) => {
            let already_reported = previous
                .is_some_and(|c| c.status == "False" && c.reason == condition_reason(&err.code));
            if !already_reported {
                let note = format!(
                    "cannot read queue depth, holding {} replicas: {err}",
                    decision.replicas
                );
                publish(ctx, pool, EventType::Warning, "QueueUnreachable", note).await;
            }
        }
        Ok(reading) => {
            if previous.is_some_and(|c| c.status == "False") {
                publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    "QueueReachable",
                    format!("reading {} again", reading.url),
                )
                .await;
            }
        }
    }
}

/// One Event per scale change. The Recorder folds repeats of an event key (reason, object,
/// reporter — not the note) into a series that keeps the first note; every scale change must
/// show its own numbers, so these are created directly.
async fn publish_scale(ctx: &Context, pool: &QueueWorkerPool, note: String) {
    let now = Timestamp::now();
    let event = K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", pool.name_any(), now.as_nanosecond())),
            namespace: pool.namespace(),
            ..ObjectMeta::default()
        },
        action: Some("Scale".to_string()),
        reason: Some("Scaled".to_string()),
        note: Some(truncate_note(note)),
        type_: Some("Normal".to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(pool.object_ref(&())),
        reporting_controller: Some(FIELD_MANAGER.to_string()),
        reporting_instance: Some(ctx.instance.clone()),
        ..K8sEvent::default()
    };
    let events: Api<K8sEvent> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    if let Err(err) = events.create(&PostParams::default(), &event).await {
        warn!(error = %err, "cannot publish event");
    }
}

/// events.k8s.io limits a note to 1 kB.
fn truncate_note(mut note: String) -> String {
    const LIMIT: usize = 1024;
    if note.len() > LIMIT {
        let mut cut = LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

async fn publish(
    ctx: &Context,
    pool: &QueueWorkerPool,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate_note(note)),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        warn!(error = %err, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_event_limit() {
        let note = truncate_note("é".repeat(600));
        assert!(
            note.len() <= 1024 && note.ends_with("..."),
            "{}",
            note.len()
        );
        assert_eq!(truncate_note("short".into()), "short");
    }
}
