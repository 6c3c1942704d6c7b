//! Reading jobs back: `GET /status/{job_id}` (seed 001) and `GET /jobs/{job_id}`, plus
//! the liveness probe `GET /health` (readiness is on the admin port).

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use qwp_jobs::{JobId, JobIdError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::deadline::Deadline;
use crate::errors::ApiError;
use crate::store::FetchError;
use crate::submit::{parse_query, respond, wait_duration};

#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    wait: Option<String>,
}

pub async fn status_seed(
    State(state): State<AppState>,
    Extension(deadline): Extension<Deadline>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    job_status(state, deadline, path, &uri, "/status").await
}

pub async fn status_job(
    State(state): State<AppState>,
    Extension(deadline): Extension<Deadline>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    job_status(state, deadline, path, &uri, "/jobs").await
}

/// 200 with the result, 202 while the job is known but unfinished, 404 for a job that
/// was never submitted. `?wait=SECONDS` turns the 202 into a long poll.
async fn job_status(
    state: AppState,
    deadline: Deadline,
    path: Result<Path<String>, PathRejection>,
    uri: &Uri,
    poll_base: &str,
) -> Result<Response, ApiError> {
    let raw = path
        .map(|p| p.0)
        .map_err(|_| JobIdError("(not UTF-8)".into()))?;
    let job_id: JobId = raw.parse()?;
    let query: StatusQuery = parse_query(uri)?;
    let wait = wait_duration(
        query.wait.as_deref(),
        Duration::ZERO,
        state.settings.max_wait(),
    )?;

    if let Some(response) = result_response(&state, &job_id).await? {
        return Ok(response);
    }
    let submitted = state.store.input_exists(&job_id).await.map_err(|err| {
        tracing::error!(%job_id, error = %err, "checking for the job's input failed");
        ApiError::StorageUnavailable
    })?;
    if !submitted {
        // The result may have landed (and the input been cleaned up) between the reads.
        return match result_response(&state, &job_id).await? {
            Some(response) => Ok(response),
            None => Err(ApiError::JobNotFound(job_id)),
        };
    }
    respond(&state, job_id, deadline.cap(wait), poll_base).await
}

/// The finished result from memory, else one S3 read (kept in memory if there is one).
async fn result_response(state: &AppState, job_id: &JobId) -> Result<Option<Response>, ApiError> {
    if let Some(result) = state.finished.get(job_id) {
        return Ok(Some((StatusCode::OK, Json(&*result)).into_response()));
    }
    match state.store.fetch_result(job_id).await {
        Ok(Some(result)) => {
            let result = std::sync::Arc::new(result);
            state.finished.insert(*job_id, result.clone());
            Ok(Some((StatusCode::OK, Json(&*result)).into_response()))
        }
        Ok(None) => Ok(None),
        Err(FetchError::Unreadable { reason, .. }) => {
            tracing::error!(%job_id, %reason, "result document is malformed");
            Err(ApiError::ResultUnreadable(*job_id))
        }
        Err(FetchError::Unavailable(err)) => {
            tracing::error!(%job_id, error = %err, "reading the result failed");
            Err(ApiError::StorageUnavailable)
        }
    }
}

/// Liveness (seed 001): the process answers.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
