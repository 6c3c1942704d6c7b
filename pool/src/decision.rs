//! The scaling decision: one pure function, [`decide`], from (policy, recent history, observed
//! queue depth, current replicas, now) to the desired replicas with the reason (in words a person
//! reads in an Event) and the history to keep. The operator's reconciler and the simulator call
//! exactly this function.
//!
//! No I/O and no clock: the caller passes `now`, a simulator a virtual one (`Instant` plus
//! simulated seconds). The rules, applied in this order, each a function below:
//!
//! 1. Queue unreadable (`depth` is `None`): hold the current replicas (within min/max). An
//!    error never scales a pool down, let alone to zero. (`hold_while_unreadable`)
//! 2. `paused`: hold the current replicas exactly. (`hold_while_paused`)
//! 3. counted backlog = visible (+ in flight if counted) (+ delayed if counted);
//!    at or below `activationBacklog` the raw recommendation is 0, otherwise
//!    ceil(backlog / targetBacklogPerPod); clamped to [minReplicas, maxReplicas].
//!    (`recommend`, `propose`)
//! 4. Stabilization, like the HPA: scale up only to the lowest recommendation of the
//!    scale-up window and down only to the highest of the scale-down window. A pool reaches
//!    zero only after a whole scale-down window of zero recommendations. (`stabilize`)
//! 5. Step limits (`policies`) cap the change per period, counted from the replicas at the
//!    start of the period; `selectPolicy: Disabled` forbids the direction. (`limit_steps`)
//! 6. The result stays within [minReplicas, maxReplicas]. (`keep_within_bounds`)

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::crd::{QueueWorkerPoolSpec, ScalingRules, SelectPolicy, StepKind, StepPolicy};

/// The three queue-depth numbers SQS reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// ApproximateNumberOfMessages: waiting to be received.
    pub visible: u64,
    /// ApproximateNumberOfMessagesNotVisible: received, being processed.
    pub in_flight: u64,
    /// ApproximateNumberOfMessagesDelayed: not yet deliverable.
    pub delayed: u64,
}

/// The parts of a pool's spec the decision reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingPolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_backlog_per_pod: u32,
    pub count_in_flight: bool,
    pub count_delayed: bool,
    pub activation_backlog: u64,
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
    pub paused: bool,
}

impl ScalingPolicy {
    /// A policy with the CRD's defaults: immediate scale-up, 60 s scale-down window, no step
    /// limits, one message per pod.
    pub fn new(min_replicas: u32, max_replicas: u32) -> Self {
        ScalingPolicy {
            min_replicas,
            max_replicas: max_replicas.max(1).max(min_replicas),
            target_backlog_per_pod: 1,
            count_in_flight: true,
            count_delayed: false,
            activation_backlog: 0,
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
            paused: false,
        }
    }

    /// The backlog the decision counts.
    pub fn counted_backlog(&self, depth: &QueueDepth) -> u64 {
        let mut backlog = depth.visible;
        if self.count_in_flight {
            backlog = backlog.saturating_add(depth.in_flight);
        }
        if self.count_delayed {
            backlog = backlog.saturating_add(depth.delayed);
        }
        backlog
    }

    fn rules(&self, direction: Direction) -> &ScalingRules {
        match direction {
            Direction::Up => &self.scale_up,
            Direction::Down => &self.scale_down,
        }
    }

    fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.min_replicas, self.max_replicas)
    }

    /// How long history must be kept for this policy's windows and periods.
    fn horizon(&self) -> Duration {
        let longest = [&self.scale_up, &self.scale_down]
            .into_iter()
            .flat_map(|rules| {
                std::iter::once(rules.stabilization_window_seconds)
                    .chain(rules.policies.iter().map(|p| p.period_seconds))
            })
            .max()
            .unwrap_or(0);
        secs(longest)
    }
}

impl From<&QueueWorkerPoolSpec> for ScalingPolicy {
    /// Negative numbers (which the schema rejects) are read as 0.
    fn from(spec: &QueueWorkerPoolSpec) -> Self {
        let min_replicas = non_negative(spec.min_replicas);
        ScalingPolicy {
            min_replicas,
            max_replicas: non_negative(spec.max_replicas).max(1).max(min_replicas),
            target_backlog_per_pod: non_negative(spec.effective_target_backlog_per_pod()).max(1),
            count_in_flight: spec.count_in_flight,
            count_delayed: spec.count_delayed,
            activation_backlog: u64::try_from(spec.activation_backlog).unwrap_or(0),
            scale_up: spec.scale_up.clone(),
            scale_down: spec.scale_down.clone(),
            paused: spec.paused,
        }
    }
}

fn non_negative(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn secs(n: i32) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// Recent recommendations and replica changes of one pool, for windows and step limits.
#[derive(Clone, Debug, Default)]
pub struct History {
    recommendations: VecDeque<(Instant, u32)>,
    changes: VecDeque<(Instant, i64)>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// History for a pool seen for the first time with `replicas` running: counts them as a
    /// recommendation made now, so after an operator restart the pool is not scaled down
    /// before a whole scale-down window has passed.
    pub fn starting_at(now: Instant, replicas: u32) -> Self {
        let mut history = Self::new();
        history.recommendations.push_back((now, replicas));
        history
    }

    /// The history after `decision` was carried out at `now`: its recommendation (when the
    /// reading was fresh) for the windows, its change of replicas for the step limits, and
    /// nothing older than the policy's longest window or period.
    fn after(
        &self,
        policy: &ScalingPolicy,
        observed: &Observation,
        now: Instant,
        decision: &Decision,
        current: u32,
    ) -> History {
        let mut next = self.clone();
        if let Some(recommendation) = decision.recommendation.filter(|_| observed.fresh) {
            next.recommendations.push_back((now, recommendation));
        }
        if decision.replicas != current {
            let delta = i64::from(decision.replicas) - i64::from(current);
            next.changes.push_back((now, delta));
        }
        next.forget_before(now, policy.horizon());
        next
    }

    fn forget_before(&mut self, now: Instant, horizon: Duration) {
        let old = |at: &Instant| now.saturating_duration_since(*at) > horizon;
        while self.recommendations.front().is_some_and(|(at, _)| old(at)) {
            self.recommendations.pop_front();
        }
        while self.changes.front().is_some_and(|(at, _)| old(at)) {
            self.changes.pop_front();
        }
    }

    /// Recommendations made less than `window` before `now`.
    fn recommendations_within(
        &self,
        now: Instant,
        window: Duration,
    ) -> impl Iterator<Item = u32> + '_ {
        self.recommendations
            .iter()
            .filter(move |(at, _)| now.saturating_duration_since(*at) < window)
            .map(|(_, r)| *r)
    }

    /// Pods added (or removed, for `up == false`) less than `period` before `now`.
    fn changed_within(&self, now: Instant, period: Duration, up: bool) -> u32 {
        let total: i64 = self
            .changes
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < period)
            .map(|(_, delta)| *delta)
            .filter(|delta| (*delta > 0) == up)
            .map(i64::abs)
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    fn field(self) -> &'static str {
        match self {
            Direction::Up => "scaleUp",
            Direction::Down => "scaleDown",
        }
    }

    /// Whether `replicas` lies beyond `bound` in this direction.
    fn goes_past(self, replicas: u32, bound: u32) -> bool {
        match self {
            Direction::Up => replicas > bound,
            Direction::Down => replicas < bound,
        }
    }

    fn policy_limit(self) -> Limit {
        match self {
            Direction::Up => Limit::ScaleUpPolicy,
            Direction::Down => Limit::ScaleDownPolicy,
        }
    }
}

/// Why the decision is what it is; `Display` gives the sentence for Events and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleReason {
    /// "backlog 42 / 5 per pod → 9 replicas"
    Backlog {
        backlog: u64,
        per_pod: u32,
        replicas: u32,
    },
    /// "backlog 100 / 5 per pod → 20 replicas, capped at maxReplicas 10"
    Capped {
        backlog: u64,
        per_pod: u32,
        wanted: u32,
        bound: Bound,
    },
    /// "activation: backlog 0 ≤ activationBacklog 0, staying at zero"
    Activation {
        backlog: u64,
        activation_backlog: u64,
        current: u32,
        replicas: u32,
    },
    /// "holding 3 replicas: queue unreachable"
    QueueUnreachable { replicas: u32 },
    /// "holding 3 replicas: paused"
    Paused { replicas: u32 },
    /// "scale-up stabilized: lowest recommendation in the last 30s was 2"
    UpStabilized { window_seconds: i32, lowest: u32 },
    /// "scale-down stabilized: highest recommendation in the last 60s was 5"
    DownStabilized { window_seconds: i32, highest: u32 },
    /// "limited by scaleUp policy: +4 pods per 15s → 8 replicas"
    StepLimited {
        direction: Direction,
        policy: StepPolicy,
        replicas: u32,
    },
    /// "scaleDown selectPolicy is Disabled: holding 3 replicas"
    Disabled { direction: Direction, replicas: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Min(u32),
    Max(u32),
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScaleReason::Backlog {
                backlog,
                per_pod,
                replicas,
            } => {
                write!(
                    f,
                    "backlog {backlog} / {per_pod} per pod → {replicas} replicas"
                )
            }
            ScaleReason::Capped {
                backlog,
                per_pod,
                wanted,
                bound,
            } => {
                write!(
                    f,
                    "backlog {backlog} / {per_pod} per pod → {wanted} replicas, "
                )?;
                match bound {
                    Bound::Max(max) => write!(f, "capped at maxReplicas {max}"),
                    Bound::Min(min) => write!(f, "raised to minReplicas {min}"),
                }
            }
            ScaleReason::Activation {
                backlog,
                activation_backlog,
                current,
                replicas,
            } => {
                write!(
                    f,
                    "activation: backlog {backlog} ≤ activationBacklog {activation_backlog}"
                )?;
                if *current == 0 && *replicas == 0 {
                    write!(f, ", staying at zero")
                } else {
                    write!(f, " → {replicas} replicas")
                }
            }
            ScaleReason::QueueUnreachable { replicas } => {
                write!(f, "holding {replicas} replicas: queue unreachable")
            }
            ScaleReason::Paused { replicas } => write!(f, "holding {replicas} replicas: paused"),
            ScaleReason::UpStabilized {
                window_seconds,
                lowest,
            } => write!(
                f,
                "scale-up stabilized: lowest recommendation in the last {window_seconds}s was {lowest}"
            ),
            ScaleReason::DownStabilized {
                window_seconds,
                highest,
            } => write!(
                f,
                "scale-down stabilized: highest recommendation in the last {window_seconds}s was {highest}"
            ),
            ScaleReason::StepLimited {
                direction,
                policy,
                replicas,
            } => {
                let sign = if *direction == Direction::Up {
                    '+'
                } else {
                    '-'
                };
                let unit = match policy.kind {
                    StepKind::Pods => " pods",
                    StepKind::Percent => "%",
                };
                write!(
                    f,
                    "limited by {} policy: {sign}{}{unit} per {}s → {replicas} replicas",
                    direction.field(),
                    policy.value,
                    policy.period_seconds
                )
            }
            ScaleReason::Disabled {
                direction,
                replicas,
            } => write!(
                f,
                "{} selectPolicy is Disabled: holding {replicas} replicas",
                direction.field()
            ),
        }
    }
}

/// Why the pool could not have the replicas the backlog asks for (the ScalingLimited condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    AtMinReplicas,
    AtMaxReplicas,
    ScaleUpPolicy,
    ScaleDownPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to set on the Deployment.
    pub replicas: u32,
    /// The backlog-based recommendation (within min/max) before stabilization and step limits;
    /// `None` when the decision holds (queue unreadable, paused).
    pub recommendation: Option<u32>,
    /// The counted backlog; `None` when the queue could not be read.
    pub backlog: Option<u64>,
    pub reason: ScaleReason,
    pub limit: Option<Limit>,
}

/// What one decision is based on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The queue depth; `None` when the queue could not be read.
    pub depth: Option<QueueDepth>,
    /// Whether `depth` is a new reading. The controller reuses its last reading in reconciles
    /// that watch events trigger within the poll interval; that reading's recommendation is
    /// already in the windows and is not counted twice.
    pub fresh: bool,
}

impl Observation {
    /// A reading just made (`None`: the queue could not be read).
    pub fn fresh(depth: Option<QueueDepth>) -> Self {
        Observation { depth, fresh: true }
    }
}

/// A decision and the history to keep once it is carried out.
#[derive(Clone, Debug)]
pub struct Decided {
    pub decision: Decision,
    /// Replaces the caller's history after the replicas were applied (kept as it was when
    /// applying failed, as if this decision had not been made).
    pub history: History,
}

/// Decides the replicas for one pool: the one entry point of this module. Pure: the same
/// inputs give the same output, and `history` is only read.
pub fn decide(
    policy: &ScalingPolicy,
    history: &History,
    observed: &Observation,
    current: u32,
    now: Instant,
) -> Decided {
    let decision = match &observed.depth {
        None => hold_while_unreadable(policy, current),
        Some(depth) if policy.paused => hold_while_paused(policy, depth, current),
        Some(depth) => scale(policy, history, depth, current, now),
    };
    let history = history.after(policy, observed, now, &decision, current);
    Decided { decision, history }
}

/// Rule 1: an unreadable queue holds the current replicas, within min/max.
fn hold_while_unreadable(policy: &ScalingPolicy, current: u32) -> Decision {
    let replicas = policy.clamp(current);
    Decision {
        replicas,
        recommendation: None,
        backlog: None,
        reason: ScaleReason::QueueUnreachable { replicas },
        limit: None,
    }
}

/// Rule 2: a paused pool holds exactly what runs; the backlog is still reported.
fn hold_while_paused(policy: &ScalingPolicy, depth: &QueueDepth, current: u32) -> Decision {
    Decision {
        replicas: current,
        recommendation: None,
        backlog: Some(policy.counted_backlog(depth)),
        reason: ScaleReason::Paused { replicas: current },
        limit: None,
    }
}

/// Rules 3 to 6, for a readable queue.
fn scale(
    policy: &ScalingPolicy,
    history: &History,
    depth: &QueueDepth,
    current: u32,
    now: Instant,
) -> Decision {
    let target = recommend(policy, depth);
    let proposal = propose(policy, &target, current);
    let proposal = stabilize(policy, history, &target, proposal, current, now);
    let proposal = limit_steps(policy, history, proposal, current, now);
    let proposal = keep_within_bounds(policy, &target, proposal);
    Decision {
        replicas: proposal.replicas,
        recommendation: Some(target.replicas),
        backlog: Some(target.backlog),
        reason: proposal.reason,
        limit: proposal.limit,
    }
}

/// What the backlog alone asks for (rule 3).
struct Recommendation {
    /// The counted backlog.
    backlog: u64,
    per_pod: u32,
    /// Whether the backlog is above `activationBacklog`.
    active: bool,
    /// ceil(backlog / per pod), or 0 when not active; not yet within min/max.
    wanted: u32,
    /// `wanted` within [minReplicas, maxReplicas].
    replicas: u32,
}

/// Replicas, reason and limit as they stand after a rule.
struct Proposal {
    replicas: u32,
    reason: ScaleReason,
    limit: Option<Limit>,
}

/// Rule 3: counted backlog over target per pod, rounded up; 0 at or below the activation
/// threshold.
fn recommend(policy: &ScalingPolicy, depth: &QueueDepth) -> Recommendation {
    let backlog = policy.counted_backlog(depth);
    let per_pod = policy.target_backlog_per_pod.max(1);
    let active = backlog > policy.activation_backlog;
    let wanted = if active {
        u32::try_from(backlog.div_ceil(u64::from(per_pod))).unwrap_or(u32::MAX)
    } else {
        0
    };
    Recommendation {
        backlog,
        per_pod,
        active,
        wanted,
        replicas: policy.clamp(wanted),
    }
}

/// Rule 3's proposal: the recommendation, said as activation, as capped by min/max, or as the
/// backlog's share.
fn propose(policy: &ScalingPolicy, target: &Recommendation, current: u32) -> Proposal {
    let limit = match target.wanted {
        w if w > policy.max_replicas => Some(Limit::AtMaxReplicas),
        w if w < policy.min_replicas => Some(Limit::AtMinReplicas),
        _ => None,
    };
    let capped = |bound| ScaleReason::Capped {
        backlog: target.backlog,
        per_pod: target.per_pod,
        wanted: target.wanted,
        bound,
    };
    let reason = match limit {
        _ if !target.active => ScaleReason::Activation {
            backlog: target.backlog,
            activation_backlog: policy.activation_backlog,
            current,
            replicas: target.replicas,
        },
        Some(Limit::AtMaxReplicas) => capped(Bound::Max(policy.max_replicas)),
        Some(Limit::AtMinReplicas) => capped(Bound::Min(policy.min_replicas)),
        _ => ScaleReason::Backlog {
            backlog: target.backlog,
            per_pod: target.per_pod,
            replicas: target.replicas,
        },
    };
    Proposal {
        replicas: target.replicas,
        reason,
        limit,
    }
}

/// Rule 4: up only to the lowest recommendation of the scale-up window, down only to the
/// highest of the scale-down window (this one included in both).
fn stabilize(
    policy: &ScalingPolicy,
    history: &History,
    target: &Recommendation,
    proposal: Proposal,
    current: u32,
    now: Instant,
) -> Proposal {
    let up_window = policy.scale_up.stabilization_window_seconds;
    let down_window = policy.scale_down.stabilization_window_seconds;
    let lowest_up = history
        .recommendations_within(now, secs(up_window))
        .fold(target.replicas, u32::min);
    let highest_down = history
        .recommendations_within(now, secs(down_window))
        .fold(target.replicas, u32::max);
    let replicas = current.max(lowest_up).min(highest_down);
    if replicas == target.replicas {
        return proposal;
    }
    let reason = if target.replicas > current {
        ScaleReason::UpStabilized {
            window_seconds: up_window,
            lowest: lowest_up,
        }
    } else {
        ScaleReason::DownStabilized {
            window_seconds: down_window,
            highest: highest_down,
        }
    };
    Proposal {
        replicas,
        reason,
        ..proposal
    }
}

/// Rule 5: the direction's step policies cap the change; `Disabled` forbids it.
fn limit_steps(
    policy: &ScalingPolicy,
    history: &History,
    proposal: Proposal,
    current: u32,
    now: Instant,
) -> Proposal {
    let direction = match proposal.replicas.cmp(&current) {
        std::cmp::Ordering::Greater => Direction::Up,
        std::cmp::Ordering::Less => Direction::Down,
        std::cmp::Ordering::Equal => return proposal,
    };
    let rules = policy.rules(direction);
    if rules.select_policy == SelectPolicy::Disabled {
        return Proposal {
            replicas: current,
            reason: ScaleReason::Disabled {
                direction,
                replicas: current,
            },
            ..proposal
        };
    }
    match step_limit(rules, direction, history, current, now) {
        Some((bound, step)) if direction.goes_past(proposal.replicas, bound) => Proposal {
            replicas: bound,
            reason: ScaleReason::StepLimited {
                direction,
                policy: step.clone(),
                replicas: bound,
            },
            limit: Some(direction.policy_limit()),
        },
        _ => proposal,
    }
}

/// Rule 6: bounds win over everything else (e.g. after maxReplicas was lowered).
fn keep_within_bounds(
    policy: &ScalingPolicy,
    target: &Recommendation,
    proposal: Proposal,
) -> Proposal {
    let bounded = policy.clamp(proposal.replicas);
    if bounded == proposal.replicas {
        return proposal;
    }
    let bound = if bounded < proposal.replicas {
        Bound::Max(policy.max_replicas)
    } else {
        Bound::Min(policy.min_replicas)
    };
    Proposal {
        replicas: bounded,
        reason: ScaleReason::Capped {
            backlog: target.backlog,
            per_pod: target.per_pod,
            wanted: target.wanted,
            bound,
        },
        ..proposal
    }
}

/// The furthest the step policies let the pool go from `current` in `direction`, and the
/// policy that set it; `None` without policies.
fn step_limit<'a>(
    rules: &'a ScalingRules,
    direction: Direction,
    history: &History,
    current: u32,
    now: Instant,
) -> Option<(u32, &'a StepPolicy)> {
    let bounds = rules.policies.iter().map(|policy| {
        let period = secs(policy.period_seconds);
        let value = non_negative(policy.value);
        let bound = match direction {
            Direction::Up => {
                // Replicas at the start of the period: now, minus what this period added.
                let start = current.saturating_sub(history.changed_within(now, period, true));
                match policy.kind {
                    StepKind::Pods => start.saturating_add(value),
                    // At least one more pod, so that percent policies can wake a pool at zero.
                    StepKind::Percent => {
                        let grown = (u64::from(start) * u64::from(100 + value)).div_ceil(100);
                        u32::try_from(grown).unwrap_or(u32::MAX).max(start + 1)
                    }
                }
            }
            Direction::Down => {
                let start = current.saturating_add(history.changed_within(now, period, false));
                match policy.kind {
                    StepKind::Pods => start.saturating_sub(value),
                    StepKind::Percent => {
                        let kept = u64::from(start) * u64::from(100u32.saturating_sub(value)) / 100;
                        u32::try_from(kept).unwrap_or(u32::MAX)
                    }
                }
            }
        };
        (bound, policy)
    });
    // Max allows the largest change: the highest bound up, the lowest bound down.
    let largest_change = match direction {
        Direction::Up => rules.select_policy != SelectPolicy::Min,
        Direction::Down => rules.select_policy == SelectPolicy::Min,
    };
    if largest_change {
        bounds.max_by_key(|(bound, _)| *bound)
    } else {
        bounds.min_by_key(|(bound, _)| *bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(visible: u64) -> QueueDepth {
        QueueDepth {
            visible,
            in_flight: 0,
            delayed: 0,
        }
    }

    fn per_pod(mut policy: ScalingPolicy, n: u32) -> ScalingPolicy {
        policy.target_backlog_per_pod = n;
        policy
    }

    fn pods(value: i32, period_seconds: i32) -> StepPolicy {
        StepPolicy {
            kind: StepKind::Pods,
            value,
            period_seconds,
        }
    }

    fn percent(value: i32, period_seconds: i32) -> StepPolicy {
        StepPolicy {
            kind: StepKind::Percent,
            value,
            period_seconds,
        }
    }

    /// One row of the decision table: a fresh history, one decision.
    struct Row {
        name: &'static str,
        policy: ScalingPolicy,
        depth: Option<QueueDepth>,
        current: u32,
        replicas: u32,
        reason: &'static str,
        limit: Option<Limit>,
    }

    #[test]
    fn decision_table_single_step() {
        let base = ScalingPolicy::new(0, 20);
        let rows = vec![
            Row {
                name: "backlog divided by target per pod, rounded up",
                policy: per_pod(base.clone(), 5),
                depth: Some(depth(42)),
                current: 0,
                replicas: 9,
                reason: "backlog 42 / 5 per pod → 9 replicas",
                limit: None,
            },
            Row {
                name: "exact multiple needs no extra pod",
                policy: per_pod(base.clone(), 5),
                depth: Some(depth(40)),
                current: 8,
                replicas: 8,
                reason: "backlog 40 / 5 per pod → 8 replicas",
                limit: None,
            },
            Row {
                name: "in-flight messages count by default",
                policy: base.clone(),
                depth: Some(QueueDepth {
                    visible: 2,
                    in_flight: 3,
                    delayed: 7,
                }),
                current: 5,
                replicas: 5,
                reason: "backlog 5 / 1 per pod → 5 replicas",
                limit: None,
            },
            Row {
                name: "in-flight can be left out, delayed counted",
                policy: ScalingPolicy {
                    count_in_flight: false,
                    count_delayed: true,
                    ..base.clone()
                },
                depth: Some(QueueDepth {
                    visible: 2,
                    in_flight: 3,
                    delayed: 7,
                }),
                current: 0,
                replicas: 9,
                reason: "backlog 9 / 1 per pod → 9 replicas",
                limit: None,
            },
            Row {
                name: "capped at maxReplicas",
                policy: per_pod(ScalingPolicy::new(0, 10), 5),
                depth: Some(depth(100)),
                current: 2,
                replicas: 10,
                reason: "backlog 100 / 5 per pod → 20 replicas, capped at maxReplicas 10",
                limit: Some(Limit::AtMaxReplicas),
            },
            Row {
                name: "raised to minReplicas",
                policy: ScalingPolicy::new(3, 10),
                depth: Some(depth(1)),
                current: 3,
                replicas: 3,
                reason: "backlog 1 / 1 per pod → 1 replicas, raised to minReplicas 3",
                limit: Some(Limit::AtMinReplicas),
            },
            Row {
                name: "empty queue keeps an idle pool at zero",
                policy: base.clone(),
                depth: Some(depth(0)),
                current: 0,
                replicas: 0,
                reason: "activation: backlog 0 ≤ activationBacklog 0, staying at zero",
                limit: None,
            },
            Row {
                name: "backlog at the activation threshold does not wake the pool",
                policy: ScalingPolicy {
                    activation_backlog: 10,
                    ..base.clone()
                },
                depth: Some(depth(10)),
                current: 0,
                replicas: 0,
                reason: "activation: backlog 10 ≤ activationBacklog 10, staying at zero",
                limit: None,
            },
            Row {
                name: "backlog above the activation threshold wakes the pool at once",
                policy: ScalingPolicy {
                    activation_backlog: 10,
                    ..base.clone()
                },
                depth: Some(depth(11)),
                current: 0,
                replicas: 11,
                reason: "backlog 11 / 1 per pod → 11 replicas",
                limit: None,
            },
            Row {
                name: "unreadable queue holds the current replicas",
                policy: base.clone(),
                depth: None,
                current: 3,
                replicas: 3,
                reason: "holding 3 replicas: queue unreachable",
                limit: None,
            },
            Row {
                name: "unreadable queue never wakes or empties a pool",
                policy: base.clone(),
                depth: None,
                current: 0,
                replicas: 0,
                reason: "holding 0 replicas: queue unreachable",
                limit: None,
            },
            Row {
                name: "unreadable queue still respects a lowered maxReplicas",
                policy: ScalingPolicy::new(0, 2),
                depth: None,
                current: 5,
                replicas: 2,
                reason: "holding 2 replicas: queue unreachable",
                limit: None,
            },
            Row {
                name: "paused holds whatever runs",
                policy: ScalingPolicy {
                    paused: true,
                    ..base.clone()
                },
                depth: Some(depth(50)),
                current: 2,
                replicas: 2,
                reason: "holding 2 replicas: paused",
                limit: None,
            },
            Row {
                name: "pods step limit on scale-up",
                policy: ScalingPolicy {
                    scale_up: ScalingRules {
                        policies: vec![pods(4, 15)],
                        ..ScalingRules::default_up()
                    },
                    ..base.clone()
                },
                depth: Some(depth(12)),
                current: 2,
                replicas: 6,
                reason: "limited by scaleUp policy: +4 pods per 15s → 6 replicas",
                limit: Some(Limit::ScaleUpPolicy),
            },
            Row {
                name: "percent step limit wakes a pool at zero by at least one pod",
                policy: ScalingPolicy {
                    scale_up: ScalingRules {
                        policies: vec![percent(100, 15)],
                        ..ScalingRules::default_up()
                    },
                    ..base.clone()
                },
                depth: Some(depth(12)),
                current: 0,
                replicas: 1,
                reason: "limited by scaleUp policy: +100% per 15s → 1 replicas",
                limit: Some(Limit::ScaleUpPolicy),
            },
            Row {
                name: "selectPolicy Max picks the policy allowing the larger step",
                policy: ScalingPolicy {
                    scale_up: ScalingRules {
                        policies: vec![pods(4, 15), percent(100, 15)],
                        ..ScalingRules::default_up()
                    },
                    ..base.clone()
                },
                depth: Some(depth(20)),
                current: 6,
                replicas: 12,
                reason: "limited by scaleUp policy: +100% per 15s → 12 replicas",
                limit: Some(Limit::ScaleUpPolicy),
            },
            Row {
                name: "selectPolicy Min picks the policy allowing the smaller step",
                policy: ScalingPolicy {
                    scale_up: ScalingRules {
                        policies: vec![pods(4, 15), percent(100, 15)],
                        select_policy: SelectPolicy::Min,
                        ..ScalingRules::default_up()
                    },
                    ..base.clone()
                },
                depth: Some(depth(20)),
                current: 6,
                replicas: 10,
                reason: "limited by scaleUp policy: +4 pods per 15s → 10 replicas",
                limit: Some(Limit::ScaleUpPolicy),
            },
            Row {
                name: "selectPolicy Disabled forbids scaling up",
                policy: ScalingPolicy {
                    scale_up: ScalingRules {
                        select_policy: SelectPolicy::Disabled,
                        ..ScalingRules::default_up()
                    },
                    ..base.clone()
                },
                depth: Some(depth(20)),
                current: 1,
                replicas: 1,
                reason: "scaleUp selectPolicy is Disabled: holding 1 replicas",
                limit: None,
            },
            Row {
                name: "without history a scale-down window of 0 scales down at once",
                policy: ScalingPolicy {
                    scale_down: ScalingRules {
                        stabilization_window_seconds: 0,
                        ..ScalingRules::default_down()
                    },
                    ..base.clone()
                },
                depth: Some(depth(2)),
                current: 8,
                replicas: 2,
                reason: "backlog 2 / 1 per pod → 2 replicas",
                limit: None,
            },
            Row {
                name: "percent step limit on scale-down",
                policy: ScalingPolicy {
                    scale_down: ScalingRules {
                        stabilization_window_seconds: 0,
                        policies: vec![percent(50, 60)],
                        ..ScalingRules::default_down()
                    },
                    ..base.clone()
                },
                depth: Some(depth(0)),
                current: 9,
                replicas: 4,
                reason: "limited by scaleDown policy: -50% per 60s → 4 replicas",
                limit: Some(Limit::ScaleDownPolicy),
            },
            Row {
                name: "a lowered maxReplicas wins over a disabled scale-down",
                policy: ScalingPolicy {
                    scale_down: ScalingRules {
                        select_policy: SelectPolicy::Disabled,
                        ..ScalingRules::default_down()
                    },
                    ..ScalingPolicy::new(0, 3)
                },
                depth: Some(depth(10)),
                current: 6,
                replicas: 3,
                reason: "backlog 10 / 1 per pod → 10 replicas, capped at maxReplicas 3",
                limit: Some(Limit::AtMaxReplicas),
            },
        ];
        let now = Instant::now();
        for row in rows {
            let decision = decide(
                &row.policy,
                &History::new(),
                &Observation::fresh(row.depth),
                row.current,
                now,
            )
            .decision;
            assert_eq!(decision.replicas, row.replicas, "{}: replicas", row.name);
            assert_eq!(
                decision.reason.to_string(),
                row.reason,
                "{}: reason",
                row.name
            );
            assert_eq!(decision.limit, row.limit, "{}: limit", row.name);
        }
    }

    /// Decides on (seconds, visible backlog) readings as the controller does, carrying out
    /// each decision and keeping its history, and returns the replicas after each step.
    fn run(
        policy: &ScalingPolicy,
        start: u32,
        readings: &[(u64, Option<u64>)],
    ) -> Vec<(u32, String)> {
        let fresh = |(at, visible): &(u64, Option<u64>)| (*at, *visible, true);
        run_observed(
            policy,
            start,
            &readings.iter().map(fresh).collect::<Vec<_>>(),
        )
    }

    /// Like [`run`], with (seconds, visible backlog, fresh) observations.
    fn run_observed(
        policy: &ScalingPolicy,
        start: u32,
        observations: &[(u64, Option<u64>, bool)],
    ) -> Vec<(u32, String)> {
        let t0 = Instant::now();
        let mut history = History::starting_at(t0, start);
        let mut current = start;
        observations
            .iter()
            .map(|(at, visible, fresh)| {
                let observed = Observation {
                    depth: visible.map(depth),
                    fresh: *fresh,
                };
                let decided = decide(
                    policy,
                    &history,
                    &observed,
                    current,
                    t0 + Duration::from_secs(*at),
                );
                history = decided.history;
                current = decided.decision.replicas;
                (current, decided.decision.reason.to_string())
            })
            .collect()
    }

    #[test]
    fn fresh_pool_scales_up_at_once_and_to_zero_only_after_the_window() {
        let policy = per_pod(ScalingPolicy::new(0, 10), 5);
        let steps = run(
            &policy,
            0,
            &[
                (0, Some(0)),
                (5, Some(42)),
                (10, Some(0)),
                (40, Some(0)),
                (64, Some(0)),
                (66, Some(0)),
            ],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [0, 9, 9, 9, 9, 0], "{steps:?}");
        assert_eq!(steps[1].1, "backlog 42 / 5 per pod → 9 replicas");
        assert_eq!(
            steps[2].1,
            "scale-down stabilized: highest recommendation in the last 60s was 9"
        );
        assert_eq!(
            steps[5].1,
            "activation: backlog 0 ≤ activationBacklog 0 → 0 replicas"
        );
    }

    #[test]
    fn scale_down_follows_the_highest_recommendation_of_the_window() {
        let policy = ScalingPolicy::new(0, 20);
        let steps = run(
            &policy,
            0,
            &[
                (0, Some(10)),
                (20, Some(6)),
                (40, Some(3)),
                (61, Some(3)),
                (81, Some(3)),
            ],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        // At 61 s the 10 from t=0 has left the window, the 6 from t=20 has not.
        assert_eq!(replicas, [10, 10, 10, 6, 3], "{steps:?}");
        assert_eq!(
            steps[3].1,
            "scale-down stabilized: highest recommendation in the last 60s was 6"
        );
    }

    #[test]
    fn operator_restart_waits_a_whole_window_before_scaling_down() {
        let policy = ScalingPolicy::new(0, 20);
        let steps = run(&policy, 7, &[(0, Some(0)), (59, Some(0)), (60, Some(0))]);
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [7, 7, 0], "{steps:?}");
    }

    #[test]
    fn scale_up_window_ignores_a_short_spike() {
        let policy = ScalingPolicy {
            scale_up: ScalingRules {
                stabilization_window_seconds: 30,
                ..ScalingRules::default_up()
            },
            ..ScalingPolicy::new(0, 20)
        };
        let steps = run(
            &policy,
            2,
            &[
                (0, Some(2)),
                (10, Some(15)),
                (20, Some(2)),
                (45, Some(15)),
                (65, Some(15)),
            ],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [2, 2, 2, 2, 15], "{steps:?}");
        assert_eq!(
            steps[1].1,
            "scale-up stabilized: lowest recommendation in the last 30s was 2"
        );
    }

    #[test]
    fn step_limits_count_changes_within_the_period() {
        let policy = ScalingPolicy {
            scale_up: ScalingRules {
                policies: vec![pods(4, 60)],
                ..ScalingRules::default_up()
            },
            ..ScalingPolicy::new(0, 50)
        };
        let steps = run(
            &policy,
            0,
            &[
                (0, Some(30)),
                (10, Some(30)),
                (59, Some(30)),
                (61, Some(30)),
            ],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        // The first 4 pods were added at t=0: no more until t=60 ends their period.
        assert_eq!(replicas, [4, 4, 4, 8], "{steps:?}");
        assert_eq!(
            steps[3].1,
            "limited by scaleUp policy: +4 pods per 60s → 8 replicas"
        );
    }

    #[test]
    fn an_outage_holds_and_recovery_resumes() {
        let policy = ScalingPolicy::new(0, 20);
        let steps = run(
            &policy,
            0,
            &[(0, Some(5)), (5, None), (100, None), (200, Some(8))],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [5, 5, 5, 8], "{steps:?}");
        assert_eq!(steps[2].1, "holding 5 replicas: queue unreachable");
    }

    #[test]
    fn policy_from_spec_reads_target_default_and_bounds() {
        let spec: QueueWorkerPoolSpec = serde_json::from_value(serde_json::json!({
            "queue": {"url": "http://x/1/q", "region": "us-east-1"},
            "maxReplicas": 4,
            "concurrency": 3,
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
        }))
        .unwrap();
        let policy = ScalingPolicy::from(&spec);
        assert_eq!(
            policy.target_backlog_per_pod, 3,
            "targetBacklogPerPod defaults to concurrency"
        );
        assert_eq!((policy.min_replicas, policy.max_replicas), (0, 4));
        assert_eq!(policy.scale_down.stabilization_window_seconds, 60);
    }

    #[test]
    fn history_forgets_what_no_window_needs() {
        let policy = ScalingPolicy::new(0, 5);
        let t0 = Instant::now();
        let mut history = History::new();
        for s in 0..1000 {
            let observed = Observation::fresh(Some(depth(s % 7)));
            history = decide(&policy, &history, &observed, 1, t0 + Duration::from_secs(s)).history;
        }
        assert!(
            history.recommendations.len() <= 61,
            "{}",
            history.recommendations.len()
        );
    }

    #[test]
    fn a_reused_reading_is_not_counted_twice_in_the_window() {
        let policy = ScalingPolicy::new(0, 20);
        // The reading of t=0 reused at t=50 (a watch event within the poll interval) does not
        // renew it: at t=61 the window holds no 10 any more and the pool scales down.
        let reused = run_observed(
            &policy,
            0,
            &[
                (0, Some(10), true),
                (50, Some(10), false),
                (61, Some(0), true),
            ],
        );
        let replicas: Vec<u32> = reused.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [10, 10, 0], "{reused:?}");
        // Read afresh at t=50, the same depth holds the pool until t=110.
        let fresh = run(&policy, 0, &[(0, Some(10)), (50, Some(10)), (61, Some(0))]);
        let replicas: Vec<u32> = fresh.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [10, 10, 10], "{fresh:?}");
    }

    #[test]
    fn a_reused_reading_still_counts_its_change_for_step_limits() {
        let policy = ScalingPolicy {
            scale_up: ScalingRules {
                policies: vec![pods(4, 60)],
                ..ScalingRules::default_up()
            },
            ..ScalingPolicy::new(0, 50)
        };
        // t=0 adds 4 pods. The reading reused at t=61 (a new period) adds 4 more, and that
        // change counts: at t=62 the period holds +4 already, so no more pods.
        let steps = run_observed(
            &policy,
            0,
            &[
                (0, Some(30), true),
                (61, Some(30), false),
                (62, Some(30), true),
            ],
        );
        let replicas: Vec<u32> = steps.iter().map(|(r, _)| *r).collect();
        assert_eq!(replicas, [4, 8, 8], "{steps:?}");
    }

    #[test]
    fn the_caller_history_is_untouched_until_it_keeps_the_result() {
        let policy = ScalingPolicy::new(0, 20);
        let t0 = Instant::now();
        let history = History::starting_at(t0, 3);
        let before = history.clone();
        let decided = decide(
            &policy,
            &history,
            &Observation::fresh(Some(depth(9))),
            3,
            t0,
        );
        assert_eq!(decided.decision.replicas, 9);
        assert_eq!(history.recommendations, before.recommendations);
        assert_eq!(history.changes, before.changes);
        assert_eq!(decided.history.changes.back(), Some(&(t0, 6)));
    }
}
