//! Sorting S3/SQS SDK errors into what the worker does next.
//!
//! Only a missing object is a verdict on the job. Everything else (5xx, throttling,
//! timeouts, connection failures, and also unexpected 4xx such as AccessDenied) is
//! retried via the queue: a misconfigured bucket policy must not turn users' jobs
//! into permanent failures; if it persists, the redrive policy parks them in the DLQ.

use std::error::Error;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The object (or queue entry) does not exist.
    NotFound,
    /// 5xx, throttling, timeouts, connection failures: try again later.
    Transient,
    /// Anything else (403, 400, a request the SDK could not build): also retried,
    /// but logged as an error because it points at configuration, not load.
    Unexpected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    Response,
    Transport,
    Construction,
}

const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestLimitExceeded",
];

const NOT_FOUND_CODES: &[&str] = &["NoSuchKey", "NotFound"];

pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata,
{
    let kind = match err {
        SdkError::ServiceError(_) => Kind::Service,
        SdkError::ResponseError(_) => Kind::Response,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Kind::Transport,
        _ => Kind::Construction,
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    classify_parts(kind, status, err.code())
}

fn classify_parts(kind: Kind, status: Option<u16>, code: Option<&str>) -> ErrorClass {
    match kind {
        // An unparseable response or a broken connection says nothing about the object.
        Kind::Response | Kind::Transport => ErrorClass::Transient,
        Kind::Construction => ErrorClass::Unexpected,
        Kind::Service => {
            let code = code.unwrap_or_default();
            // A missing bucket is a deployment problem, not a missing input: retry.
            if code == "NoSuchBucket" {
                ErrorClass::Unexpected
            } else if NOT_FOUND_CODES.contains(&code) || status == Some(404) {
                ErrorClass::NotFound
            } else if THROTTLING_CODES.contains(&code)
                || status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Unexpected
            }
        }
    }
}

/// The full error chain in one line, for logs and retry reasons.
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: Error + 'static,
{
    DisplayErrorContext(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_objects_are_not_found() {
        assert_eq!(
            classify_parts(Kind::Service, Some(404), Some("NoSuchKey")),
            ErrorClass::NotFound
        );
        // HeadObject has no body, so no code: the status decides.
        assert_eq!(
            classify_parts(Kind::Service, Some(404), None),
            ErrorClass::NotFound
        );
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        for (status, code) in [
            (Some(500), Some("InternalError")),
            (Some(503), Some("SlowDown")),
            (Some(503), None),
            (Some(400), Some("ThrottlingException")),
            (Some(429), None),
            (Some(400), Some("RequestTimeout")),
        ] {
            assert_eq!(
                classify_parts(Kind::Service, status, code),
                ErrorClass::Transient,
                "{status:?} {code:?}"
            );
        }
        assert_eq!(
            classify_parts(Kind::Transport, None, None),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_parts(Kind::Response, Some(200), None),
            ErrorClass::Transient
        );
    }

    #[test]
    fn other_client_errors_are_unexpected() {
        assert_eq!(
            classify_parts(Kind::Service, Some(403), Some("AccessDenied")),
            ErrorClass::Unexpected
        );
        assert_eq!(
            classify_parts(Kind::Service, Some(400), Some("InvalidArgument")),
            ErrorClass::Unexpected
        );
        assert_eq!(
            classify_parts(Kind::Construction, None, None),
            ErrorClass::Unexpected
        );
        assert_eq!(
            classify_parts(Kind::Service, Some(404), Some("NoSuchBucket")),
            ErrorClass::Unexpected
        );
    }
}
