//! The pool's status, built (purely) from what the reconcile observed and decided.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use qwp_pool::crd::{BacklogStatus, QueueWorkerPoolStatus};
use qwp_pool::decision::{Decision, Limit, QueueDepth};

use crate::queue::QueueError;

pub const READY: &str = "Ready";
pub const QUEUE_REACHABLE: &str = "QueueReachable";
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// What one reconcile knows when it writes the status.
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    /// The queue URL read (or the configured name/URL when the read failed).
    pub queue: String,
    pub depth: Result<QueueDepth, &'a QueueError>,
    pub decision: &'a Decision,
    /// The Deployment as observed before this reconcile applied it.
    pub deployment: Option<&'a Deployment>,
    /// Whether this reconcile changed the replicas.
    pub scaled: bool,
    pub now: Timestamp,
    pub previous: Option<&'a QueueWorkerPoolStatus>,
}

pub fn build_status(input: &StatusInput<'_>) -> QueueWorkerPoolStatus {
    let previous = input.previous.cloned().unwrap_or_default();
    let deployment_status = input.deployment.and_then(|d| d.status.as_ref());
    let replicas = deployment_status.and_then(|s| s.replicas).unwrap_or(0);
    let ready_replicas = deployment_status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let desired = i32::try_from(input.decision.replicas).unwrap_or(i32::MAX);

    let backlog = match (&input.depth, input.decision.backlog) {
        (Ok(depth), Some(counted)) => Some(BacklogStatus {
            visible: saturating_i64(depth.visible),
            in_flight: saturating_i64(depth.in_flight),
            delayed: saturating_i64(depth.delayed),
            counted: saturating_i64(counted),
        }),
        // Keep the last known numbers while the queue cannot be read.
        _ => previous.backlog,
    };

    let (last_scale_time, last_scale_reason) = if input.scaled {
        (
            Some(Time(input.now)),
            Some(input.decision.reason.to_string()),
        )
    } else {
        (
            previous.last_scale_time.clone(),
            previous.last_scale_reason.clone(),
        )
    };

    let queue_reachable = match &input.depth {
        Ok(_) => (
            "True",
            "QueueRead".to_string(),
            format!("read {}", input.queue),
        ),
        Err(err) => ("False", condition_reason(&err.code), err.to_string()),
    };
    let ready = if ready_replicas >= desired {
        (
            "True",
            "ReplicasReady",
            format!("{ready_replicas} of {desired} replicas ready"),
        )
    } else {
        (
            "False",
            "ReplicasNotReady",
            format!("{ready_replicas} of {desired} replicas ready"),
        )
    };
    let limited = match input.decision.limit {
        Some(Limit::AtMaxReplicas) => ("True", "AtMaxReplicas"),
        Some(Limit::AtMinReplicas) => ("True", "AtMinReplicas"),
        Some(Limit::ScaleUpPolicy) => ("True", "ScaleUpPolicy"),
        Some(Limit::ScaleDownPolicy) => ("True", "ScaleDownPolicy"),
        None => ("False", "WithinLimits"),
    };
    let condition = |type_: &str, (status, reason, message): (&str, String, String)| {
        next_condition(
            &previous,
            type_,
            (status, reason, message),
            input.generation,
            input.now,
        )
    };
    let conditions = vec![
        condition(READY, (ready.0, ready.1.to_string(), ready.2)),
        condition(QUEUE_REACHABLE, queue_reachable),
        condition(
            SCALING_LIMITED,
            (
                limited.0,
                limited.1.to_string(),
                input.decision.reason.to_string(),
            ),
        ),
    ];

    QueueWorkerPoolStatus {
        observed_generation: input.generation,
        queue: Some(input.queue.clone()),
        replicas,
        ready_replicas,
        desired_replicas: desired,
        backlog,
        last_scale_time,
        last_scale_reason,
        conditions,
    }
}

/// The status of a pool the operator cannot act on (a permanent reconcile error): the last
/// status, with `Ready=False` saying why. The other conditions and numbers stay as they were.
pub fn failed_status(
    previous: Option<&QueueWorkerPoolStatus>,
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: Timestamp,
) -> QueueWorkerPoolStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let ready = next_condition(
        &status,
        READY,
        ("False", reason.to_string(), message),
        generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    status.observed_generation = generation;
    status
}

/// A condition whose transition time moves only when its status flips.
fn next_condition(
    previous: &QueueWorkerPoolStatus,
    type_: &str,
    (status, reason, message): (&str, String, String),
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let same_status = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status);
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time: same_status
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now)),
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A condition reason must be CamelCase-ish (`[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?`); AWS
/// codes such as `AWS.SimpleQueueService.NonExistentQueue` have dots. The full code stays in
/// the message.
pub fn condition_reason(code: &str) -> String {
    let cleaned: String = code
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('_').to_string();
    match cleaned.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => cleaned,
        _ => format!("Error_{cleaned}").trim_end_matches('_').to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use qwp_pool::decision::ScaleReason;

    fn decision(replicas: u32, limit: Option<Limit>) -> Decision {
        Decision {
            replicas,
            recommendation: Some(replicas),
            backlog: Some(42),
            reason: ScaleReason::Backlog {
                backlog: 42,
                per_pod: 5,
                replicas,
            },
            limit,
        }
    }

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn condition<'a>(status: &'a QueueWorkerPoolStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_scale_records_numbers_reason_and_conditions() {
        let d = decision(9, None);
        let dep = deployment(3, 3);
        let depth = QueueDepth {
            visible: 40,
            in_flight: 2,
            delayed: 1,
        };
        let status = build_status(&StatusInput {
            generation: Some(2),
            queue: "http://q".into(),
            depth: Ok(depth),
            decision: &d,
            deployment: Some(&dep),
            scaled: true,
            now: at(1000),
            previous: None,
        });
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.desired_replicas
            ),
            (3, 3, 9)
        );
        assert_eq!(
            status.backlog,
            Some(BacklogStatus {
                visible: 40,
                in_flight: 2,
                delayed: 1,
                counted: 42
            })
        );
        assert_eq!(
            status.last_scale_reason.as_deref(),
            Some("backlog 42 / 5 per pod → 9 replicas")
        );
        assert_eq!(status.last_scale_time, Some(Time(at(1000))));
        assert_eq!(condition(&status, READY).status, "False");
        assert_eq!(condition(&status, READY).message, "3 of 9 replicas ready");
        assert_eq!(condition(&status, QUEUE_REACHABLE).status, "True");
        assert_eq!(condition(&status, SCALING_LIMITED).status, "False");
    }

    #[test]
    fn an_unreachable_queue_keeps_the_last_backlog_and_names_the_error() {
        let d = Decision {
            replicas: 3,
            recommendation: None,
            backlog: None,
            reason: ScaleReason::QueueUnreachable { replicas: 3 },
            limit: None,
        };
        let previous = QueueWorkerPoolStatus {
            backlog: Some(BacklogStatus {
                visible: 5,
                in_flight: 0,
                delayed: 0,
                counted: 5,
            }),
            last_scale_reason: Some("earlier".into()),
            ..Default::default()
        };
        let err = QueueError::new(
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        );
        let dep = deployment(3, 3);
        let status = build_status(&StatusInput {
            generation: Some(1),
            queue: "http://q".into(),
            depth: Err(&err),
            decision: &d,
            deployment: Some(&dep),
            scaled: false,
            now: at(50),
            previous: Some(&previous),
        });
        assert_eq!(status.backlog, previous.backlog);
        assert_eq!(status.last_scale_reason.as_deref(), Some("earlier"));
        let reachable = condition(&status, QUEUE_REACHABLE);
        assert_eq!(reachable.status, "False");
        assert_eq!(reachable.reason, "AWS_SimpleQueueService_NonExistentQueue");
        assert!(
            reachable
                .message
                .starts_with("AWS.SimpleQueueService.NonExistentQueue: The specified")
        );
        assert_eq!(condition(&status, READY).status, "True");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let d = decision(10, Some(Limit::AtMaxReplicas));
        let dep = deployment(10, 10);
        let input = |now, previous| StatusInput {
            generation: Some(1),
            queue: "q".into(),
            depth: Ok(QueueDepth::default()),
            decision: &d,
            deployment: Some(&dep),
            scaled: false,
            now,
            previous,
        };
        let first = build_status(&input(at(10), None));
        let second = build_status(&input(at(20), Some(&first)));
        let limited = condition(&second, SCALING_LIMITED);
        assert_eq!(
            (limited.status.as_str(), limited.reason.as_str()),
            ("True", "AtMaxReplicas")
        );
        assert_eq!(
            limited.last_transition_time,
            Time(at(10)),
            "unchanged status keeps its time"
        );
        assert_eq!(
            second,
            build_status(&input(at(30), Some(&second))),
            "steady state is stable"
        );
    }

    #[test]
    fn a_failure_says_why_in_ready_and_keeps_the_rest() {
        let d = decision(4, None);
        let dep = deployment(4, 4);
        let working = build_status(&StatusInput {
            generation: Some(1),
            queue: "http://q".into(),
            depth: Ok(QueueDepth::default()),
            decision: &d,
            deployment: Some(&dep),
            scaled: true,
            now: at(10),
            previous: None,
        });
        let failed = failed_status(
            Some(&working),
            Some(2),
            "InvalidSpec",
            "invalid spec: x".into(),
            at(20),
        );
        let ready = condition(&failed, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "InvalidSpec", "invalid spec: x")
        );
        assert_eq!(
            ready.last_transition_time,
            Time(at(20)),
            "True → False moves"
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(failed.observed_generation, Some(2));
        assert_eq!(failed.conditions.len(), 3, "{:?}", failed.conditions);
        assert_eq!(
            condition(&failed, QUEUE_REACHABLE),
            condition(&working, QUEUE_REACHABLE)
        );
        assert_eq!(
            (
                failed.desired_replicas,
                failed.backlog,
                &failed.last_scale_reason
            ),
            (
                working.desired_replicas,
                working.backlog,
                &working.last_scale_reason
            )
        );
        let again = failed_status(
            Some(&failed),
            Some(2),
            "InvalidSpec",
            "invalid spec: x".into(),
            at(30),
        );
        assert_eq!(again, failed, "the same failure is the same status");

        let fresh = failed_status(None, Some(1), "DeploymentNotOwned", "taken".into(), at(5));
        assert_eq!(fresh.conditions.len(), 1);
        assert_eq!(condition(&fresh, READY).reason, "DeploymentNotOwned");
    }

    #[test]
    fn condition_reasons_are_valid_identifiers() {
        assert_eq!(condition_reason("QueueDoesNotExist"), "QueueDoesNotExist");
        assert_eq!(
            condition_reason("AWS.SimpleQueueService.NonExistentQueue"),
            "AWS_SimpleQueueService_NonExistentQueue"
        );
        assert_eq!(condition_reason("403"), "Error_403");
        assert_eq!(condition_reason(""), "Error");
    }
}
