//! Test support (feature `testing`): a private set of buckets and queues on the real
//! LocalStack for one test, so tests run in parallel without seeing each other's jobs.

use std::collections::HashMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

use qwp_pool::contract::{AWS_ENDPOINT_URL, SQS_REQ_QUEUE_NAME};

use crate::aws::AwsClients;
use crate::config::{Config, Vars};
use crate::message::JobMessage;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

#[derive(Clone, Debug)]
pub struct TestStackOptions {
    pub visibility_timeout_seconds: u32,
    /// With `Some(n)`, a dead-letter queue receives messages after `n` receives.
    pub max_receive_count: Option<u32>,
}

impl Default for TestStackOptions {
    fn default() -> Self {
        TestStackOptions {
            visibility_timeout_seconds: 30,
            max_receive_count: None,
        }
    }
}

pub struct TestStack {
    pub config: Config,
    pub clients: AwsClients,
    pub queue_url: String,
    pub dlq_url: Option<String>,
}

/// The clients that feed and inspect a test's buckets and queues. LocalStack under a
/// benchmark's load (dozens of pods polling it, hundreds of requests a second, 2 shared cores)
/// can answer slower than the SDK's stalled-stream floor (1 B/s over 5 s) or than three
/// attempts allow: that is not what a test measures, so such requests wait and retry (each
/// attempt still ends at the 25 s attempt timeout) instead of failing the run. The retry
/// quota is unlimited too: the standard strategy's shared token bucket (500 tokens, 10 per
/// timed-out attempt) is spent by a few dozen of a burst's concurrent uploads timing out at
/// once, after which every request fails at its first timeout (`make bench-keda`'s flash
/// sale: `store input: TimeoutError` ~100 s in, far short of 8 attempts).
fn patient(clients: AwsClients) -> AwsClients {
    use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};
    const ATTEMPTS: u32 = 8;
    let unlimited = |name: &'static str| {
        RetryPartition::custom(name)
            .token_bucket(TokenBucket::unlimited())
            .build()
    };
    let s3 = clients
        .s3
        .config()
        .to_builder()
        .stalled_stream_protection(aws_sdk_s3::config::StalledStreamProtectionConfig::disabled())
        .retry_config(
            aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS),
        )
        .retry_partition(unlimited("qwp-test-s3"))
        .build();
    let sqs = clients
        .sqs
        .config()
        .to_builder()
        .stalled_stream_protection(aws_sdk_sqs::config::StalledStreamProtectionConfig::disabled())
        .retry_config(
            aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS),
        )
        .retry_partition(unlimited("qwp-test-sqs"))
        .build();
    AwsClients {
        s3: aws_sdk_s3::Client::from_conf(s3),
        sqs: aws_sdk_sqs::Client::from_conf(sqs),
    }
}

impl TestStack {
    /// Creates fresh buckets and queues named after `prefix`. Panics with an explanation
    /// when LocalStack cannot be reached: a test that needs it must fail, not skip.
    pub async fn new(prefix: &str, options: TestStackOptions) -> Self {
        let endpoint =
            std::env::var(AWS_ENDPOINT_URL).unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let name = |kind: &str| format!("{prefix}-{kind}-{suffix}").to_ascii_lowercase();
        let mut env: HashMap<&str, String> = HashMap::new();
        env.insert(AWS_ENDPOINT_URL, endpoint.clone());
        env.insert("S3_IN_BUCKET", name("in"));
        env.insert("S3_OUT_BUCKET", name("out"));
        env.insert(SQS_REQ_QUEUE_NAME, name("q"));
        env.insert("SQS_WAIT_TIME_SECONDS", "1".into());
        env.insert(
            "SQS_VISIBILITY_TIMEOUT_SECONDS",
            options.visibility_timeout_seconds.to_string(),
        );
        let config = Config::from_vars(&Vars::new(|k| env.get(k).cloned()))
            .expect("test configuration is valid");
        let clients = patient(AwsClients::connect(&config).await);

        for bucket in [&config.s3_in_bucket, &config.s3_out_bucket] {
            clients
                .s3
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot create bucket {bucket} on LocalStack at {endpoint}: {}. \
                         Start it with `make localstack-up`.",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
        }

        let mut attributes = HashMap::from([(
            QueueAttributeName::VisibilityTimeout,
            options.visibility_timeout_seconds.to_string(),
        )]);
        let mut dlq_url = None;
        if let Some(max_receive_count) = options.max_receive_count {
            let url = create_queue(&clients, &name("dlq"), HashMap::new()).await;
            let arn = clients
                .sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("read DLQ arn")
                .attributes
                .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                .expect("DLQ has an arn");
            attributes.insert(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count})
                    .to_string(),
            );
            dlq_url = Some(url);
        }
        let queue_url = create_queue(&clients, &config.sqs_req_queue_name, attributes).await;
        let mut config = config;
        config.sqs_queue_url = Some(queue_url.clone());
        TestStack {
            config,
            clients,
            queue_url,
            dlq_url,
        }
    }

    /// Queues jobs as the API server does: every input stored first, then the messages.
    pub async fn submit(&self, jobs: &[(JobMessage, Vec<u8>)]) {
        // Chunks of concurrent uploads rather than a buffered stream: the stream's
        // borrowing closure is not `Send` for every lifetime, which spawned tests need.
        for chunk in jobs.chunks(16) {
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|(job, input)| self.put_input(job, input.clone())),
            )
            .await;
        }
        let messages: Vec<JobMessage> = jobs.iter().map(|(job, _)| job.clone()).collect();
        self.send_messages(&messages).await;
    }

    pub async fn put_input(&self, job: &JobMessage, input: Vec<u8>) {
        self.clients
            .s3
            .put_object()
            .bucket(&self.config.s3_in_bucket)
            .key(job.input_key())
            .body(ByteStream::from(input))
            .send()
            .await
            .expect("store input");
    }

    pub async fn send_messages(&self, jobs: &[JobMessage]) {
        let bodies: Vec<String> = jobs.iter().map(JobMessage::encode).collect();
        self.send_bodies(&bodies).await;
    }

    /// Sends raw bodies (hostile ones too) in batches of 10.
    pub async fn send_bodies(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(body)
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let out = self
                .clients
                .sqs
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send messages");
            assert!(out.failed.is_empty(), "some sends failed: {:?}", out.failed);
        }
    }

    /// Approximate visible + in-flight message count of the request queue.
    pub async fn queue_depth(&self) -> (u64, u64) {
        queue_depth(&self.clients, &self.queue_url).await
    }

    /// The stored result of `job_id`, if there is one yet.
    pub async fn result(&self, job_id: &crate::JobId) -> Option<crate::JobResult> {
        let out = self
            .clients
            .s3
            .get_object()
            .bucket(&self.config.s3_out_bucket)
            .key(crate::keys::output_key(job_id))
            .send()
            .await
            .ok()?;
        let bytes = out.body.collect().await.expect("read result").into_bytes();
        Some(crate::JobResult::from_json_bytes(&bytes).expect("a well-formed result document"))
    }
}

pub async fn queue_depth(clients: &AwsClients, url: &str) -> (u64, u64) {
    let attrs = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("read queue attributes")
        .attributes
        .unwrap_or_default();
    let get = |name: &QueueAttributeName| {
        attrs
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn create_queue(
    clients: &AwsClients,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> String {
    clients
        .sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create queue {name} on LocalStack: {}. Start it with `make localstack-up`.",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })
        .queue_url
        .expect("CreateQueue returns a URL")
}

/// Checks `condition` every `every` until it holds; panics naming `what` after `timeout`. For
/// state that has no notification to wait on (counters, LocalStack's queue).
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut condition: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {timeout:?}"
        );
        tokio::time::sleep(every).await;
    }
}
