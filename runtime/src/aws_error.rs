//! What a failed S3/SQS call means, for any operation of either SDK.
//!
//! Only a missing object is a verdict. Everything else is either [`ErrorClass::Transient`]
//! (5xx, throttling, timeouts, connection failures: load, try again later) or
//! [`ErrorClass::Unexpected`] (AccessDenied, a missing bucket or queue, a request the SDK
//! could not build: configuration, not load). Callers decide what each means for them; the
//! worker, for one, retries both via the queue, so a misconfigured bucket policy cannot
//! turn users' jobs into permanent failures.

use std::error::Error;
use std::fmt::Debug;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The object (or queue entry) does not exist.
    NotFound,
    /// 5xx, throttling, timeouts, connection failures: try again later.
    Transient,
    /// Anything else (403, 400, a missing bucket, a request the SDK could not build): it
    /// points at configuration, not load, and will not go away by itself.
    Unexpected,
}

impl ErrorClass {
    pub fn is_transient(self) -> bool {
        self == ErrorClass::Transient
    }
}

/// Service error codes that mean "busy, try later" whatever their HTTP status.
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
    match err {
        SdkError::ServiceError(_) => classify_service(http_status(err), err.code()),
        // An unparseable response or a broken connection says nothing about the object.
        SdkError::ResponseError(_) | SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            ErrorClass::Transient
        }
        // ConstructionFailure: the request never left; sending it again builds it again.
        _ => ErrorClass::Unexpected,
    }
}

fn classify_service(status: Option<u16>, code: Option<&str>) -> ErrorClass {
    let code = code.unwrap_or_default();
    // A missing bucket is a deployment problem, not a missing object (both are 404).
    if code == "NoSuchBucket" {
        ErrorClass::Unexpected
    } else if NOT_FOUND_CODES.contains(&code) || status == Some(404) {
        // HeadObject's 404 has no body, so no code: the status decides.
        ErrorClass::NotFound
    } else if THROTTLING_CODES.contains(&code)
        || status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
    {
        ErrorClass::Transient
    } else {
        ErrorClass::Unexpected
    }
}

/// Shorthand for `classify(err) == ErrorClass::NotFound`.
pub fn is_not_found<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    classify(err) == ErrorClass::NotFound
}

/// The HTTP status of a service's error response (`None` when there was no error response,
/// or it could not be parsed).
pub fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(_) => err.raw_response().map(|r| r.status().as_u16()),
        _ => None,
    }
}

/// A short name for logs, metrics and status reasons: the service's error code
/// (`AccessDenied`, `AWS.SimpleQueueService.NonExistentQueue`), or how the call failed when
/// the service did not answer (`Timeout`, `DispatchFailure`, ...).
pub fn code<E, R>(err: &SdkError<E, R>) -> &str
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => err.code().unwrap_or("ServiceError"),
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "DispatchFailure",
        SdkError::ResponseError(_) => "ResponseError",
        SdkError::ConstructionFailure(_) => "ConstructionFailure",
        _ => "Unknown",
    }
}

/// The service's own message when it sent one, else the full error chain.
pub fn message<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
    R: Debug,
{
    err.message()
        .map(str::to_string)
        .unwrap_or_else(|| describe(err))
}

/// The full error chain in one line, for logs and retry reasons.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: Error + 'static,
    R: Debug,
{
    DisplayErrorContext(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::head_object::HeadObjectError;
    use aws_sdk_s3::types::error::{NoSuchKey, NotFound};
    use aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    fn metadata(code: Option<&str>, message: Option<&str>) -> ErrorMetadata {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        if let Some(message) = message {
            meta = meta.message(message);
        }
        meta.build()
    }

    /// An error response of GetObject that the SDK did not model (most S3 codes).
    fn s3_error(status: u16, code: Option<&str>) -> SdkError<GetObjectError, HttpResponse> {
        SdkError::service_error(
            GetObjectError::generic(metadata(code, None)),
            response(status),
        )
    }

    fn sqs_error(status: u16, code: &str) -> SdkError<GetQueueAttributesError, HttpResponse> {
        SdkError::service_error(
            GetQueueAttributesError::generic(metadata(Some(code), Some("details"))),
            response(status),
        )
    }

    fn timeout() -> SdkError<GetObjectError, HttpResponse> {
        SdkError::timeout_error("operation timed out after 30s")
    }

    fn dispatch(error: ConnectorError) -> SdkError<GetObjectError, HttpResponse> {
        SdkError::dispatch_failure(error)
    }

    fn unparseable() -> SdkError<GetObjectError, HttpResponse> {
        SdkError::response_error("invalid XML", response(200))
    }

    fn construction() -> SdkError<GetObjectError, HttpResponse> {
        SdkError::construction_failure("bucket is required")
    }

    #[test]
    fn missing_objects_are_not_found() {
        let no_such_key = SdkError::service_error(
            GetObjectError::NoSuchKey(
                NoSuchKey::builder()
                    .meta(metadata(
                        Some("NoSuchKey"),
                        Some("The specified key does not exist."),
                    ))
                    .build(),
            ),
            response(404),
        );
        assert_eq!(classify(&no_such_key), ErrorClass::NotFound);
        assert!(is_not_found(&no_such_key));
        // HeadObject has no body, so no code: the status decides.
        let bare_404 = SdkError::service_error(
            HeadObjectError::generic(metadata(None, None)),
            response(404),
        );
        assert_eq!(classify(&bare_404), ErrorClass::NotFound);
        let modeled_head = SdkError::service_error(
            HeadObjectError::NotFound(
                NotFound::builder()
                    .meta(metadata(Some("NotFound"), None))
                    .build(),
            ),
            response(404),
        );
        assert_eq!(classify(&modeled_head), ErrorClass::NotFound);
        // The code decides even when a proxy rewrote the status.
        assert_eq!(
            classify(&s3_error(400, Some("NoSuchKey"))),
            ErrorClass::NotFound
        );
    }

    #[test]
    fn a_missing_bucket_is_not_a_missing_object() {
        let err = s3_error(404, Some("NoSuchBucket"));
        assert_eq!(classify(&err), ErrorClass::Unexpected);
        assert!(!is_not_found(&err));
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        for (status, code) in [
            (500, Some("InternalError")),
            (503, Some("SlowDown")),
            (503, None),
            (502, None),
            (500, Some("SomethingNew")),
            (400, Some("ThrottlingException")),
            (429, None),
            (408, None),
            (400, Some("RequestTimeout")),
        ] {
            assert_eq!(
                classify(&s3_error(status, code)),
                ErrorClass::Transient,
                "{status} {code:?}"
            );
        }
        for &code in THROTTLING_CODES {
            assert_eq!(
                classify(&s3_error(400, Some(code))),
                ErrorClass::Transient,
                "{code}"
            );
        }
        assert_eq!(
            classify(&sqs_error(400, "RequestThrottled")),
            ErrorClass::Transient
        );
    }

    #[test]
    fn no_answer_from_the_service_is_transient() {
        assert_eq!(classify(&timeout()), ErrorClass::Transient);
        assert_eq!(classify(&unparseable()), ErrorClass::Transient);
        for error in [
            ConnectorError::io("connection refused".into()),
            ConnectorError::timeout("connect timed out".into()),
            ConnectorError::other("tls handshake failed".into(), None),
            ConnectorError::user("invalid endpoint".into()),
        ] {
            let err = dispatch(error);
            assert_eq!(classify(&err), ErrorClass::Transient, "{}", describe(&err));
        }
    }

    #[test]
    fn other_client_errors_are_unexpected() {
        for (status, code) in [
            (403, Some("AccessDenied")),
            (400, Some("InvalidArgument")),
            (400, None),
            (409, Some("BucketAlreadyOwnedByYou")),
            (412, Some("PreconditionFailed")),
        ] {
            assert_eq!(
                classify(&s3_error(status, code)),
                ErrorClass::Unexpected,
                "{status} {code:?}"
            );
        }
        assert_eq!(
            classify(&sqs_error(400, "AWS.SimpleQueueService.NonExistentQueue")),
            ErrorClass::Unexpected
        );
        assert_eq!(classify(&construction()), ErrorClass::Unexpected);
    }

    #[test]
    fn only_transient_is_transient() {
        assert!(ErrorClass::Transient.is_transient());
        assert!(!ErrorClass::Unexpected.is_transient());
        assert!(!ErrorClass::NotFound.is_transient());
    }

    #[test]
    fn the_status_is_that_of_the_error_response() {
        assert_eq!(
            http_status(&s3_error(412, Some("PreconditionFailed"))),
            Some(412)
        );
        assert_eq!(http_status(&sqs_error(400, "InvalidAddress")), Some(400));
        // A response that could not be parsed is not the service's error answer.
        assert_eq!(http_status(&unparseable()), None);
        assert_eq!(http_status(&timeout()), None);
        assert_eq!(http_status(&construction()), None);
    }

    #[test]
    fn codes_name_the_service_error_or_how_the_call_failed() {
        assert_eq!(code(&s3_error(403, Some("AccessDenied"))), "AccessDenied");
        assert_eq!(
            code(&sqs_error(400, "AWS.SimpleQueueService.NonExistentQueue")),
            "AWS.SimpleQueueService.NonExistentQueue"
        );
        assert_eq!(code(&s3_error(404, None)), "ServiceError");
        assert_eq!(code(&timeout()), "Timeout");
        assert_eq!(
            code(&dispatch(ConnectorError::io("connection refused".into()))),
            "DispatchFailure"
        );
        assert_eq!(code(&unparseable()), "ResponseError");
        assert_eq!(code(&construction()), "ConstructionFailure");
    }

    #[test]
    fn messages_prefer_the_service_text_and_fall_back_to_the_chain() {
        assert_eq!(message(&sqs_error(400, "InvalidAddress")), "details");
        let refused = dispatch(ConnectorError::io("connection refused".into()));
        let text = message(&refused);
        assert_eq!(text, describe(&refused));
        assert!(text.contains("dispatch failure"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        let chain = describe(&timeout());
        assert!(chain.contains("operation timed out after 30s"), "{chain}");
    }
}
