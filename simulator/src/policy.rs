//! The two autoscalers under comparison. Both see the same exact queue numbers; they differ
//! in how often they look and what they do with what they see.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use qwp_pool::decision::{self, History, QueueDepth, ScalingPolicy, decide};

#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    pub visible: u64,
    pub in_flight: u64,
}

pub trait Scaler {
    fn name(&self) -> &'static str;
    /// Called every simulation tick; returns the replicas to set when the scaler acts.
    fn tick(&mut self, now_ms: u64, observed: Observation, replicas: u32) -> Option<u32>;
}

/// qwp with the QueueWorkerPool defaults: poll every 5 s, target backlog per pod =
/// concurrency, in-flight counted, scale-up immediate, scale-down after a 60 s window. Every
/// poll calls [`decide`], the function the operator's reconciler calls, and keeps its history
/// as the reconciler does after applying the replicas.
pub struct Qwp {
    policy: ScalingPolicy,
    history: History,
    poll_ms: u64,
    epoch: Instant,
}

impl Qwp {
    pub fn with_defaults(concurrency: u32, max_replicas: u32) -> Self {
        let mut policy = ScalingPolicy::new(0, max_replicas);
        policy.target_backlog_per_pod = concurrency;
        Qwp {
            policy,
            history: History::new(),
            poll_ms: 5_000,
            epoch: Instant::now(),
        }
    }
}

impl Scaler for Qwp {
    fn name(&self) -> &'static str {
        "qwp"
    }

    fn tick(&mut self, now_ms: u64, observed: Observation, replicas: u32) -> Option<u32> {
        if !now_ms.is_multiple_of(self.poll_ms) {
            return None;
        }
        let depth = QueueDepth {
            visible: observed.visible,
            in_flight: observed.in_flight,
            delayed: 0,
        };
        let now = self.epoch + Duration::from_millis(now_ms);
        let observed = decision::Observation::fresh(Some(depth));
        let decided = decide(&self.policy, &self.history, &observed, replicas, now);
        self.history = decided.history;
        Some(decided.decision.replicas)
    }
}

/// The settings of a KEDA ScaledObject (`aws-sqs-queue` trigger) and of the HPA it creates.
#[derive(Clone, Copy, Debug)]
pub struct KedaSettings {
    /// `queueLength`: target messages per pod (AverageValue).
    pub queue_length: u32,
    pub max_replicas: u32,
    /// `pollingInterval`: how often KEDA checks activity (activation, scale to zero).
    pub polling_interval_ms: u64,
    /// `cooldownPeriod`: since the last active poll, before KEDA scales an idle target to 0.
    pub cooldown_ms: u64,
    /// The controller-manager's `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_ms: u64,
    /// The HPA's tolerance (`--horizontal-pod-autoscaler-tolerance`).
    pub tolerance: f64,
    /// How far one HPA sync may scale up.
    pub scale_up: ScaleUpLimit,
    /// HPA `behavior.scaleDown.stabilizationWindowSeconds`.
    pub down_stabilization_ms: u64,
    /// Whether each HPA sync reads the queue afresh: KEDA's metrics adapter asks the scaler
    /// on every request (KEDA 2.x default), unless the trigger sets `useCachedMetrics: true`,
    /// in which case the HPA gets the value of KEDA's last poll.
    pub hpa_reads_live: bool,
}

impl KedaSettings {
    /// Every setting at its default (KEDA 2.x, Kubernetes HPA v2).
    pub fn defaults(queue_length: u32, max_replicas: u32) -> Self {
        KedaSettings {
            queue_length: queue_length.max(1),
            max_replicas,
            polling_interval_ms: 30_000,
            cooldown_ms: 300_000,
            hpa_sync_ms: 15_000,
            tolerance: 0.1,
            scale_up: ScaleUpLimit::WithoutBehavior,
            down_stabilization_ms: 300_000,
            hpa_reads_live: true,
        }
    }

    /// Tuned for fast reaction (`make bench-keda`'s `keda-fast`): short polling and cooldown,
    /// HPA scale-up unlimited, scale-down window = cooldown.
    pub fn fast(queue_length: u32, max_replicas: u32, polling_s: u64, cooldown_s: u64) -> Self {
        KedaSettings {
            polling_interval_ms: polling_s * 1000,
            cooldown_ms: cooldown_s * 1000,
            scale_up: ScaleUpLimit::Policies {
                pods: max_replicas,
                percent: 0,
            },
            down_stabilization_ms: cooldown_s * 1000,
            ..KedaSettings::defaults(queue_length, max_replicas)
        }
    }
}

/// The HPA's bound on one scale-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleUpLimit {
    /// No `behavior` on the HPA (a ScaledObject without
    /// `advanced.horizontalPodAutoscalerConfig.behavior`): the controller's rule for HPAs
    /// without behavior, at most max(4, 2 × current) replicas *in total* per sync. Measured
    /// on v1.34 (`make bench-keda`): 1 → 4 → 8 → 15, not the documented default policies'
    /// 1 → 5 → 10 → 15, which apply only once `behavior` is set.
    WithoutBehavior,
    /// `behavior.scaleUp` policies, `selectPolicy: Max`: at most current + max(pods,
    /// current × percent / 100) per sync.
    Policies { pods: u32, percent: u32 },
}

impl ScaleUpLimit {
    fn limit(self, replicas: u32) -> u32 {
        match self {
            ScaleUpLimit::WithoutBehavior => (2 * replicas).max(4),
            ScaleUpLimit::Policies { pods, percent } => {
                replicas + pods.max(replicas * percent / 100)
            }
        }
    }
}

/// KEDA's `aws-sqs-queue` scaler driving an HPA ([`KedaSettings`]):
/// - KEDA polls the metric (visible + in flight) every `pollingInterval`; at each poll it
///   activates a pool at zero (replicas → 1) when the metric exceeds the activation value
///   (0), and scales an inactive pool to zero once `cooldownPeriod` has passed since it was
///   last active.
/// - The HPA syncs every 15 s on the queue as it is then (KEDA's adapter asks the scaler on
///   each request; with `useCachedMetrics` the last polled value) with target `queueLength`
///   per pod (AverageValue): it changes replicas only when |1 − metric/(queueLength × current)| > 0.1,
///   to ceil(metric / queueLength) within [1, max]; scale-up within [`ScaleUpLimit`] per
///   sync; scale-down to the highest recommendation of the stabilization window.
pub struct KedaHpa {
    name: &'static str,
    settings: KedaSettings,
    metric: u64,
    last_active_ms: Option<u64>,
    recommendations: VecDeque<(u64, u32)>,
}

impl KedaHpa {
    pub fn new(name: &'static str, settings: KedaSettings) -> Self {
        KedaHpa {
            name,
            settings,
            metric: 0,
            last_active_ms: None,
            recommendations: VecDeque::new(),
        }
    }

    pub fn with_defaults(queue_length: u32, max_replicas: u32) -> Self {
        KedaHpa::new(
            "keda+hpa",
            KedaSettings::defaults(queue_length, max_replicas),
        )
    }

    fn keda_poll(&mut self, now_ms: u64, observed: Observation, replicas: u32) -> Option<u32> {
        self.metric = observed.visible + observed.in_flight;
        if self.metric > 0 {
            self.last_active_ms = Some(now_ms);
            if replicas == 0 {
                return Some(1);
            }
        } else if replicas > 0 {
            let idle_since = self.last_active_ms.unwrap_or(0);
            if now_ms.saturating_sub(idle_since) >= self.settings.cooldown_ms {
                self.recommendations.clear();
                return Some(0);
            }
        }
        None
    }

    fn hpa_sync(&mut self, now_ms: u64, replicas: u32) -> Option<u32> {
        let s = self.settings;
        if replicas == 0 {
            return None; // the HPA is idle while KEDA holds the pool at zero
        }
        let target = f64::from(s.queue_length);
        let ratio = self.metric as f64 / (target * f64::from(replicas));
        let recommendation = if (1.0 - ratio).abs() <= s.tolerance {
            replicas
        } else {
            let wanted = self.metric.div_ceil(u64::from(s.queue_length));
            u32::try_from(wanted)
                .unwrap_or(u32::MAX)
                .clamp(1, s.max_replicas)
        };
        self.recommendations.push_back((now_ms, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now_ms - at >= s.down_stabilization_ms.max(1))
        {
            self.recommendations.pop_front();
        }
        let mut desired = recommendation;
        if desired < replicas {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(desired);
            desired = highest.min(replicas);
        }
        if desired > replicas {
            desired = desired.min(s.scale_up.limit(replicas));
        }
        (desired != replicas).then_some(desired)
    }
}

impl Scaler for KedaHpa {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tick(&mut self, now_ms: u64, observed: Observation, replicas: u32) -> Option<u32> {
        if now_ms.is_multiple_of(self.settings.polling_interval_ms)
            && let Some(r) = self.keda_poll(now_ms, observed, replicas)
        {
            // The HPA resumes at its next sync after an activation, not in the same instant.
            return Some(r);
        }
        if now_ms.is_multiple_of(self.settings.hpa_sync_ms) {
            if self.settings.hpa_reads_live {
                self.metric = observed.visible + observed.in_flight;
            }
            return self.hpa_sync(now_ms, replicas);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(visible: u64) -> Observation {
        Observation {
            visible,
            in_flight: 0,
        }
    }

    #[test]
    fn keda_wakes_at_poll_then_hpa_grows_to_at_most_max_4_or_double() {
        let mut keda = KedaHpa::with_defaults(5, 15);
        assert_eq!(keda.tick(0, observe(1000), 0), Some(1));
        // HPA without behavior, sync at 15 s: from 1 pod to at most max(4, 2 × 1).
        assert_eq!(keda.tick(15_000, observe(1000), 1), Some(4));
        assert_eq!(keda.tick(30_000, observe(1000), 4), Some(8));
        assert_eq!(keda.tick(45_000, observe(1000), 8), Some(15));
    }

    #[test]
    fn hpa_behavior_policies_add_pods_or_percent() {
        let limit = ScaleUpLimit::Policies {
            pods: 4,
            percent: 100,
        };
        assert_eq!(limit.limit(1), 5);
        assert_eq!(limit.limit(5), 10);
        assert_eq!(ScaleUpLimit::WithoutBehavior.limit(1), 4);
        assert_eq!(ScaleUpLimit::WithoutBehavior.limit(5), 10);
    }

    #[test]
    fn keda_ignores_changes_within_tolerance() {
        let mut keda = KedaHpa::with_defaults(5, 15);
        keda.tick(0, observe(50), 0);
        // 52 / (5 × 10) = 1.04: within 10 %, no change.
        assert_eq!(keda.tick(30_000, observe(52), 10), None);
    }

    #[test]
    fn hpa_scales_down_only_after_its_stabilization_window() {
        let mut keda = KedaHpa::with_defaults(5, 15);
        keda.tick(0, observe(50), 0);
        assert_eq!(keda.tick(15_000, observe(20), 1), Some(4));
        // A small backlog keeps KEDA active; the HPA holds the highest recommendation of
        // the last 300 s (4, made at 15 s).
        assert_eq!(keda.tick(30_000, observe(3), 4), None);
        assert_eq!(keda.tick(300_000, observe(3), 4), None);
        assert_eq!(keda.tick(315_000, observe(3), 4), Some(1));
    }

    #[test]
    fn keda_scales_to_zero_after_cooldown_since_last_active_poll() {
        let mut keda = KedaHpa::with_defaults(5, 15);
        keda.tick(0, observe(50), 0);
        assert_eq!(keda.tick(270_000, observe(0), 1), None);
        assert_eq!(keda.tick(300_000, observe(0), 1), Some(0));
    }

    #[test]
    fn the_hpa_reads_the_queue_at_its_own_sync_unless_metrics_are_cached() {
        let mut live = KedaHpa::with_defaults(5, 15);
        assert_eq!(live.tick(0, observe(1000), 0), Some(1));
        // 15 s later most messages are gone: the adapter asks SQS again, the HPA sees 10.
        assert_eq!(live.tick(15_000, observe(10), 1), Some(2));
        let mut cached = KedaHpa::new(
            "cached",
            KedaSettings {
                hpa_reads_live: false,
                ..KedaSettings::defaults(5, 15)
            },
        );
        cached.tick(0, observe(1000), 0);
        // useCachedMetrics: the HPA still sees the 1000 of KEDA's last poll.
        assert_eq!(cached.tick(15_000, observe(10), 1), Some(4));
    }

    #[test]
    fn tuned_keda_polls_often_and_scales_up_without_steps() {
        let mut fast = KedaHpa::new("fast", KedaSettings::fast(5, 15, 5, 60));
        assert_eq!(fast.tick(5_000, observe(1000), 0), Some(1));
        assert_eq!(fast.tick(15_000, observe(1000), 1), Some(15));
        // Idle: to zero one cooldown (60 s) after the last active poll.
        assert_eq!(fast.tick(70_000, observe(0), 15), None);
        assert_eq!(fast.tick(75_000, observe(0), 15), Some(0));
    }

    #[test]
    fn qwp_polls_every_five_seconds_and_scales_up_at_once() {
        let mut qwp = Qwp::with_defaults(5, 15);
        assert_eq!(qwp.tick(100, observe(1000), 0), None);
        assert_eq!(qwp.tick(5_000, observe(1000), 0), Some(15));
    }
}
