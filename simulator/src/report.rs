//! Tables and CSV timelines from simulation outcomes.

use std::fmt::Write as _;

use crate::model::Outcome;
use crate::trace::Trace;

pub fn percentile_ms(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The lower bounds no scaler can beat: every job takes its own time, the pool can run at
/// most max × concurrency jobs at once, and a pod-second buys `concurrency` job-seconds.
pub struct Ideal {
    pub drain_s: f64,
    pub pod_seconds: f64,
}

pub fn ideal(trace: &Trace, jobs: usize, arrivals_span_s: f64) -> Ideal {
    let work_s = jobs as f64 * trace.job_seconds;
    let capacity = f64::from(trace.max_replicas * trace.concurrency);
    Ideal {
        drain_s: (work_s / capacity).max(arrivals_span_s) + trace.job_seconds,
        pod_seconds: work_s / f64::from(trace.concurrency),
    }
}

pub fn markdown_table(rows: &[(Trace, Vec<Outcome>)]) -> String {
    let mut out = String::new();
    out.push_str(
        "| trace | scaler | jobs | latency p50 | latency p99 | drain | pod-seconds | back to zero | peak backlog | peak pods |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (trace, outcomes) in rows {
        for o in outcomes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} s | {:.1} s | {:.0} s | {:.0} | {} | {} | {} |",
                trace.name,
                o.scaler,
                o.jobs,
                percentile_ms(&o.latencies_ms, 50.0) as f64 / 1000.0,
                percentile_ms(&o.latencies_ms, 99.0) as f64 / 1000.0,
                o.drain_ms as f64 / 1000.0,
                o.pod_seconds,
                o.back_to_zero_ms
                    .map(|ms| format!("{:.0} s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "never".into()),
                o.peak_backlog,
                o.peak_replicas,
            );
        }
        let jobs = outcomes.first().map(|o| o.jobs).unwrap_or(0);
        let span_s = outcomes
            .first()
            .map_or(0.0, |o| o.arrivals_span_ms as f64 / 1000.0);
        let best = ideal(trace, jobs, span_s);
        let _ = writeln!(
            out,
            "| {} | *ideal bound* | {jobs} | {:.1} s | | {:.0} s | {:.0} | 0 s | | {} |",
            trace.name, trace.job_seconds, best.drain_s, best.pod_seconds, trace.max_replicas
        );
    }
    out
}

/// One CSV per trace: a row per second with both scalers' columns side by side.
pub fn timeline_csv(outcomes: &[Outcome]) -> String {
    let mut out = String::from("second");
    for o in outcomes {
        let s = o.scaler;
        let _ = write!(out, ",{s}_visible,{s}_in_flight,{s}_desired,{s}_ready");
    }
    out.push('\n');
    let rows = outcomes.iter().map(|o| o.timeline.len()).max().unwrap_or(0);
    for i in 0..rows {
        let _ = write!(out, "{i}");
        for o in outcomes {
            match o.timeline.get(i) {
                Some(s) => {
                    let _ = write!(
                        out,
                        ",{},{},{},{}",
                        s.visible, s.in_flight, s.desired, s.ready
                    );
                }
                None => out.push_str(",0,0,0,0"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let data: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_ms(&data, 50.0), 50);
        assert_eq!(percentile_ms(&data, 99.0), 99);
        assert_eq!(percentile_ms(&data, 100.0), 100);
        assert_eq!(percentile_ms(&[7], 99.0), 7);
        assert_eq!(percentile_ms(&[], 50.0), 0);
    }

    #[test]
    fn flash_sale_ideal_is_capacity_bound() {
        let trace = crate::trace::flash_sale();
        let best = ideal(&trace, 2896, 59.9);
        // 2896 jobs × 3 s / 75 slots = 115.84 s, plus the last job's own 3 s.
        assert!((best.drain_s - 118.84).abs() < 0.01, "{}", best.drain_s);
        assert!((best.pod_seconds - 1737.6).abs() < 0.01);
    }
}
