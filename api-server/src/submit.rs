//! Job submission: `POST /` (seed 001, field `inputFile`) and `POST /jobs` (field `file`
//! or a raw body with `?filename=`).
//!
//! The order is what keeps memory and state bounded: everything the headers can decide
//! (query, key, content type, declared size) is answered before the body is read; the
//! upload then reserves its memory from the budget (or is answered 503); the body must
//! arrive within `BODY_TIMEOUT_SECONDS` (or 408); only a complete body is stored. Input
//! first, message second; if the message cannot be sent the input is deleted again, so
//! a job is either fully accepted or not at all.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qwp_jobs::{JobId, JobMessage};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::AppState;
use crate::auth::Caller;
use crate::budget::Reservation;
use crate::deadline::Deadline;
use crate::errors::ApiError;
use crate::idempotency::{self, Claim, Fingerprint, IdempotencyKey};
use crate::results::Lookup;
use crate::upload::{self, Upload, UploadForm, UploadPlan, read_upload};

const SEED_FORM: UploadForm = UploadForm {
    field: "inputFile",
    raw_body: false,
};
const JOBS_FORM: UploadForm = UploadForm {
    field: "file",
    raw_body: true,
};

#[derive(Debug, Default, Deserialize)]
struct SubmitQuery {
    wait: Option<String>,
    filename: Option<String>,
}

pub async fn submit_seed(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    submit(state, request, SEED_FORM, "/status").await
}

pub async fn submit_job(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    submit(state, request, JOBS_FORM, "/jobs").await
}

/// What the headers decided about a submission.
struct Submission {
    wait: Duration,
    filename: Option<String>,
    key: Option<IdempotencyKey>,
    plan: UploadPlan,
}

fn inspect(state: &AppState, parts: &Parts, form: UploadForm) -> Result<Submission, ApiError> {
    let query: SubmitQuery = parse_query(&parts.uri)?;
    let wait = wait_duration(
        query.wait.as_deref(),
        state.settings.max_wait(),
        state.settings.max_wait(),
    )?;
    let key = parts
        .headers
        .get(idempotency::HEADER)
        .map(|v| IdempotencyKey::parse(v.as_bytes()))
        .transpose()?;
    let plan = upload::plan(&parts.headers, form, state.settings.config.max_file_bytes())?;
    Ok(Submission {
        wait,
        filename: query.filename,
        key,
        plan,
    })
}

async fn submit(
    state: AppState,
    request: Request,
    form: UploadForm,
    poll_base: &'static str,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let deadline = parts.extensions.get::<Deadline>().copied();
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let submission = match inspect(&state, &parts, form) {
        Ok(submission) => submission,
        Err(err) => {
            upload::discard(&state, &parts.headers, body).await;
            return Err(err);
        }
    };
    let admitted = state
        .budget
        .admit(
            submission.plan.memory_bytes(),
            state.settings.upload_admission_wait,
        )
        .await;
    let Ok(reservation) = admitted else {
        state.metrics.refused("memory_budget");
        upload::discard(&state, &parts.headers, body).await;
        return Err(ApiError::ServerBusy);
    };
    let request = Request::from_parts(parts, body);
    let read = tokio::time::timeout(
        state.settings.body_timeout,
        read_upload(
            &state,
            request,
            submission.plan,
            reservation,
            submission.filename.as_deref(),
        ),
    )
    .await;
    let Ok(upload) = read else {
        state.metrics.refused("body_timeout");
        return Err(ApiError::BodyTimeout {
            seconds: state.settings.body_timeout.as_secs(),
        });
    };
    let upload = upload?;

    // Spawned (and tracked, so shutdown waits for it) so that a client hanging up, or the
    // request deadline, cannot cancel it between the S3 write and the SQS send, or before
    // an idempotency key is committed or released.
    let accepting = state.accepts.spawn({
        let state = state.clone();
        let key = submission.key;
        async move { accept(&state, &caller, key.as_ref(), upload).await }
    });
    let wait = deadline.map_or(submission.wait, |d| d.cap(submission.wait));
    match accepting.await {
        Ok(Ok(Accepted::New(job_id))) => respond(&state, job_id, wait, poll_base).await,
        Ok(Ok(Accepted::Replay(existing))) => {
            let mut response = respond(&state, existing, wait, poll_base).await?;
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Ok(Err(err)) => Err(err),
        Err(join) => {
            tracing::error!(error = %join, "job acceptance task failed");
            Err(ApiError::StorageUnavailable)
        }
    }
}

enum Accepted {
    New(JobId),
    Replay(JobId),
}

async fn accept(
    state: &AppState,
    caller: &Caller,
    key: Option<&IdempotencyKey>,
    upload: Upload,
) -> Result<Accepted, ApiError> {
    let ticket = match key {
        None => None,
        Some(key) => {
            let fingerprint = Fingerprint {
                filename: upload.filename.to_string(),
                content_sha256: upload.content_sha256.clone(),
            };
            match state.idempotency.claim(caller, key, &fingerprint).await? {
                Claim::Replay(existing) => {
                    tracing::info!(job_id = %existing, "idempotent replay of an accepted job");
                    return Ok(Accepted::Replay(existing));
                }
                Claim::Owned(ticket) => Some(ticket),
            }
        }
    };
    let job_id = ticket.as_ref().map_or_else(JobId::new, |t| t.job_id());
    let message = JobMessage::new(job_id, upload.filename);
    let stored = store_and_queue(state, &message, upload.bytes, upload.reservation).await;
    if let Some(ticket) = &ticket {
        match &stored {
            Ok(()) => state.idempotency.commit(ticket).await,
            Err(_) => state.idempotency.release(ticket).await,
        }
    }
    stored.map(|()| Accepted::New(job_id))
}

async fn store_and_queue(
    state: &AppState,
    message: &JobMessage,
    bytes: Bytes,
    reservation: Reservation,
) -> Result<(), ApiError> {
    let job_id = message.job_id;
    let size = bytes.len();
    let put = state.store.put_input(message, bytes).await;
    // The body is in S3 (or refused): its memory goes back to the budget now, not when
    // the client's result wait ends.
    drop(reservation);
    if let Err(err) = put {
        tracing::error!(%job_id, error = %err, "storing the input failed; job not accepted");
        return Err(ApiError::StorageUnavailable);
    }
    let reply_to = state.reply_to.get().map(String::as_str);
    if let Err(err) = state.store.send_message(message, reply_to).await {
        tracing::error!(%job_id, error = %err, "queueing the job failed; removing its input");
        if let Err(err) = state.store.delete_input(message).await {
            tracing::error!(%job_id, error = %err, "could not remove the input of an unqueued job");
        }
        return Err(ApiError::QueueUnavailable);
    }
    state.metrics.jobs_accepted.inc();
    if let Some(wake) = &state.operator_wake {
        wake.job_queued(state.store.queue_name());
    }
    tracing::info!(%job_id, filename = %message.filename, bytes = size, "job accepted");
    Ok(())
}

/// Waits for the job's result as long as asked; 200 with the result, or 202 pending
/// with the URL to poll.
pub(crate) async fn respond(
    state: &AppState,
    job_id: JobId,
    wait: Duration,
    poll_base: &str,
) -> Result<Response, ApiError> {
    match state.waiter.wait(job_id, wait, &state.shutdown).await {
        Lookup::Ready(result) => Ok((StatusCode::OK, Json(&*result)).into_response()),
        Lookup::Unreadable => Err(ApiError::ResultUnreadable(job_id)),
        Lookup::Pending => {
            if !wait.is_zero() {
                state.metrics.wait_timeouts.inc();
            }
            Ok(pending(job_id, poll_base))
        }
    }
}

pub(crate) fn pending(job_id: JobId, poll_base: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{poll_base}/{job_id}"))],
        Json(json!({ "job_id": job_id, "status": "pending" })),
    )
        .into_response()
}

pub(crate) fn parse_query<T: DeserializeOwned + Default>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::InvalidQuery(e.body_text()))
}

/// `?wait=SECONDS`: absent means `default`; more than `max` is cut to `max`.
pub(crate) fn wait_duration(
    raw: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match raw {
        None => Ok(default.min(max)),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .map(|secs| Duration::from_secs(secs).min(max))
            .map_err(|_| {
                ApiError::InvalidQuery(format!(
                    "wait must be a whole number of seconds from 0 to {} (got {:?})",
                    max.as_secs(),
                    raw.chars().take(20).collect::<String>()
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_bounded_and_validated() {
        let max = Duration::from_secs(30);
        assert_eq!(wait_duration(None, max, max).unwrap(), max);
        assert_eq!(wait_duration(Some("0"), max, max).unwrap(), Duration::ZERO);
        assert_eq!(
            wait_duration(Some("5"), max, max).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(wait_duration(Some("999"), max, max).unwrap(), max);
        assert!(wait_duration(Some("-1"), max, max).is_err());
        assert!(wait_duration(Some("soon"), max, max).is_err());
    }
}
