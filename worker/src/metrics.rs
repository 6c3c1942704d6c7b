//! Prometheus metrics, and the in-flight count the operator reads from `/status`.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a message left this worker's hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A `done` result was stored.
    Done,
    /// A `failed` result was stored (missing input, the processor rejected it).
    Failed,
    /// Its result already existed (a redelivery); acknowledged without running.
    AlreadyDone,
    /// Returned to the queue with backoff after a transient error.
    Retried,
    /// A malformed body, deleted or moved to the DLQ.
    Poison,
    /// Handed back at shutdown (visibility reset to 0) before it finished.
    Released,
    /// Its visibility could not be held (the heartbeat failed until it lapsed, or the receipt
    /// handle was invalid): the attempt was stopped and the message left to the queue.
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::AlreadyDone => "already_done",
            Outcome::Retried => "retried",
            Outcome::Poison => "poison",
            Outcome::Released => "released",
            Outcome::Abandoned => "abandoned",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<OutcomeLabels, Counter>,
    result_hints: Family<OutcomeLabels, Counter>,
    in_flight: Gauge,
    concurrency: Gauge,
    draining_gauge: Gauge,
    ready_gauge: Gauge,
    processing_seconds: Histogram,
    empty_receives: Counter,
    receive_errors: Counter,
    result_conflicts: Counter,
    heartbeat_failures: Counter,
    draining: AtomicBool,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new(concurrency: usize) -> Self {
        let mut registry = Registry::with_prefix("qwp_worker");
        let jobs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs",
            "Messages handled, by outcome (done, failed, already_done, retried, poison, released, abandoned)",
            jobs.clone(),
        );
        let result_hints = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "result_hints",
            "Completion hints to the accepting API server, by outcome (sent, refused, failed, \
             no_address, bad_address)",
            result_hints.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Jobs being processed now",
            in_flight.clone(),
        );
        let concurrency_gauge = Gauge::default();
        concurrency_gauge.set(concurrency as i64);
        registry.register(
            "concurrency",
            "Jobs this process runs at once (WORKER_CONCURRENCY)",
            concurrency_gauge.clone(),
        );
        let draining_gauge = Gauge::default();
        registry.register(
            "draining",
            "1 after SIGTERM: no new jobs are taken",
            draining_gauge.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz answers 200: the queue answered a receive and no SIGTERM yet",
            ready_gauge.clone(),
        );
        // 5 ms .. ~11 min: from checksum-sized work to long subprocesses.
        let processing_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 18));
        registry.register(
            "processing_duration_seconds",
            "Time spent in the processor per job",
            processing_seconds.clone(),
        );
        let empty_receives = Counter::default();
        registry.register(
            "empty_receives",
            "Long polls that returned no message",
            empty_receives.clone(),
        );
        let receive_errors = Counter::default();
        registry.register(
            "receive_errors",
            "ReceiveMessage calls that failed",
            receive_errors.clone(),
        );
        let result_conflicts = Counter::default();
        registry.register(
            "result_conflicts",
            "Result writes refused because a result was already stored (another attempt finished first)",
            result_conflicts.clone(),
        );
        let heartbeat_failures = Counter::default();
        registry.register(
            "heartbeat_failures",
            "ChangeMessageVisibility calls of the heartbeat that failed or timed out",
            heartbeat_failures.clone(),
        );
        for outcome in [Outcome::Done, Outcome::Failed] {
            // Present from the start so dashboards see zeros, not absent series.
            let _ = jobs.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        Metrics {
            registry,
            jobs,
            result_hints,
            in_flight,
            concurrency: concurrency_gauge,
            draining_gauge,
            ready_gauge,
            processing_seconds,
            empty_receives,
            receive_errors,
            result_conflicts,
            heartbeat_failures,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }

    pub fn result_hint(&self, outcome: &'static str) {
        self.result_hints
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Completion hints so far with this outcome (for tests).
    pub fn result_hints(&self, outcome: &'static str) -> u64 {
        self.result_hints
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    pub fn job(&self, outcome: Outcome) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Messages handed back at shutdown.
    pub fn jobs_released(&self, count: usize) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: Outcome::Released.as_str(),
            })
            .inc_by(count as u64);
    }

    pub fn jobs_with(&self, outcome: Outcome) -> u64 {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub fn processing_time(&self, seconds: f64) {
        self.processing_seconds.observe(seconds);
    }

    pub fn empty_receive(&self) {
        self.empty_receives.inc();
    }

    pub fn empty_receives(&self) -> u64 {
        self.empty_receives.get()
    }

    pub fn receive_error(&self) {
        self.receive_errors.inc();
    }

    pub fn result_conflict(&self) {
        self.result_conflicts.inc();
    }

    pub fn result_conflicts(&self) -> u64 {
        self.result_conflicts.get()
    }

    pub fn heartbeat_failure(&self) {
        self.heartbeat_failures.inc();
    }

    pub fn heartbeat_failures(&self) -> u64 {
        self.heartbeat_failures.get()
    }

    pub fn job_started(&self) {
        self.in_flight.inc();
    }

    pub fn job_finished(&self) {
        self.in_flight.dec();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get().max(0) as usize
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.get().max(0) as usize
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.draining_gauge.set(1);
        self.ready_gauge.set(0);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready once the queue answered a receive, until draining starts.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        self.ready_gauge.set(i64::from(self.ready()));
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        qwp_runtime::metrics::encode(&self.registry)
    }
}

impl AsRef<Registry> for Metrics {
    fn as_ref(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_series_the_docs_promise() {
        let m = Metrics::new(8);
        m.job(Outcome::Done);
        m.job(Outcome::Retried);
        m.job_started();
        m.processing_time(0.2);
        m.empty_receive();
        let text = m.encode();
        for expected in [
            "qwp_worker_jobs_total{outcome=\"done\"} 1",
            "qwp_worker_jobs_total{outcome=\"failed\"} 0",
            "qwp_worker_jobs_total{outcome=\"retried\"} 1",
            "qwp_worker_jobs_in_flight 1",
            "qwp_worker_concurrency 8",
            "qwp_worker_draining 0",
            "qwp_worker_ready 0",
            "qwp_worker_processing_duration_seconds_count 1",
            "qwp_worker_empty_receives_total 1",
            "qwp_worker_receive_errors_total 0",
            "qwp_worker_result_conflicts_total 0",
            "qwp_worker_heartbeat_failures_total 0",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(m.in_flight(), 1);
        assert!(!m.ready());
        m.set_ready();
        assert!(m.ready());
        assert!(m.encode().contains("qwp_worker_ready 1\n"));
        m.set_draining();
        assert!(!m.ready() && m.draining());
        assert!(m.encode().contains("qwp_worker_ready 0\n"));
        m.set_ready();
        assert!(
            m.encode().contains("qwp_worker_ready 0\n"),
            "a receive after SIGTERM does not make a draining worker ready"
        );
    }
}
