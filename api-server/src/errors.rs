//! Every error a client can see: one enum, one JSON shape `{"error": "..."}`, the right
//! status, `Retry-After` on 503. Messages tell a person what to do; internals (SDK errors,
//! bucket names) go to the log, never into a response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use qwp_jobs::{JobId, JobIdError};
use serde_json::json;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "missing multipart field `{field}`: send the file in a form field named `{field}` \
         (e.g. curl -F {field}=@photo.jpg)"
    )]
    MissingField { field: &'static str },

    #[error("the upload is larger than the limit of {limit_mb} MB (MAX_FILE_MB)")]
    PayloadTooLarge { limit_mb: u64 },

    #[error("unsupported content type {got:?}: {accepted}")]
    UnsupportedMediaType { got: String, accepted: &'static str },

    #[error("malformed multipart/form-data body: {0}")]
    MalformedMultipart(String),

    #[error("the request body could not be read: the upload was interrupted or badly framed")]
    BodyUnreadable,

    #[error(
        "the upload did not arrive within {seconds} s (BODY_TIMEOUT_SECONDS); nothing was \
         accepted"
    )]
    BodyTimeout { seconds: u64 },

    #[error("missing or invalid bearer token: send Authorization: Bearer <token>")]
    Unauthorized,

    #[error("{0}")]
    InvalidJobId(#[from] JobIdError),

    #[error("invalid query parameter: {0}")]
    InvalidQuery(String),

    #[error("invalid Idempotency-Key header: {0}")]
    InvalidIdempotencyKey(&'static str),

    #[error("job {0} was never submitted (or its input has expired)")]
    JobNotFound(JobId),

    // Never names the other job: a key can be guessed, a job id must not be learnt.
    #[error(
        "Idempotency-Key was already used for a different upload; send new content with \
         a new key"
    )]
    IdempotencyConflict,

    #[error(
        "a request with this Idempotency-Key is still being accepted; retry after the \
         Retry-After delay to get its answer"
    )]
    IdempotencyInProgress,

    #[error(
        "the server is receiving as many uploads as its memory allows; nothing was \
         accepted, retry later"
    )]
    ServerBusy,

    #[error(
        "the request did not finish within REQUEST_TIMEOUT_SECONDS; if it was an upload \
         with an Idempotency-Key, retry with the same key to learn whether it was accepted"
    )]
    RequestTimeout,

    #[error("job storage is unavailable; nothing was accepted, retry later")]
    StorageUnavailable,

    #[error("the job queue is unavailable; nothing was accepted, retry later")]
    QueueUnavailable,

    #[error("the stored result of job {0} cannot be read; the worker wrote a malformed document")]
    ResultUnreadable(JobId),

    #[error("no such endpoint: {0}")]
    NoRoute(String),

    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingField { .. }
            | MalformedMultipart(_)
            | BodyUnreadable
            | InvalidJobId(_)
            | InvalidQuery(_)
            | InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JobNotFound(_) | NoRoute(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IdempotencyConflict | IdempotencyInProgress => StatusCode::CONFLICT,
            StorageUnavailable | QueueUnavailable | ServerBusy | RequestTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ResultUnreadable(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE
            || matches!(self, ApiError::IdempotencyInProgress)
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if matches!(self, ApiError::BodyTimeout { .. }) {
            // The rest of a slow body is not worth waiting for: close the connection.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Fallback for unknown paths, so even a typo gets a JSON answer.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_are_json_with_status_and_retry_after_on_503() {
        let (status, retry, body) = body_of(ApiError::QueueUnavailable).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.unwrap(), "2");
        assert!(body["error"].as_str().unwrap().contains("retry later"));

        let (status, retry, body) = body_of(ApiError::MissingField { field: "inputFile" }).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(retry.is_none());
        assert!(body["error"].as_str().unwrap().contains("`inputFile`"));

        let (status, _, _) = body_of(ApiError::PayloadTooLarge { limit_mb: 8 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        let (status, retry, body) = body_of(ApiError::IdempotencyInProgress).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(retry.unwrap(), "2");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("still being accepted")
        );

        let (status, retry, _) = body_of(ApiError::IdempotencyConflict).await;
        assert_eq!((status, retry), (StatusCode::CONFLICT, None));

        let (status, retry, _) = body_of(ApiError::ServerBusy).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.unwrap(), "2");

        let response = ApiError::BodyTimeout { seconds: 30 }.into_response();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
