//! Job submission: `POST /` (seed 001, field `inputFile`) and `POST /jobs` (field `file`
//! or a raw body with `?filename=`). Input first, message second; if the message cannot
//! be sent the input is deleted again, so a job is either fully accepted or not at all.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qwp_jobs::{JobId, JobMessage};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::AppState;
use crate::errors::ApiError;
use crate::idempotency::{self, Claim, IdempotencyKey, Record};
use crate::results::Lookup;
use crate::upload::{UploadForm, read_upload};

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

async fn submit(
    state: AppState,
    request: Request,
    form: UploadForm,
    poll_base: &'static str,
) -> Result<Response, ApiError> {
    let query: SubmitQuery = parse_query(request.uri())?;
    let wait = wait_duration(
        query.wait.as_deref(),
        state.settings.max_wait(),
        state.settings.max_wait(),
    )?;
    let key = request
        .headers()
        .get(idempotency::HEADER)
        .map(|v| IdempotencyKey::parse(v.as_bytes()))
        .transpose()?;
    let max_bytes = state.settings.config.max_file_bytes();
    let upload = read_upload(request, form, query.filename.as_deref(), max_bytes).await?;

    let job_id = JobId::new();
    let record = Record {
        job_id,
        filename: upload.filename.to_string(),
        content_sha256: upload.content_sha256.clone(),
    };
    let message = JobMessage::new(job_id, upload.filename);
    // Spawned so a client hanging up mid-way cannot cancel it between the S3 write and
    // the SQS send (or before a failed job's idempotency key is released).
    let accepting = tokio::spawn({
        let state = state.clone();
        async move { accept(&state, key.as_ref(), &record, &message, upload.bytes).await }
    });
    let job_id = match accepting.await {
        Ok(Ok(Accepted::New)) => job_id,
        Ok(Ok(Accepted::Replay(existing))) => {
            let mut response = respond(&state, existing, wait, poll_base).await?;
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Ok(Err(err)) => return Err(err),
        Err(join) => {
            tracing::error!(error = %join, "job acceptance task failed");
            return Err(ApiError::StorageUnavailable);
        }
    };
    respond(&state, job_id, wait, poll_base).await
}

enum Accepted {
    New,
    Replay(JobId),
}

async fn accept(
    state: &AppState,
    key: Option<&IdempotencyKey>,
    record: &Record,
    message: &JobMessage,
    bytes: Bytes,
) -> Result<Accepted, ApiError> {
    if let Some(key) = key
        && let Claim::Replay(existing) = state.idempotency.claim(key, record).await?
    {
        tracing::info!(job_id = %existing, "idempotent replay of an accepted job");
        return Ok(Accepted::Replay(existing));
    }
    let stored = store_and_queue(state, message, bytes).await;
    if stored.is_err()
        && let Some(key) = key
    {
        state.idempotency.release(key).await;
    }
    stored.map(|()| Accepted::New)
}

async fn store_and_queue(
    state: &AppState,
    message: &JobMessage,
    bytes: Bytes,
) -> Result<(), ApiError> {
    let job_id = message.job_id;
    let size = bytes.len();
    if let Err(err) = state.store.put_input(message, bytes).await {
        tracing::error!(%job_id, error = %err, "storing the input failed; job not accepted");
        return Err(ApiError::StorageUnavailable);
    }
    if let Err(err) = state.store.send_message(message).await {
        tracing::error!(%job_id, error = %err, "queueing the job failed; removing its input");
        if let Err(err) = state.store.delete_input(message).await {
            tracing::error!(%job_id, error = %err, "could not remove the input of an unqueued job");
        }
        return Err(ApiError::QueueUnavailable);
    }
    state.metrics.jobs_accepted.inc();
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
