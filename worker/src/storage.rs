//! The job's S3 side: the input under `{job_id}_{filename}`, the result under `{job_id}`.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use qwp_jobs::{JobMessage, JobResult};

use qwp_runtime::aws_error::{ErrorClass, classify, describe, http_status};

/// What a result write did. Writes are conditional (`If-None-Match: *`): the first result
/// stored for a job is the one every client reads, whichever attempt wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultWrite {
    Stored,
    /// Another attempt stored a result first; it is kept.
    AlreadyStored,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {key} not found in bucket {bucket}")]
    Missing { bucket: String, key: String },
    #[error("input {key} is {size} bytes; the limit is {limit} (MAX_FILE_MB)")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// An S3 call that failed for a reason other than a missing object; retried via the queue.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct StorageError {
    pub operation: &'static str,
    pub class: ErrorClass,
    pub message: String,
}

impl StorageError {
    fn new<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        StorageError {
            operation,
            class: classify(err),
            message: describe(err),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Storage {
    s3: aws_sdk_s3::Client,
    in_bucket: String,
    out_bucket: String,
    max_input_bytes: u64,
}

impl Storage {
    pub fn new(
        s3: aws_sdk_s3::Client,
        in_bucket: String,
        out_bucket: String,
        max_input_bytes: u64,
    ) -> Self {
        Storage {
            s3,
            in_bucket,
            out_bucket,
            max_input_bytes,
        }
    }

    /// Whether a result is already stored: a redelivered job is then acknowledged
    /// without running again.
    pub async fn result_exists(&self, job: &JobMessage) -> Result<bool, StorageError> {
        match self
            .s3
            .head_object()
            .bucket(&self.out_bucket)
            .key(job.output_key())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if classify(&err) == ErrorClass::NotFound => Ok(false),
            Err(err) => Err(StorageError::new("HeadObject (result)", &err)),
        }
    }

    /// The input bytes; an object above `MAX_FILE_MB` is refused before it is read.
    pub async fn fetch_input(&self, job: &JobMessage) -> Result<Bytes, InputError> {
        let key = job.input_key();
        let out = match self
            .s3
            .get_object()
            .bucket(&self.in_bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) if classify(&err) == ErrorClass::NotFound => {
                return Err(InputError::Missing {
                    bucket: self.in_bucket.clone(),
                    key,
                });
            }
            Err(err) => return Err(StorageError::new("GetObject (input)", &err).into()),
        };
        let size = out.content_length.unwrap_or(0).max(0) as u64;
        if size > self.max_input_bytes {
            return Err(InputError::TooLarge {
                key,
                size,
                limit: self.max_input_bytes,
            });
        }
        let data = out.body.collect().await.map_err(|e| StorageError {
            operation: "GetObject (input body)",
            class: ErrorClass::Transient,
            message: e.to_string(),
        })?;
        Ok(data.into_bytes())
    }

    /// Stores the result unless one is already there. A 412 (`PreconditionFailed`) means an
    /// object exists, including when an earlier try of this same call was stored but its
    /// answer lost; a 409 (a concurrent conditional write in progress) is retried via the queue.
    pub async fn store_result(&self, result: &JobResult) -> Result<ResultWrite, StorageError> {
        let put = self
            .s3
            .put_object()
            .bucket(&self.out_bucket)
            .key(qwp_jobs::keys::output_key(&result.job_id))
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(result.to_json_bytes()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(ResultWrite::Stored),
            Err(err) if http_status(&err) == Some(412) => Ok(ResultWrite::AlreadyStored),
            Err(err) => Err(StorageError::new("PutObject (result)", &err)),
        }
    }
}
