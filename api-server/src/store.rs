//! The server's side of the job pipeline on AWS: input objects in the input bucket,
//! messages on the request queue, result documents in the output bucket.
//! Errors carry the SDK's full context for the log; callers turn them into a plain 503.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::MessageAttributeValue;
use bytes::Bytes;
use qwp_jobs::aws::AwsClients;
use qwp_jobs::hint::REPLY_TO_ATTRIBUTE;
use qwp_jobs::{Config, JobId, JobMessage, JobResult, keys};
use qwp_runtime::aws_error::is_not_found;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::OnceCell;

use crate::metrics::{CallHistograms, CallLabels};

/// Result documents larger than this are not a worker's honest output; refuse to load them.
const MAX_RESULT_BYTES: i64 = 16 * 1024 * 1024;

/// How many job ids [`KnownJobs`] remembers (16 bytes each, twice).
const KNOWN_JOBS_CAPACITY: usize = 100_000;

/// Job ids whose input is known to exist: accepted here, or found by a listing. An input
/// exists from acceptance on, so a positive answer never goes stale; remembering it
/// saves a ListObjectsV2 for every poll of a pending job, a call whose cost grows with
/// the bucket on some S3 implementations (LocalStack lists the whole bucket).
struct KnownJobs {
    ids: HashSet<JobId>,
    order: VecDeque<JobId>,
}

impl KnownJobs {
    fn insert(&mut self, job_id: JobId) {
        if self.ids.insert(job_id) {
            self.order.push_back(job_id);
            if self.order.len() > KNOWN_JOBS_CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }
}

/// An AWS call failed; the message is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    fn from_sdk<E, R>(context: &str, err: SdkError<E, R>) -> Self
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        StoreError(format!("{context}: {}", DisplayErrorContext(err)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Unavailable(StoreError),
    #[error("result document of job {job_id} is unreadable: {reason}")]
    Unreadable { job_id: JobId, reason: String },
}

#[derive(Clone)]
pub struct JobStore {
    pub(crate) clients: AwsClients,
    config: Arc<Config>,
    /// Resolved on first use, so the server starts (and reports not-ready) while SQS is down.
    queue_url: Arc<OnceCell<String>>,
    known: Arc<Mutex<KnownJobs>>,
    /// How long each S3 and SQS call took (`qwp_api_aws_call_duration_seconds`).
    calls: CallHistograms,
}

impl JobStore {
    pub fn new(config: Config, clients: AwsClients, calls: CallHistograms) -> Self {
        JobStore {
            clients,
            calls,
            config: Arc::new(config),
            queue_url: Arc::new(OnceCell::new()),
            known: Arc::new(Mutex::new(KnownJobs {
                ids: HashSet::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// Runs one S3 or SQS call, recording its duration under `call`.
    async fn timed<T>(&self, call: &'static str, request: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = request.await;
        self.calls
            .get_or_create(&CallLabels { call })
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    pub fn input_bucket(&self) -> &str {
        &self.config.s3_in_bucket
    }

    /// The request queue's URL when configured, else its name (for the operator's wake-up).
    pub fn queue_name(&self) -> &str {
        self.config
            .sqs_queue_url
            .as_deref()
            .unwrap_or(&self.config.sqs_req_queue_name)
    }

    pub fn output_bucket(&self) -> &str {
        &self.config.s3_out_bucket
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.clients.s3
    }

    pub async fn put_input(&self, message: &JobMessage, bytes: Bytes) -> Result<(), StoreError> {
        let put = self
            .clients
            .s3
            .put_object()
            .bucket(self.input_bucket())
            .key(message.input_key())
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes))
            .send();
        self.timed("s3_put_input", put)
            .await
            .map_err(|e| StoreError::from_sdk("PutObject input", e))?;
        self.remember(message.job_id);
        Ok(())
    }

    pub async fn delete_input(&self, message: &JobMessage) -> Result<(), StoreError> {
        let delete = self
            .clients
            .s3
            .delete_object()
            .bucket(self.input_bucket())
            .key(message.input_key())
            .send();
        self.timed("s3_delete_input", delete)
            .await
            .map_err(|e| StoreError::from_sdk("DeleteObject input", e))?;
        self.known
            .lock()
            .expect("known jobs lock")
            .ids
            .remove(&message.job_id);
        Ok(())
    }

    async fn queue_url(&self) -> Result<&str, StoreError> {
        self.queue_url
            .get_or_try_init(|| async {
                self.clients
                    .request_queue_url(&self.config)
                    .await
                    .map_err(|e| StoreError(format!("GetQueueUrl: {}", DisplayErrorContext(e))))
            })
            .await
            .map(String::as_str)
    }

    /// Queues the job; `reply_to` (this replica's internal address) rides along as
    /// [`REPLY_TO_ATTRIBUTE`] for the worker's completion hint.
    pub async fn send_message(
        &self,
        message: &JobMessage,
        reply_to: Option<&str>,
    ) -> Result<(), StoreError> {
        let url = self.queue_url().await?;
        let mut send = self
            .clients
            .sqs
            .send_message()
            .queue_url(url)
            .message_body(message.encode());
        if let Some(reply_to) = reply_to {
            let attribute = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(reply_to)
                .build()
                .map_err(|e| StoreError(format!("message attribute: {e}")))?;
            send = send.message_attributes(REPLY_TO_ATTRIBUTE, attribute);
        }
        self.timed("sqs_send_message", send.send())
            .await
            .map_err(|e| StoreError(format!("SendMessage: {}", DisplayErrorContext(e))))?;
        Ok(())
    }

    /// One read of the job's result document: `None` while there is none.
    pub async fn fetch_result(&self, job_id: &JobId) -> Result<Option<JobResult>, FetchError> {
        let get = self
            .clients
            .s3
            .get_object()
            .bucket(self.output_bucket())
            .key(keys::output_key(job_id))
            .send();
        let response = self.timed("s3_get_result", get).await;
        let object = match response {
            Ok(object) => object,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => {
                return Err(FetchError::Unavailable(StoreError::from_sdk(
                    "GetObject result",
                    err,
                )));
            }
        };
        let unreadable = |reason: String| FetchError::Unreadable {
            job_id: *job_id,
            reason,
        };
        if object.content_length.unwrap_or(0) > MAX_RESULT_BYTES {
            return Err(unreadable(format!(
                "{} bytes is over the {MAX_RESULT_BYTES}-byte limit",
                object.content_length.unwrap_or(0)
            )));
        }
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| FetchError::Unavailable(StoreError(format!("reading result body: {e}"))))?
            .into_bytes();
        JobResult::from_json_bytes(&bytes)
            .map(Some)
            .map_err(|e| unreadable(e.to_string()))
    }

    /// Whether the job was ever submitted: its input object `{job_id}_*` exists.
    pub async fn input_exists(&self, job_id: &JobId) -> Result<bool, StoreError> {
        if self
            .known
            .lock()
            .expect("known jobs lock")
            .ids
            .contains(job_id)
        {
            return Ok(true);
        }
        let list = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(self.input_bucket())
            .prefix(format!("{job_id}_"))
            .max_keys(1)
            .send();
        let listing = self
            .timed("s3_list_input", list)
            .await
            .map_err(|e| StoreError::from_sdk("ListObjectsV2 input", e))?;
        let exists = listing.key_count.unwrap_or(0) > 0 || !listing.contents().is_empty();
        if exists {
            self.remember(*job_id);
        }
        Ok(exists)
    }

    fn remember(&self, job_id: JobId) {
        self.known.lock().expect("known jobs lock").insert(job_id);
    }

    /// Readiness: both buckets and the queue answer.
    pub async fn check_ready(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        let bucket = |name: String, label: &'static str| async move {
            let result = self
                .clients
                .s3
                .head_bucket()
                .bucket(name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| StoreError::from_sdk("HeadBucket", e));
            (label, result)
        };
        let queue = async {
            let result = async {
                let url = self.queue_url().await?;
                self.clients
                    .sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        StoreError(format!("GetQueueAttributes: {}", DisplayErrorContext(e)))
                    })
            }
            .await;
            ("request_queue", result)
        };
        let (input, output, queue) = tokio::join!(
            bucket(self.config.s3_in_bucket.clone(), "input_bucket"),
            bucket(self.config.s3_out_bucket.clone(), "output_bucket"),
            queue
        );
        vec![input, output, queue]
    }
}

/// The clients with every call bounded by `per_call` (all attempts together), so a job
/// acceptance, and therefore a request and a shutdown, has an upper bound even when
/// S3 or SQS hangs.
pub fn with_timeouts(clients: AwsClients, per_call: std::time::Duration) -> AwsClients {
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(per_call.min(std::time::Duration::from_secs(2)))
        .operation_attempt_timeout(per_call)
        .operation_timeout(per_call)
        .build();
    let s3 = clients
        .s3
        .config()
        .to_builder()
        .timeout_config(timeouts.clone())
        .build();
    let sqs = clients
        .sqs
        .config()
        .to_builder()
        .timeout_config(timeouts)
        .build();
    AwsClients {
        s3: aws_sdk_s3::Client::from_conf(s3),
        sqs: aws_sdk_sqs::Client::from_conf(sqs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_jobs_forget_the_oldest_past_capacity() {
        let mut known = KnownJobs {
            ids: HashSet::new(),
            order: VecDeque::new(),
        };
        let first = JobId::new();
        known.insert(first);
        known.insert(first);
        assert_eq!(known.order.len(), 1);
        let mut last = first;
        for _ in 0..KNOWN_JOBS_CAPACITY {
            last = JobId::new();
            known.insert(last);
        }
        assert!(!known.ids.contains(&first));
        assert!(known.ids.contains(&last));
        assert_eq!(known.ids.len(), KNOWN_JOBS_CAPACITY);
    }
}
