//! Prometheus metrics served on the admin port's `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub queue_reads: Family<ResultLabels, Counter>,
    pub sqs_requests: Counter,
    /// Wake-up hints from the API server turned into reconciles (`reconcile`), or for a
    /// queue no pool reads (`no_pool`); `standby` and `dropped` never reach a reconcile.
    pub wakes: Family<ResultLabels, Counter>,
    pub scale_events: Family<PoolLabels, Counter>,
    pub backlog: Family<PoolLabels, Gauge>,
    pub desired_replicas: Family<PoolLabels, Gauge>,
    /// 1 while this replica holds the leader Lease (and so reconciles), else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qwp_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, queue read included",
            reconcile_duration.clone(),
        );
        let queue_reads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "queue_reads",
            "Queue depth reads by result (ok, error, cached)",
            queue_reads.clone(),
        );
        let sqs_requests = Counter::default();
        registry.register(
            "sqs_requests",
            "SQS API calls made (GetQueueAttributes, GetQueueUrl)",
            sqs_requests.clone(),
        );
        let wakes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "wakes",
            "Wake-up hints from the API server, by result (reconcile, no_pool, standby, dropped)",
            wakes.clone(),
        );
        let scale_events = Family::<PoolLabels, Counter>::default();
        registry.register(
            "scale_events",
            "Replica changes per pool",
            scale_events.clone(),
        );
        let backlog = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_backlog",
            "Counted backlog of each pool's queue at the last read",
            backlog.clone(),
        );
        let desired_replicas = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_desired_replicas",
            "Replicas the operator set for each pool",
            desired_replicas.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, 0 on a standby",
            leader.clone(),
        );
        Metrics {
            registry,
            leader,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            queue_reads,
            sqs_requests,
            wakes,
            scale_events,
            backlog,
            desired_replicas,
        }
    }
}

impl Metrics {
    pub fn observe_duration(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    pub fn count_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: kind.to_string(),
            })
            .inc();
    }

    pub fn count_wake(&self, result: &str) {
        self.wakes
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn count_read(&self, result: &str) {
        self.queue_reads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn set_pool(&self, namespace: &str, pool: &str, backlog: Option<u64>, desired: u32) {
        let labels = PoolLabels {
            namespace: namespace.to_string(),
            pool: pool.to_string(),
        };
        if let Some(backlog) = backlog {
            self.backlog
                .get_or_create(&labels)
                .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        }
        self.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(desired));
    }

    /// Drops a deleted pool's series.
    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        let labels = PoolLabels {
            namespace: namespace.to_string(),
            pool: pool.to_string(),
        };
        self.backlog.remove(&labels);
        self.desired_replicas.remove(&labels);
        self.scale_events.remove(&labels);
    }

    /// The text exposition format.
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
    fn pool_series_appear_and_go_away() {
        let metrics = Metrics::default();
        metrics.set_pool("jobs", "thumbs", Some(42), 9);
        metrics.reconciles.inc();
        let text = metrics.encode();
        assert!(
            text.contains(r#"qwp_operator_pool_backlog{namespace="jobs",pool="thumbs"} 42"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"qwp_operator_pool_desired_replicas{namespace="jobs",pool="thumbs"} 9"#
            ),
            "{text}"
        );
        assert!(text.contains("qwp_operator_reconciles_total 1"), "{text}");
        metrics.forget_pool("jobs", "thumbs");
        assert!(!metrics.encode().contains("pool=\"thumbs\""));
    }
}
