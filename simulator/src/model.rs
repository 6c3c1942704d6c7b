//! The queue and the pods. Time advances in ticks of [`TICK_MS`]; arrivals are deterministic
//! (a fractional accumulator), so every run of a trace gives the same numbers.

use std::collections::VecDeque;

use crate::policy::{Observation, Scaler};
use crate::trace::Trace;

pub const TICK_MS: u64 = 100;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// From the Deployment's scale change to a pod receiving messages.
    pub pod_startup_ms: u64,
    /// Give up this long after the last arrival (a policy that never drains is reported so).
    pub max_tail_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pod_startup_ms: 5_000,
            max_tail_ms: 2 * 3600 * 1000,
        }
    }
}

/// One row of the timeline, once a second.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub second: u64,
    pub visible: u64,
    pub in_flight: u64,
    pub desired: u32,
    pub ready: u32,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub trace: &'static str,
    pub scaler: &'static str,
    pub jobs: usize,
    /// Arrival → completion, sorted ascending, in ms.
    pub latencies_ms: Vec<u64>,
    /// First arrival → last completion.
    pub drain_ms: u64,
    pub pod_seconds: f64,
    /// First arrival → last arrival.
    pub arrivals_span_ms: u64,
    /// Last completion → no pod left; `None` if pods were still there at the end.
    pub back_to_zero_ms: Option<u64>,
    pub peak_backlog: u64,
    pub peak_replicas: u32,
    pub timeline: Vec<Sample>,
}

struct Pod {
    ready_at_ms: u64,
    draining: bool,
    /// Completion times (ms) and arrival times of the jobs it runs.
    jobs: Vec<(u64, u64)>,
}

pub fn run(trace: &Trace, scaler: &mut dyn Scaler, settings: Settings) -> Outcome {
    let slots = trace.concurrency as usize;
    let job_ms = (trace.job_seconds * 1000.0).round() as u64;
    let arrival_end_ms = trace.arrival_seconds * 1000;
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut pods: Vec<Pod> = Vec::new();
    let mut desired: u32 = 0;
    let mut pending_arrivals = 0.0_f64;
    let mut latencies_ms = Vec::new();
    let mut pod_ms: u64 = 0;
    let mut first_arrival_ms = None;
    let mut last_completion_ms = 0;
    let mut last_pod_ms: Option<u64> = None;
    let mut last_arrival_ms = 0;
    let mut ended_at_zero = false;
    let mut peak_backlog = 0;
    let mut peak_replicas = 0;
    let mut timeline = Vec::new();

    let mut now = 0;
    loop {
        // Arrivals during this tick.
        pending_arrivals += trace.rate_at(now as f64 / 1000.0) * TICK_MS as f64 / 1000.0;
        while pending_arrivals >= 1.0 {
            pending_arrivals -= 1.0;
            queue.push_back(now);
            first_arrival_ms.get_or_insert(now);
            last_arrival_ms = now;
        }

        // Completions; drained pods leave.
        for pod in &mut pods {
            pod.jobs.retain(|&(done_at, arrived)| {
                if done_at <= now {
                    latencies_ms.push(done_at - arrived);
                    last_completion_ms = last_completion_ms.max(done_at);
                    false
                } else {
                    true
                }
            });
        }
        pods.retain(|pod| !(pod.draining && pod.jobs.is_empty()));

        // Ready pods take messages into free slots, round robin so load spreads as it does
        // across long-polling workers.
        let mut took = true;
        while took && !queue.is_empty() {
            took = false;
            for pod in pods
                .iter_mut()
                .filter(|p| !p.draining && p.ready_at_ms <= now)
            {
                if pod.jobs.len() < slots
                    && let Some(arrived) = queue.pop_front()
                {
                    pod.jobs.push((now + job_ms, arrived));
                    took = true;
                }
            }
        }

        let in_flight: u64 = pods.iter().map(|p| p.jobs.len() as u64).sum();
        let observed = Observation {
            visible: queue.len() as u64,
            in_flight,
        };
        if let Some(replicas) = scaler.tick(now, observed, desired) {
            desired = replicas;
        }
        reconcile_pods(
            &mut pods,
            desired,
            now + settings.pod_startup_ms,
            scaler.name(),
        );

        pod_ms += pods.len() as u64 * TICK_MS;
        if !pods.is_empty() {
            last_pod_ms = Some(now);
        }
        peak_backlog = peak_backlog.max(queue.len() as u64);
        let serving = pods.iter().filter(|p| !p.draining).count() as u32;
        peak_replicas = peak_replicas.max(serving);
        if now.is_multiple_of(1000) {
            timeline.push(Sample {
                second: now / 1000,
                visible: queue.len() as u64,
                in_flight,
                desired,
                ready: pods
                    .iter()
                    .filter(|p| !p.draining && p.ready_at_ms <= now)
                    .count() as u32,
            });
        }

        let all_done = now >= arrival_end_ms && queue.is_empty() && in_flight == 0;
        if all_done && pods.is_empty() {
            ended_at_zero = true;
            break;
        }
        if now > arrival_end_ms + settings.max_tail_ms {
            break;
        }
        now += TICK_MS;
    }

    latencies_ms.sort_unstable();
    let first = first_arrival_ms.unwrap_or(0);
    Outcome {
        trace: trace.name,
        scaler: scaler.name(),
        jobs: latencies_ms.len(),
        latencies_ms,
        drain_ms: last_completion_ms.saturating_sub(first),
        pod_seconds: pod_ms as f64 / 1000.0,
        back_to_zero_ms: ended_at_zero.then(|| {
            last_pod_ms
                .map_or(0, |at| at + TICK_MS)
                .saturating_sub(last_completion_ms)
        }),
        arrivals_span_ms: last_arrival_ms.saturating_sub(first),
        peak_backlog,
        peak_replicas,
        timeline,
    }
}

/// Applies the desired replicas as a Deployment would. On scale-down, qwp's pods carry a
/// deletion cost equal to their in-flight jobs, so idle pods go first; without it, the
/// ReplicaSet removes not-yet-ready pods, then the newest. Removed pods drain: they finish
/// their jobs (the worker's SIGTERM handling) and then leave.
fn reconcile_pods(pods: &mut Vec<Pod>, desired: u32, ready_at_ms: u64, scaler: &str) {
    let serving: Vec<usize> = (0..pods.len()).filter(|&i| !pods[i].draining).collect();
    let current = serving.len() as u32;
    if desired > current {
        for _ in current..desired {
            pods.push(Pod {
                ready_at_ms,
                draining: false,
                jobs: Vec::new(),
            });
        }
    } else if desired < current {
        let mut victims = serving;
        if scaler == "qwp" {
            victims.sort_by_key(|&i| (pods[i].jobs.len(), std::cmp::Reverse(pods[i].ready_at_ms)));
        } else {
            victims.sort_by_key(|&i| std::cmp::Reverse(pods[i].ready_at_ms));
        }
        for &i in victims.iter().take((current - desired) as usize) {
            pods[i].draining = true;
        }
        pods.retain(|pod| !(pod.draining && pod.jobs.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{KedaHpa, Qwp};
    use crate::trace;

    #[test]
    fn every_job_completes_once_under_both_scalers() {
        let trace = trace::flash_sale();
        let expected = (48.27_f64 * 60.0).floor() as usize;
        for scaler in [
            &mut Qwp::with_defaults(5, 15) as &mut dyn Scaler,
            &mut KedaHpa::with_defaults(5, 15),
        ] {
            let outcome = run(&trace, scaler, Settings::default());
            assert!(
                outcome.jobs.abs_diff(expected) <= 1,
                "{}: {} jobs completed, {expected} arrived",
                outcome.scaler,
                outcome.jobs
            );
            assert!(
                outcome.back_to_zero_ms.is_some(),
                "{} never returned to zero",
                outcome.scaler
            );
            assert!(outcome.peak_replicas <= 15);
        }
    }

    #[test]
    fn replicas_stay_within_max_and_jobs_take_their_time() {
        let trace = trace::spiky();
        let outcome = run(&trace, &mut Qwp::with_defaults(5, 15), Settings::default());
        assert!(
            outcome
                .timeline
                .iter()
                .all(|s| s.desired <= 15 && s.ready <= 15)
        );
        // A job can never finish faster than its own work.
        assert!(outcome.latencies_ms[0] >= 3_000);
    }
}

#[cfg(test)]
mod scale_down_tests {
    use super::*;

    fn pods() -> Vec<Pod> {
        vec![
            Pod {
                ready_at_ms: 0,
                draining: false,
                jobs: vec![(9_000, 0)],
            },
            Pod {
                ready_at_ms: 1_000,
                draining: false,
                jobs: vec![],
            },
            Pod {
                ready_at_ms: 2_000,
                draining: false,
                jobs: vec![(9_000, 0), (9_000, 0)],
            },
        ]
    }

    #[test]
    fn qwp_removes_idle_pods_first_and_busy_ones_drain() {
        let mut pods = pods();
        reconcile_pods(&mut pods, 1, 0, "qwp");
        // The idle pod left at once; the pod with one job drains; the busiest stays.
        assert_eq!(pods.len(), 2);
        assert!(pods[0].draining && pods[0].jobs.len() == 1);
        assert!(!pods[1].draining && pods[1].jobs.len() == 2);
    }

    #[test]
    fn without_deletion_cost_the_newest_pods_go() {
        let mut pods = pods();
        reconcile_pods(&mut pods, 1, 0, "keda+hpa");
        // The newest (busiest) pod and the idle one were chosen; the busy one drains.
        assert_eq!(pods.iter().filter(|p| !p.draining).count(), 1);
        assert_eq!(pods.iter().find(|p| !p.draining).unwrap().ready_at_ms, 0);
    }
}
