//! The receive loop: at most `concurrency` jobs at once, and never a message in
//! memory without a free slot to run it; then the drain on shutdown.
//!
//! Slots are semaphore permits taken *before* `ReceiveMessage`, which asks for
//! `min(free slots, 10)` messages, so every received message starts at once and no
//! visibility clock runs on a message that waits for a slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use qwp_jobs::aws::AwsClients;
use qwp_jobs::config::{Config, ConfigError};
use qwp_pool::contract::RELEASE_MARGIN_SECONDS;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[cfg(feature = "face")]
use crate::face::FaceRecognizer;
use crate::hint::ResultHints;
use crate::job::{self, JobContext, JobObserver, NoObserver};
use crate::metrics::{Metrics, Outcome};
use crate::processor::Processor;
use crate::queue::{BatchDeleter, CachedRedrivePolicy, MAX_BATCH, Queue, QueueError, Received};
use crate::settings::Settings;
use crate::storage::Storage;

/// Longest pause between receive attempts while SQS is unreachable.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(30);
/// Most `ReceiveMessage` calls in flight at once per process.
const MAX_POLLERS: usize = 8;
/// Of the pod's release margin (the grace period the operator gives beyond the drain), the
/// time kept for stopping the aborted jobs and exiting.
const EXIT_SLACK: Duration = Duration::from_secs(2);
/// The most the hand-back of unfinished messages may take in all after the drain, so the
/// process exits within the release margin rather than being SIGKILLed mid-call; messages not
/// handed back in time return when their visibility expires.
pub const RELEASE_BUDGET: Duration =
    Duration::from_secs(RELEASE_MARGIN_SECONDS as u64).saturating_sub(EXIT_SLACK);
/// How often the queue's redrive policy (the attempt limit) is read again.
const REDRIVE_REFRESH: Duration = Duration::from_secs(300);

pub struct Worker {
    queue: Queue,
    storage: Storage,
    settings: Settings,
    metrics: Arc<Metrics>,
    observer: Arc<dyn JobObserver>,
    #[cfg(feature = "face")]
    face: Option<Arc<FaceRecognizer>>,
}

/// A message whose task has not settled it yet: what shutdown hands back.
struct Unsettled {
    receipt_handle: String,
    receive_count: u32,
}

impl Worker {
    pub fn new(
        config: &Config,
        settings: Settings,
        clients: &AwsClients,
        queue_url: String,
    ) -> Result<Self, ConfigError> {
        if config.sqs_visibility_timeout_seconds == 0 {
            // With 0 every received message would be visible again at once.
            return Err(ConfigError {
                name: "SQS_VISIBILITY_TIMEOUT_SECONDS".into(),
                value: "0".into(),
                reason: "the worker needs at least 1 second to hold a message".into(),
            });
        }
        let queue = Queue::new(
            clients.sqs.clone(),
            queue_url,
            Duration::from_secs(config.sqs_wait_time_seconds.into()),
            Duration::from_secs(config.sqs_visibility_timeout_seconds.into()),
        );
        let storage = Storage::new(
            clients.s3.clone(),
            config.s3_in_bucket.clone(),
            config.s3_out_bucket.clone(),
            config.max_file_bytes(),
        );
        Ok(Worker {
            queue,
            storage,
            metrics: Arc::new(Metrics::new(settings.concurrency)),
            settings,
            observer: Arc::new(NoObserver),
            #[cfg(feature = "face")]
            face: None,
        })
    }

    /// Replaces the (no-op) observer; tests and the benchmark count jobs with it.
    pub fn with_observer(mut self, observer: Arc<dyn JobObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// The started face processor, for `WORKER_PROCESSOR=face`.
    #[cfg(feature = "face")]
    pub fn with_face(mut self, face: Arc<FaceRecognizer>) -> Self {
        self.face = Some(face);
        self
    }

    /// Metrics and the `/status` numbers; share with [`crate::admin::router`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Consumes until `shutdown` is cancelled, then drains: in-flight jobs get
    /// `WORKER_DRAIN_SECONDS` to finish, the rest are handed back (visibility 0).
    pub async fn run(self, shutdown: CancellationToken) {
        let processor = Processor::new(self.settings.processor.clone());
        #[cfg(feature = "face")]
        let processor = processor.with_face(self.face);
        info!(
            concurrency = self.settings.concurrency,
            processor = processor.kind(),
            queue = self.queue.url(),
            visibility_s = self.queue.visibility().as_secs(),
            "worker started"
        );
        // The attempt limit: known before the first job when the queue answers in time.
        let redrive = CachedRedrivePolicy::default();
        redrive.refresh(&self.queue).await;
        let redrive_refresh = tokio::spawn({
            let (redrive, queue) = (redrive.clone(), self.queue.clone());
            async move {
                loop {
                    tokio::time::sleep(REDRIVE_REFRESH).await;
                    redrive.refresh(&queue).await;
                }
            }
        });
        let ctx = Arc::new(JobContext {
            acks: BatchDeleter::spawn(self.queue.clone()),
            redrive,
            queue: self.queue,
            storage: self.storage,
            processor,
            settings: self.settings,
            hints: ResultHints::new(self.metrics.clone()),
            metrics: self.metrics,
            observer: self.observer,
        });
        let mut tasks = Tasks::default();
        let polls = receive_loop(&ctx, &mut tasks, &shutdown).await;
        let deadlines = Deadlines::from_now(ctx.settings.drain);
        ctx.metrics.set_draining();
        info!(
            in_flight = ctx.metrics.in_flight(),
            drain_s = ctx.settings.drain.as_secs(),
            "shutdown: no new jobs; draining"
        );
        hand_back_late_receives(&ctx, polls, &deadlines).await;
        tasks.drain(&ctx, &deadlines).await;
        redrive_refresh.abort();
        info!("worker stopped");
    }
}

/// One `ReceiveMessage` in flight with the slots it asked for.
type Poll = (Vec<OwnedSemaphorePermit>, Result<Vec<Received>, QueueError>);
type Polls = FuturesUnordered<BoxFuture<'static, Poll>>;

/// The shutdown's clock, started when the signal arrives: jobs may run until `drain`, and
/// handing back what is left must end by `release`, within the pod's grace period
/// (`WORKER_DRAIN_SECONDS` + the release margin) even when SQS does not answer.
struct Deadlines {
    drain: Instant,
    release: Instant,
}

impl Deadlines {
    fn from_now(drain: Duration) -> Self {
        let drain = Instant::now() + drain;
        Deadlines {
            drain,
            release: drain + RELEASE_BUDGET,
        }
    }
}

/// Receives and starts jobs until `shutdown`; returns the polls still under way.
async fn receive_loop(
    ctx: &Arc<JobContext>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> Polls {
    let slots = Arc::new(Semaphore::new(ctx.settings.concurrency));
    // Several polls at once when there are many slots, each asking for at most 10:
    // refilling 100 freed slots then takes one round trip, not ten in a row.
    let pollers = ctx
        .settings
        .concurrency
        .div_ceil(MAX_BATCH)
        .min(MAX_POLLERS);
    let mut polls = Polls::new();
    let mut receive_failures = 0u32;
    let mut paused_until: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(finished) = tasks.set.join_next_with_id() => tasks.settle(ctx, finished).await,
            Some((slots_held, received)) = polls.next() => match received {
                Ok(messages) => {
                    receive_failures = 0;
                    ctx.metrics.set_ready();
                    start_jobs(ctx, tasks, messages, slots_held).await;
                }
                Err(err) => {
                    ctx.metrics.receive_error();
                    receive_failures += 1;
                    let pause = Duration::from_secs(1 << receive_failures.min(5)).min(MAX_RECEIVE_BACKOFF);
                    warn!(error = %err, retry_in_s = pause.as_secs(), "receive failed");
                    paused_until = Some(Instant::now() + pause);
                }
            },
            _ = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            first_slot = slots.clone().acquire_owned(), if polls.len() < pollers && paused_until.is_none() => {
                let mut slots_held = vec![first_slot.expect("the semaphore is never closed")];
                while slots_held.len() < MAX_BATCH {
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => slots_held.push(slot),
                        Err(_) => break,
                    }
                }
                let queue = ctx.queue.clone();
                polls.push(Box::pin(async move {
                    let received = queue.receive(slots_held.len()).await;
                    (slots_held, received)
                }));
            }
        }
    }
    polls
}

/// Polls already under way may finish (at most SQS_WAIT_TIME_SECONDS) so that what they
/// return is handed back at once instead of staying invisible; only the drain deadline cuts
/// them short.
async fn hand_back_late_receives(ctx: &JobContext, mut polls: Polls, deadlines: &Deadlines) {
    let mut handed_back = Vec::new();
    loop {
        tokio::select! {
            next = polls.next() => match next {
                Some((_, Ok(messages))) => handed_back.extend(messages.into_iter().map(|m| m.receipt_handle)),
                Some((_, Err(_))) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(deadlines.drain) => break,
        }
    }
    if !handed_back.is_empty() {
        let released = release_within(ctx, &handed_back, deadlines).await;
        info!(
            received = handed_back.len(),
            released, "shutdown during a receive: handed its messages back"
        );
        ctx.metrics.jobs_released(released);
    }
}

/// Hands messages back, giving up at the release deadline: the drain's end plus
/// [`RELEASE_BUDGET`] (or at once, if it has passed).
async fn release_within(
    ctx: &JobContext,
    receipt_handles: &[String],
    deadlines: &Deadlines,
) -> usize {
    match tokio::time::timeout_at(deadlines.release, ctx.queue.release(receipt_handles)).await {
        Ok(released) => released,
        Err(_) => {
            warn!(
                messages = receipt_handles.len(),
                budget_s = RELEASE_BUDGET.as_secs(),
                "handing messages back timed out; they return when their visibility expires"
            );
            0
        }
    }
}

/// Starts one job per message, each with one of the slots the poll asked for.
async fn start_jobs(
    ctx: &Arc<JobContext>,
    tasks: &mut Tasks,
    messages: Vec<Received>,
    slots_held: Vec<OwnedSemaphorePermit>,
) {
    if messages.is_empty() {
        ctx.metrics.empty_receive();
        return;
    }
    let mut slots_held = slots_held.into_iter();
    for msg in messages {
        match slots_held.next() {
            Some(slot) => tasks.spawn(ctx, msg, slot),
            None => {
                // SQS never returns more than asked; if it did, do not sit on it.
                ctx.queue
                    .release(std::slice::from_ref(&msg.receipt_handle))
                    .await;
            }
        }
    }
    // Slots left over (fewer messages than asked) return to the semaphore here.
}

/// The running job tasks, and the receipt of each so shutdown can hand it back.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Outcome>,
    unsettled: HashMap<Id, Unsettled>,
}

impl Tasks {
    fn spawn(&mut self, ctx: &Arc<JobContext>, msg: Received, slot: OwnedSemaphorePermit) {
        let unsettled = Unsettled {
            receipt_handle: msg.receipt_handle.clone(),
            receive_count: msg.receive_count,
        };
        let handle = self.set.spawn(job::handle(ctx.clone(), msg, slot));
        self.unsettled.insert(handle.id(), unsettled);
    }

    /// A finished task settled its message itself; a panicked one did not, so its
    /// message goes back with the usual backoff.
    async fn settle(&mut self, ctx: &JobContext, finished: Result<(Id, Outcome), JoinError>) {
        match finished {
            Ok((id, _)) => {
                self.unsettled.remove(&id);
            }
            Err(err) => {
                let Some(msg) = self.unsettled.remove(&err.id()) else {
                    return;
                };
                if err.is_panic() {
                    // A panic inside an attempt is caught there; this is the backstop for
                    // one elsewhere in the task. Its message goes back in a task of its own:
                    // the receive loop never waits on an SQS call here.
                    let delay = ctx.settings.retry_delay(msg.receive_count);
                    error!(error = %err, retry_in_s = delay.as_secs(), "job task panicked; returning its message");
                    let queue = ctx.queue.clone();
                    tokio::spawn(async move {
                        let _ = queue.hide_for(&msg.receipt_handle, delay).await;
                    });
                    ctx.metrics.job(Outcome::Retried);
                } else {
                    // Cancelled: only the drain aborts tasks, and it collects these itself.
                    self.unsettled.insert(err.id(), msg);
                }
            }
        }
    }

    /// Waits for running jobs until the drain deadline, aborts the rest and hands
    /// their messages back so another pod takes them at once.
    async fn drain(mut self, ctx: &JobContext, deadlines: &Deadlines) {
        let mut aborted = false;
        loop {
            tokio::select! {
                biased;
                finished = self.set.join_next_with_id() => match finished {
                    None => break,
                    Some(finished) => self.settle(ctx, finished).await,
                },
                _ = tokio::time::sleep_until(deadlines.drain), if !aborted => {
                    warn!(unfinished = self.set.len(), "drain time is up; stopping unfinished jobs");
                    self.set.abort_all();
                    aborted = true;
                }
            }
        }
        if self.unsettled.is_empty() {
            info!("drained: every job finished");
            return;
        }
        let handles: Vec<String> = self
            .unsettled
            .into_values()
            .map(|m| m.receipt_handle)
            .collect();
        let released = release_within(ctx, &handles, deadlines).await;
        ctx.metrics.jobs_released(released);
        info!(
            unfinished = handles.len(),
            released, "handed unfinished jobs back to the queue"
        );
    }
}
