//! Readiness that does not flap every replica when S3 blinks.
//!
//! A replica is ready once it has reached both buckets and the queue at least once since
//! it started (so a misconfigured rollout never becomes ready), and until it starts
//! draining. After that, a failing dependency is reported (`"degraded"`, the check marked
//! `unavailable`, `qwp_api_dependency_up` 0) but the replica stays ready: when S3 or SQS
//! is down it is down for every replica, and taking all of them out of the Service would
//! turn clean `503 Retry-After` answers into refused connections.
//!
//! Dependency checks are cached for `READINESS_CHECK_SECONDS`: probes from any number of
//! kubelets and load balancers cost at most three AWS calls per interval.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::{DependencyLabels, Metrics};
use crate::store::JobStore;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every dependency answered the last check.
    Ready,
    /// Reached before, something failing now: still ready.
    Degraded,
    /// Never reached every dependency yet: not ready.
    Starting,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub verdict: Verdict,
    pub checks: Map<String, Value>,
}

struct Snapshot {
    checked_at: Instant,
    checks: Vec<(&'static str, bool)>,
}

#[derive(Default)]
struct Cache {
    last: Option<Snapshot>,
    reached_once: bool,
}

pub struct Readiness {
    interval: Duration,
    cache: Mutex<Cache>,
}

impl Readiness {
    pub fn new(interval: Duration) -> Self {
        Readiness {
            interval,
            cache: Mutex::default(),
        }
    }

    /// The cached verdict, refreshed when older than the interval (one refresh at a
    /// time: concurrent probes wait for it and share its result).
    pub async fn report(&self, store: &JobStore, metrics: &Metrics) -> Report {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .last
            .as_ref()
            .is_none_or(|s| s.checked_at.elapsed() >= self.interval);
        // Until first contact, check on every probe: start-up readiness is not delayed.
        if stale || !cache.reached_once {
            let mut checks = Vec::new();
            for (name, result) in store.check_ready().await {
                if let Err(err) = &result {
                    tracing::warn!(check = name, error = %err, "dependency check failed");
                }
                metrics
                    .dependency_up
                    .get_or_create(&DependencyLabels { dependency: name })
                    .set(i64::from(result.is_ok()));
                checks.push((name, result.is_ok()));
            }
            cache.reached_once |= checks.iter().all(|(_, ok)| *ok);
            cache.last = Some(Snapshot {
                checked_at: Instant::now(),
                checks,
            });
        }
        let last = cache.last.as_ref().expect("just checked");
        let all_ok = last.checks.iter().all(|(_, ok)| *ok);
        let verdict = match (cache.reached_once, all_ok) {
            (_, true) => Verdict::Ready,
            (true, false) => Verdict::Degraded,
            (false, false) => Verdict::Starting,
        };
        let checks = last
            .checks
            .iter()
            .map(|(name, ok)| {
                let word = if *ok { "ok" } else { "unavailable" };
                (name.to_string(), Value::from(word))
            })
            .collect();
        Report { verdict, checks }
    }
}
