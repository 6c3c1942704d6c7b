//! One message, start to finish: decode → result already there (redeliveries)? → fetch input →
//! process (under a visibility heartbeat) → store result → delete the message.
//! The message is deleted only after its result is stored.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use qwp_jobs::{JobId, JobMessage, JobResult};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::hint::ResultHints;
use crate::metrics::{Metrics, Outcome};
use crate::processor::{ProcessError, Processor};
use crate::queue::{BatchDeleter, CachedRedrivePolicy, Queue, Received, RedrivePolicy};
use crate::settings::Settings;
use crate::storage::{InputError, ResultWrite, Storage};

/// Watches the worker from outside: tests count processor runs per job and the
/// concurrency they observe; production uses [`NoObserver`].
pub trait JobObserver: Send + Sync + 'static {
    /// A received message starts being handled (it holds one concurrency slot).
    fn job_started(&self) {}
    /// Its handling ended, whatever the outcome (also when aborted at shutdown).
    fn job_finished(&self) {}
    /// The processor is about to run for this job.
    fn processor_started(&self, _job_id: &JobId) {}
}

pub struct NoObserver;
impl JobObserver for NoObserver {}

/// Everything a job task needs, shared by all of them.
pub(crate) struct JobContext {
    pub queue: Queue,
    pub acks: BatchDeleter,
    pub storage: Storage,
    pub processor: Processor,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn JobObserver>,
    pub redrive: CachedRedrivePolicy,
    pub hints: ResultHints,
}

impl JobContext {
    /// The queue's `maxReceiveCount` when it has a redrive policy, else `WORKER_MAX_ATTEMPTS`
    /// (also while the policy could not be read yet).
    fn attempt_limit(&self) -> AttemptLimit {
        match self.redrive.get() {
            Some(RedrivePolicy::DeadLetterAfter(max_attempts)) => AttemptLimit {
                max_attempts,
                dead_letter: true,
            },
            Some(RedrivePolicy::None) | None => AttemptLimit {
                max_attempts: self.settings.max_attempts,
                dead_letter: false,
            },
        }
    }
}

/// What an attempt settled.
enum Settled {
    /// The result was there before this attempt looked.
    AlreadyDone,
    /// This attempt stored the result.
    Stored(JobResult),
    /// Another attempt stored a result while this one ran; that one is kept.
    AlreadyStored,
}

/// Why an attempt did not settle the job.
enum AttemptError {
    /// Worth another attempt (or, on the last one, the reason in the `failed` result).
    Transient(String),
    /// The heartbeat lost the message: it may be with another worker now, so this attempt
    /// stops and leaves the message alone.
    Lost,
}

/// How many receives a job gets, and what happens after the last.
#[derive(Clone, Copy, Debug)]
struct AttemptLimit {
    max_attempts: u32,
    /// The queue's redrive policy moves the message to its DLQ after `max_attempts`.
    dead_letter: bool,
}

/// Counts the job in flight for exactly as long as this lives, even if the task is aborted.
struct InFlight<'a>(&'a JobContext);

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a JobContext) -> Self {
        ctx.metrics.job_started();
        ctx.observer.job_started();
        InFlight(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.job_finished();
        self.0.observer.job_finished();
    }
}

/// Handles one message while holding one concurrency slot (`_slot`).
pub(crate) async fn handle(
    ctx: Arc<JobContext>,
    msg: Received,
    _slot: OwnedSemaphorePermit,
) -> Outcome {
    let _in_flight = InFlight::enter(&ctx);
    let job = match JobMessage::decode(msg.body.as_deref().unwrap_or_default()) {
        Ok(job) => job,
        Err(reason) => return reject_poison(&ctx, &msg, &reason.to_string()).await,
    };
    let span = info_span!("job", job_id = %job.job_id, receive_count = msg.receive_count);
    let outcome = settle(&ctx, &msg, &job).instrument(span).await;
    ctx.metrics.job(outcome);
    outcome
}

async fn settle(ctx: &JobContext, msg: &Received, job: &JobMessage) -> Outcome {
    let started = Instant::now();
    info!("job started");
    let lost = CancellationToken::new();
    let attempt =
        with_heartbeat(ctx, msg, &lost, attempt(ctx, job, msg.receive_count, &lost)).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let outcome = match attempt {
        Ok(Settled::AlreadyDone) => {
            info!("result already stored; acknowledging the redelivery without running");
            Outcome::AlreadyDone
        }
        Ok(Settled::AlreadyStored) => {
            ctx.metrics.result_conflict();
            info!("another attempt stored a result first; keeping it and acknowledging");
            Outcome::AlreadyDone
        }
        Ok(Settled::Stored(result)) => {
            ctx.hints.result_stored(msg, job.job_id);
            match &result.outcome {
                qwp_jobs::result::Outcome::Done { .. } => {
                    info!(elapsed_ms, "job done");
                    Outcome::Done
                }
                qwp_jobs::result::Outcome::Failed { error } => {
                    warn!(elapsed_ms, %error, "job failed; failed result stored");
                    Outcome::Failed
                }
            }
        }
        Err(AttemptError::Lost) => {
            warn!(
                elapsed_ms,
                "lost the message's visibility; stopped this attempt and left the message to the queue"
            );
            return Outcome::Abandoned;
        }
        Err(AttemptError::Transient(reason)) => {
            let limit = ctx.attempt_limit();
            if msg.receive_count < limit.max_attempts {
                let delay = ctx.settings.retry_delay(msg.receive_count);
                warn!(%reason, retry_in_s = delay.as_secs(), max_attempts = limit.max_attempts,
                    "transient failure; returning the job to the queue");
                if let Err(err) = ctx.queue.hide_for(&msg.receipt_handle, delay).await {
                    warn!(error = %err, "could not set the retry delay; the job reappears when its visibility expires");
                }
                return Outcome::Retried;
            }
            match give_up(ctx, msg, job, &reason, limit).await {
                GaveUp::Acknowledge(outcome) => outcome,
                GaveUp::LeaveToTheQueue(outcome) => return outcome,
            }
        }
    };
    // Only now, with the result stored, is the message acknowledged. If this delete
    // fails the job comes back, finds its result and is acknowledged then.
    if let Err(err) = ctx.acks.delete(&msg.receipt_handle).await {
        warn!(error = %err, "could not delete the message; its redelivery will be acknowledged");
    }
    outcome
}

/// What the last attempt of a failing job did with its message.
enum GaveUp {
    Acknowledge(Outcome),
    /// Not deleted: the redrive policy takes it to the DLQ, or (the failed result could not
    /// be stored) it comes back for another try at storing it.
    LeaveToTheQueue(Outcome),
}

/// No attempt left: the client gets a `failed` result with the reason and the attempt count
/// (conditional, like every result), and only then does the message go to the DLQ.
async fn give_up(
    ctx: &JobContext,
    msg: &Received,
    job: &JobMessage,
    reason: &str,
    limit: AttemptLimit,
) -> GaveUp {
    let attempts = msg.receive_count;
    let failed = JobResult::failed(
        job.job_id,
        format!("gave up after {attempts} attempts: {reason}"),
    );
    let write = ctx.storage.store_result(&failed).await;
    if let Ok(ResultWrite::Stored) = write {
        ctx.hints.result_stored(msg, job.job_id);
    }
    match write {
        Ok(ResultWrite::Stored) if limit.dead_letter => {
            warn!(%reason, attempts, "no attempt left; failed result stored, the message goes to the DLQ");
            // Visible again at once: its next receive exceeds maxReceiveCount, so SQS moves
            // it to the DLQ (kept there for inspection) instead of delivering it.
            if let Err(err) = ctx
                .queue
                .hide_for(&msg.receipt_handle, Duration::ZERO)
                .await
            {
                warn!(error = %err, "could not hand the message back; it reaches the DLQ when its visibility expires");
            }
            GaveUp::LeaveToTheQueue(Outcome::Failed)
        }
        Ok(ResultWrite::Stored) => {
            warn!(%reason, attempts, "no attempt left; failed result stored");
            GaveUp::Acknowledge(Outcome::Failed)
        }
        Ok(ResultWrite::AlreadyStored) => {
            ctx.metrics.result_conflict();
            info!("no attempt left, but another attempt stored a result first; keeping it");
            GaveUp::Acknowledge(Outcome::AlreadyDone)
        }
        Err(err) => {
            let delay = ctx.settings.retry_delay(attempts);
            warn!(%reason, error = %err, retry_in_s = delay.as_secs(),
                "no attempt left and the failed result could not be stored; trying again later");
            if let Err(err) = ctx.queue.hide_for(&msg.receipt_handle, delay).await {
                warn!(error = %err, "could not set the retry delay");
            }
            GaveUp::LeaveToTheQueue(Outcome::Retried)
        }
    }
}

/// What the work before the result write produced.
enum Produced {
    AlreadyDone,
    Result(JobResult),
}

/// One attempt: produce the result (stopped if the heartbeat loses the message; a panic on
/// the way is a transient failure of this attempt), then store it conditionally. The store
/// is not interrupted: a result, once computed, still goes through the conditional write.
async fn attempt(
    ctx: &JobContext,
    job: &JobMessage,
    receive_count: u32,
    lost: &CancellationToken,
) -> Result<Settled, AttemptError> {
    let produced = tokio::select! {
        biased;
        _ = lost.cancelled() => return Err(AttemptError::Lost),
        produced = AssertUnwindSafe(produce(ctx, job, receive_count)).catch_unwind() => produced,
    };
    let result = match produced {
        Ok(Ok(Produced::AlreadyDone)) => return Ok(Settled::AlreadyDone),
        Ok(Ok(Produced::Result(result))) => result,
        Ok(Err(reason)) => return Err(AttemptError::Transient(reason)),
        Err(panic) => {
            let reason = format!("the processor panicked: {}", panic_message(&*panic));
            error!(%reason, "job attempt panicked");
            return Err(AttemptError::Transient(reason));
        }
    };
    match ctx.storage.store_result(&result).await {
        Ok(ResultWrite::Stored) => Ok(Settled::Stored(result)),
        Ok(ResultWrite::AlreadyStored) => Ok(Settled::AlreadyStored),
        Err(err) => Err(AttemptError::Transient(err.to_string())),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Looks for a stored result (on a redelivery), fetches the input and runs the processor;
/// `Err` is the reason to retry.
async fn produce(
    ctx: &JobContext,
    job: &JobMessage,
    receive_count: u32,
) -> Result<Produced, String> {
    // Only a redelivery can find its result stored (an earlier attempt finished but its
    // delete was lost): a first delivery skips the lookup, one S3 request less per job. A
    // duplicate first delivery then runs again, and its conditional write keeps the result
    // stored first. Both lookups at once: one round trip less; a stored result wins over
    // whatever the input fetch found (the input may be gone by now).
    let redelivered = receive_count > 1;
    let (exists, input) = tokio::join!(
        async {
            if redelivered {
                ctx.storage.result_exists(job).await
            } else {
                Ok(false)
            }
        },
        ctx.storage.fetch_input(job)
    );
    if exists.map_err(|e| e.to_string())? {
        return Ok(Produced::AlreadyDone);
    }
    let result = match input {
        Ok(input) => {
            ctx.observer.processor_started(&job.job_id);
            let started = Instant::now();
            let processed = ctx.processor.process(job, &input).await;
            ctx.metrics.processing_time(started.elapsed().as_secs_f64());
            match processed {
                Ok(value) => JobResult::done(job.job_id, value),
                Err(ProcessError::Failed(error)) => JobResult::failed(job.job_id, error),
                Err(ProcessError::Transient(reason)) => return Err(reason),
            }
        }
        Err(err @ (InputError::Missing { .. } | InputError::TooLarge { .. })) => {
            JobResult::failed(job.job_id, err.to_string())
        }
        Err(InputError::Storage(err)) => return Err(err.to_string()),
    };
    Ok(Produced::Result(result))
}

/// Runs `work` while renewing the message's visibility every half timeout, so a job
/// longer than the visibility timeout is not delivered to a second worker meanwhile.
/// Cancels `lost` when the message can no longer be held (see [`keep_hidden`]).
async fn with_heartbeat<T>(
    ctx: &JobContext,
    msg: &Received,
    lost: &CancellationToken,
    work: impl Future<Output = T>,
) -> T {
    tokio::select! {
        biased;
        out = work => out,
        never = keep_hidden(ctx, msg, lost) => match never {},
    }
}

/// Longest a single visibility call may take; far below the half timeout between beats.
const MAX_HEARTBEAT_CALL: Duration = Duration::from_secs(10);

/// The heartbeat. Each `ChangeMessageVisibility` has its own timeout (a quarter of the
/// visibility, at most [`MAX_HEARTBEAT_CALL`], and never past the visibility already secured),
/// so a hung call cannot delay the next; a failed one is retried shortly rather than a half
/// timeout later. The attempt is given up (`lost` cancelled) when SQS says the receipt handle
/// no longer holds the message, or when the visibility secured by the last successful call
/// runs out before another one succeeds: from then on another worker may run the same job.
async fn keep_hidden(ctx: &JobContext, msg: &Received, lost: &CancellationToken) -> Infallible {
    let queue = &ctx.queue;
    let visibility = queue.visibility();
    let period = (visibility / 2).max(Duration::from_millis(250));
    let call_timeout = (visibility / 4).clamp(Duration::from_millis(100), MAX_HEARTBEAT_CALL);
    let retry_pause = (period / 4).min(Duration::from_secs(1));
    let mut hidden_until = msg.received_at + visibility;
    let mut next = tokio::time::Instant::now() + period;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = tokio::time::Instant::now();
        let remaining = hidden_until.saturating_duration_since(sent);
        let extended = tokio::time::timeout(
            call_timeout.min(remaining),
            queue.hide_for(&msg.receipt_handle, visibility),
        )
        .await;
        let failure = match extended {
            Ok(Ok(())) => {
                tracing::debug!(visibility_s = visibility.as_secs(), "visibility extended");
                hidden_until = sent + visibility;
                failures = 0;
                next = sent + period;
                continue;
            }
            Ok(Err(err)) if err.receipt_lost() => {
                ctx.metrics.heartbeat_failure();
                warn!(error = %err, "the receipt handle no longer holds the message; stopping the job");
                break;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!(
                "ChangeMessageVisibility did not answer within {} ms",
                call_timeout.min(remaining).as_millis()
            ),
        };
        ctx.metrics.heartbeat_failure();
        failures += 1;
        let now = tokio::time::Instant::now();
        if now + retry_pause >= hidden_until {
            warn!(error = %failure, failures, "could not extend visibility before it lapsed; stopping the job");
            break;
        }
        warn!(error = %failure, failures, "could not extend visibility; trying again");
        next = now + retry_pause;
    }
    lost.cancel();
    std::future::pending().await
}

/// A body that is not `{job_id}_{filename}` can never succeed: park it in the DLQ
/// when one is configured, otherwise delete it, and keep going.
async fn reject_poison(ctx: &JobContext, msg: &Received, reason: &str) -> Outcome {
    let body = msg.body.as_deref().unwrap_or_default();
    error!(message_id = %msg.message_id, %reason, "malformed message (poison pill)");
    if let Some(job_id) = JobMessage::job_id_in(body) {
        // The body still names a job: its client reads why it failed instead of waiting.
        let failed = JobResult::failed(job_id, format!("the job message is malformed: {reason}"));
        match ctx.storage.store_result(&failed).await {
            Ok(ResultWrite::Stored) => {
                info!(message_id = %msg.message_id, %job_id, "failed result stored for the malformed message's job")
            }
            Ok(ResultWrite::AlreadyStored) => {
                ctx.metrics.result_conflict();
                info!(message_id = %msg.message_id, %job_id, "the malformed message's job already has a result; keeping it")
            }
            Err(err) => {
                warn!(message_id = %msg.message_id, %job_id, error = %err, "could not store a failed result for the malformed message's job")
            }
        }
    }
    if let (Some(dlq), false) = (&ctx.settings.dlq_url, body.is_empty()) {
        if let Err(err) = ctx.queue.send_to_dlq(dlq, body, reason).await {
            // Not deleted: it returns after the backoff and the DLQ gets another try.
            warn!(message_id = %msg.message_id, error = %err, "could not move the poison pill to the DLQ");
            let _ = ctx
                .queue
                .hide_for(
                    &msg.receipt_handle,
                    ctx.settings.retry_delay(msg.receive_count),
                )
                .await;
            ctx.metrics.job(Outcome::Retried);
            return Outcome::Retried;
        }
        info!(message_id = %msg.message_id, "poison pill moved to the DLQ");
    }
    if let Err(err) = ctx.queue.delete(&msg.receipt_handle).await {
        warn!(message_id = %msg.message_id, error = %err, "could not delete the poison pill");
    }
    ctx.metrics.job(Outcome::Poison);
    Outcome::Poison
}
