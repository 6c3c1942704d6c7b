//! Wake-up hints to the operator (`qwp_pool::contract::WAKE_PATH`): when a job is queued, the
//! operator reconciles the pools reading this queue at once instead of at their next poll, so
//! a pool at zero starts its first worker about a poll interval sooner.
//!
//! Debounced: at most one hint per [`WAKE_DEBOUNCE`] (the server feeds one queue). Sent from
//! its own task (the accept path never waits for it), with a short timeout and no retry. The
//! operator's address is a headless Service: every replica's IP resolves and each gets the
//! hint; a standby answers 503 and only the leader reconciles, so the hint reaches the
//! leader without the API server knowing which replica leads. The hint never scales by
//! itself: the operator's reconcile reads the queue as on any poll.
//!
//! `OPERATOR_WAKE_ADDRESS` may also list several `host:port`s, comma-separated, for a cluster
//! without DNS (the operator replicas' pod IPs): every address of every entry gets the hint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qwp_pool::contract::{WAKE_PATH, WAKE_QUEUE_PARAM, queue_name_of};

use crate::metrics::{Metrics, OutcomeLabels};

/// At most one hint per this interval.
pub const WAKE_DEBOUNCE: Duration = Duration::from_secs(1);
/// One hint to one operator replica.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct OperatorWake {
    /// `host:port`s of the operator's admin port (`OPERATOR_WAKE_ADDRESS`, comma-separated).
    addresses: Vec<String>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Milliseconds after `started` of the last hint sent, +1 (0: never).
    last_sent_ms: AtomicU64,
}

impl OperatorWake {
    /// `address`: one `host:port` or several, comma-separated (blank entries are ignored).
    pub fn new(address: &str, metrics: Arc<Metrics>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(WAKE_TIMEOUT)
            .connect_timeout(WAKE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        OperatorWake {
            addresses: address
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_string)
                .collect(),
            client,
            metrics,
            started: Instant::now(),
            last_sent_ms: AtomicU64::new(0),
        }
    }

    /// A job was queued on `queue` (URL or name): hints the operator unless one was sent
    /// within [`WAKE_DEBOUNCE`].
    pub fn job_queued(self: &Arc<Self>, queue: &str) {
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_sent_ms.load(Ordering::Relaxed);
        let debounce_ms = WAKE_DEBOUNCE.as_millis() as u64;
        if last != 0 && now_ms.saturating_sub(last) < debounce_ms {
            self.count("debounced");
            return;
        }
        if self
            .last_sent_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another acceptance sent it in the same instant.
            self.count("debounced");
            return;
        }
        let name = queue_name_of(queue).to_string();
        let wake = Arc::clone(self);
        tokio::spawn(async move { wake.send(&name).await });
    }

    async fn send(&self, queue: &str) {
        let lookups = self.addresses.iter().map(|address| async move {
            match tokio::net::lookup_host(address.as_str()).await {
                Ok(resolved) => resolved.collect::<Vec<_>>(),
                Err(err) => {
                    tracing::debug!(%address, error = %err, "operator address does not resolve");
                    Vec::new()
                }
            }
        });
        let mut replicas: Vec<_> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect();
        replicas.sort();
        replicas.dedup();
        if replicas.is_empty() {
            self.count("unresolved");
            return;
        }
        let sends = replicas.into_iter().map(|replica| {
            let request = self
                .client
                .post(format!("http://{replica}{WAKE_PATH}"))
                .query(&[(WAKE_QUEUE_PARAM, queue)]);
            async move { request.send().await.map(|r| r.status()) }
        });
        let answers = futures::future::join_all(sends).await;
        let taken = answers
            .iter()
            .any(|a| a.as_ref().is_ok_and(|status| status.is_success()));
        self.count(if taken { "sent" } else { "not_taken" });
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .operator_wakes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}
