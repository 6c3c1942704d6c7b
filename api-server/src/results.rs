//! Waiting for results without flooding S3.
//!
//! Each job id being waited for has at most one poller task in this process. Every
//! request waiting for that job subscribes to the poller's `watch` channel, so N waiters
//! for one job cost one stream of S3 reads. The poller backs off (doubling from
//! `RESULT_POLL_INITIAL_MS` to `RESULT_POLL_MAX_MS`, with jitter so pollers started
//! together spread out) and every S3 read takes a permit from one semaphore, so however
//! many jobs are awaited, at most `RESULT_POLL_CONCURRENCY` reads are in flight.
//! A poller stops as soon as the result is there or nobody is listening any more.
//! There is no shared response queue (seed 001: it mismatches results under load);
//! every poller reads only its own job's key.
//!
//! Completion hints (`qwp_jobs::hint`) cut the wait short: a worker that stored the
//! result tells the accepting replica on its internal port, and [`ResultWaiter::hint`]
//! wakes that job's poller for an immediate read instead of its next backoff step. The
//! hint is never trusted: the poller reads S3 as on any step, so a forged hint costs one
//! read and a lost one leaves the backoff as it was. Results found are kept in
//! [`FinishedResults`], so a job finished once is never read from S3 again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qwp_jobs::{JobId, JobResult};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::finished::FinishedResults;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::store::{FetchError, JobStore};

/// What a waiter learns.
#[derive(Clone, Debug)]
pub enum Lookup {
    Pending,
    Ready(Arc<JobResult>),
    /// A result document exists but is not one (a worker bug); waiting longer won't help.
    Unreadable,
}

impl Lookup {
    fn is_final(&self) -> bool {
        !matches!(self, Lookup::Pending)
    }
}

pub struct ResultWaiter {
    store: JobStore,
    metrics: Arc<Metrics>,
    poll_permits: Semaphore,
    initial_delay: Duration,
    max_delay: Duration,
    pollers: Mutex<HashMap<JobId, Poller>>,
    finished: Arc<FinishedResults>,
}

/// One job's poller as the map holds it: its answer channel and its hint bell.
#[derive(Clone)]
struct Poller {
    sender: Arc<watch::Sender<Lookup>>,
    /// Rung by a completion hint: the poller reads S3 now instead of finishing its sleep.
    /// `Notify` keeps one permit, so a hint during a read triggers one more read, not many.
    hinted: Arc<Notify>,
}

impl ResultWaiter {
    pub fn new(
        store: JobStore,
        metrics: Arc<Metrics>,
        concurrency: usize,
        initial_delay: Duration,
        max_delay: Duration,
        finished: Arc<FinishedResults>,
    ) -> Self {
        ResultWaiter {
            store,
            metrics,
            poll_permits: Semaphore::new(concurrency),
            initial_delay,
            max_delay,
            pollers: Mutex::new(HashMap::new()),
            finished,
        }
    }

    /// A completion hint for `job_id`: wakes its poller if this replica has one (returns
    /// whether it did). Nothing else happens: the poller confirms by reading S3.
    pub fn hint(&self, job_id: &JobId) -> bool {
        let hinted = self
            .pollers
            .lock()
            .expect("pollers lock")
            .get(job_id)
            .map(|p| p.hinted.clone());
        let outcome = match &hinted {
            Some(bell) => {
                bell.notify_one();
                "woke"
            }
            None => "no_waiter",
        };
        self.metrics
            .result_hints
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        hinted.is_some()
    }

    /// Waits up to `timeout` for the job's result. Returns `Pending` on timeout or when
    /// `shutdown` fires (so a draining server answers 202 at once instead of holding
    /// the client until the grace period ends).
    pub async fn wait(
        self: &Arc<Self>,
        job_id: JobId,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Lookup {
        if let Some(result) = self.finished.get(&job_id) {
            return Lookup::Ready(result);
        }
        if timeout.is_zero() {
            return Lookup::Pending;
        }
        let mut receiver = self.subscribe(job_id);
        let outcome = tokio::select! {
            found = tokio::time::timeout(timeout, receiver.wait_for(Lookup::is_final)) => match found {
                Ok(Ok(lookup)) => lookup.clone(),
                // Timed out, or the poller vanished (it only stops when it has an
                // answer or no subscribers, so this is defensive).
                _ => Lookup::Pending,
            },
            _ = shutdown.cancelled() => Lookup::Pending,
        };
        outcome
    }

    /// Number of jobs being polled right now.
    pub fn active_pollers(&self) -> usize {
        self.pollers.lock().expect("pollers lock").len()
    }

    /// Requests currently waiting for `job_id` in this process.
    pub fn waiters(&self, job_id: &JobId) -> usize {
        self.pollers
            .lock()
            .expect("pollers lock")
            .get(job_id)
            .map_or(0, |poller| poller.sender.receiver_count())
    }

    fn subscribe(self: &Arc<Self>, job_id: JobId) -> watch::Receiver<Lookup> {
        let mut pollers = self.pollers.lock().expect("pollers lock");
        if let Some(poller) = pollers.get(&job_id) {
            return poller.sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Lookup::Pending);
        let poller = Poller {
            sender: Arc::new(sender),
            hinted: Arc::new(Notify::new()),
        };
        pollers.insert(job_id, poller.clone());
        self.metrics.active_pollers.inc();
        let waiter = Arc::clone(self);
        tokio::spawn(async move { waiter.poll(job_id, poller).await });
        receiver
    }

    async fn poll(self: Arc<Self>, job_id: JobId, poller: Poller) {
        let Poller { sender, hinted } = poller;
        let mut delay = self.initial_delay;
        loop {
            // A hint ends the sleep early; the backoff goes on as if it had run out, so a
            // stream of forged hints costs reads only as fast as they come, bounded by
            // the poll permits like every other read.
            tokio::select! {
                () = tokio::time::sleep(jittered(delay)) => {}
                () = hinted.notified() => {}
            }
            if self.retire_if_unwatched(&job_id, &sender) {
                return;
            }
            let fetched = {
                let _permit = self
                    .poll_permits
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                self.metrics.result_polls.inc();
                self.store.fetch_result(&job_id).await
            };
            let found = match fetched {
                Ok(Some(result)) => {
                    let result = Arc::new(result);
                    self.finished.insert(job_id, result.clone());
                    Some(Lookup::Ready(result))
                }
                Ok(None) => None,
                Err(FetchError::Unreadable { reason, .. }) => {
                    tracing::error!(%job_id, %reason, "result document is malformed");
                    Some(Lookup::Unreadable)
                }
                Err(FetchError::Unavailable(err)) => {
                    tracing::warn!(%job_id, error = %err, "result poll failed; backing off");
                    None
                }
            };
            if let Some(lookup) = found {
                // Remove first: a waiter arriving after this starts a fresh poller that
                // finds the result on its first read.
                self.remove(&job_id, &sender);
                sender.send_replace(lookup);
                return;
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }

    /// Stops the poller when no request waits any more. Checked under the map lock, which
    /// `subscribe` also holds, so a waiter cannot subscribe to a poller that is leaving.
    fn retire_if_unwatched(&self, job_id: &JobId, sender: &Arc<watch::Sender<Lookup>>) -> bool {
        let mut pollers = self.pollers.lock().expect("pollers lock");
        if sender.receiver_count() > 0 {
            return false;
        }
        if pollers
            .get(job_id)
            .is_some_and(|p| Arc::ptr_eq(&p.sender, sender))
        {
            pollers.remove(job_id);
            self.metrics.active_pollers.dec();
        }
        true
    }

    fn remove(&self, job_id: &JobId, sender: &Arc<watch::Sender<Lookup>>) {
        let mut pollers = self.pollers.lock().expect("pollers lock");
        if pollers
            .get(job_id)
            .is_some_and(|p| Arc::ptr_eq(&p.sender, sender))
        {
            pollers.remove(job_id);
            self.metrics.active_pollers.dec();
        }
    }
}

/// ±20 % so pollers started in the same instant do not poll in lockstep.
fn jittered(delay: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    delay.mul_f64(factor)
}
