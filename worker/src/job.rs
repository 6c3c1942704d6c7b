//! One message, start to finish: decode → result already there? → fetch input →
//! process (under a visibility heartbeat) → store result → delete the message.
//! The message is deleted only after its result is stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qwp_jobs::{JobId, JobMessage, JobResult};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, error, info, info_span, warn};

use crate::metrics::{Metrics, Outcome};
use crate::processor::{ProcessError, Processor};
use crate::queue::{BatchDeleter, Queue, Received};
use crate::settings::Settings;
use crate::storage::{InputError, Storage};

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
}

/// What an attempt achieved when it did not need a retry.
enum Stored {
    AlreadyDone,
    Result(JobResult),
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
    let attempt = with_heartbeat(&ctx.queue, &msg.receipt_handle, attempt(ctx, job)).await;
    let outcome = match attempt {
        Ok(Stored::AlreadyDone) => {
            info!("result already stored; acknowledging the redelivery without running");
            Outcome::AlreadyDone
        }
        Ok(Stored::Result(result)) => {
            let outcome = if result.is_done() {
                Outcome::Done
            } else {
                Outcome::Failed
            };
            match &result.outcome {
                qwp_jobs::result::Outcome::Done { .. } => {
                    info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "job done"
                    )
                }
                qwp_jobs::result::Outcome::Failed { error } => {
                    warn!(elapsed_ms = started.elapsed().as_millis() as u64, %error, "job failed; failed result stored")
                }
            }
            outcome
        }
        Err(reason) => {
            let delay = ctx.settings.retry_delay(msg.receive_count);
            warn!(%reason, retry_in_s = delay.as_secs(), "transient failure; returning the job to the queue");
            if let Err(err) = ctx.queue.hide_for(&msg.receipt_handle, delay).await {
                warn!(error = %err, "could not set the retry delay; the job reappears when its visibility expires");
            }
            return Outcome::Retried;
        }
    };
    // Only now, with the result stored, is the message acknowledged. If this delete
    // fails the job comes back, finds its result and is acknowledged then.
    if let Err(err) = ctx.acks.delete(&msg.receipt_handle).await {
        warn!(error = %err, "could not delete the message; its redelivery will be acknowledged");
    }
    outcome
}

/// Returns the retry reason when the job should go back to the queue.
async fn attempt(ctx: &JobContext, job: &JobMessage) -> Result<Stored, String> {
    // Both lookups at once: one round trip less per job. A stored result wins
    // over whatever the input fetch found (the input may be gone by now).
    let (exists, input) =
        tokio::join!(ctx.storage.result_exists(job), ctx.storage.fetch_input(job));
    if exists.map_err(|e| e.to_string())? {
        return Ok(Stored::AlreadyDone);
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
    ctx.storage
        .store_result(&result)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Stored::Result(result))
}

/// Runs `work` while renewing the message's visibility every half timeout, so a job
/// longer than the visibility timeout is not delivered to a second worker meanwhile.
async fn with_heartbeat<T>(
    queue: &Queue,
    receipt_handle: &str,
    work: impl Future<Output = T>,
) -> T {
    let visibility = queue.visibility();
    let period = (visibility / 2).max(Duration::from_millis(250));
    let heartbeat = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match queue.hide_for(receipt_handle, visibility).await {
                Ok(()) => {
                    tracing::debug!(visibility_s = visibility.as_secs(), "visibility extended")
                }
                Err(err) => {
                    warn!(error = %err, "could not extend visibility; the job may be delivered twice")
                }
            }
        }
    };
    tokio::select! {
        biased;
        out = work => out,
        _ = heartbeat => unreachable!("the heartbeat loops forever"),
    }
}

/// A body that is not `{job_id}_{filename}` can never succeed: park it in the DLQ
/// when one is configured, otherwise delete it, and keep going.
async fn reject_poison(ctx: &JobContext, msg: &Received, reason: &str) -> Outcome {
    let body = msg.body.as_deref().unwrap_or_default();
    error!(message_id = %msg.message_id, %reason, "malformed message (poison pill)");
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
