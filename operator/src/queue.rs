//! Reading a queue's depth: the [`QueueDepthSource`] trait (so reconcile tests can fake it)
//! and its SQS implementation, one `GetQueueAttributes` call per read.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use aws_config::sts::AssumeRoleProvider;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use futures::future::BoxFuture;
use qwp_pool::decision::QueueDepth;
use qwp_runtime::aws_error;

/// The session name of the operator's assumed-role sessions (in CloudTrail).
pub const ROLE_SESSION_NAME: &str = "qwp-operator";

/// Everything needed to reach one queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueTarget {
    /// Either a URL…
    pub url: Option<String>,
    /// …or a name resolved with GetQueueUrl.
    pub name: Option<String>,
    pub region: String,
    pub endpoint: Option<String>,
    /// Static keys from the pool's Secret; `None` uses the default credential chain.
    pub credentials: Option<StaticCredentials>,
    /// A role to assume with those credentials (STS AssumeRole) before reading the queue.
    pub role_arn: Option<String>,
}

impl QueueTarget {
    /// How the queue is shown in status and logs.
    pub fn display_name(&self) -> String {
        self.url
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_default()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A failed read: the AWS error code (or a name for the transport failure) and the details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct QueueError {
    pub code: String,
    pub message: String,
}

impl QueueError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        QueueError {
            code: code.into(),
            message: message.into(),
        }
    }

    fn from_sdk<E, R>(err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        QueueError {
            code: aws_error::code(&err).to_string(),
            message: aws_error::message(&err),
        }
    }
}

/// One successful read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The queue URL that was read (resolved from the name if needed).
    pub url: String,
    pub depth: QueueDepth,
    /// SQS API calls this read made (1, or 2 when the name had to be resolved).
    pub api_calls: u32,
}

pub trait QueueDepthSource: Send + Sync {
    fn read<'a>(&'a self, target: &'a QueueTarget) -> BoxFuture<'a, Result<Reading, QueueError>>;
}

/// Clients are cached per (endpoint, region, credentials, role): building one loads the SDK
/// config, which is too slow to repeat every poll (an assumed role's credentials are cached
/// and refreshed by the client's identity cache). Resolved queue URLs are cached too.
type ClientKey = (
    Option<String>,
    String,
    Option<StaticCredentials>,
    Option<String>,
);

#[derive(Default)]
pub struct SqsQueueDepth {
    clients: Mutex<HashMap<ClientKey, aws_sdk_sqs::Client>>,
    urls: Mutex<HashMap<(ClientKey, String), String>>,
}

impl SqsQueueDepth {
    pub fn new() -> Self {
        Self::default()
    }

    async fn client(&self, key: &ClientKey) -> aws_sdk_sqs::Client {
        if let Some(client) = self.clients.lock().expect("client cache lock").get(key) {
            return client.clone();
        }
        let (endpoint, region, credentials, role_arn) = key;
        let sdk = qwp_jobs::aws::sdk_config(
            endpoint.as_deref(),
            region,
            credentials
                .as_ref()
                .map(|c| (c.access_key_id.as_str(), c.secret_access_key.as_str())),
        )
        .await;
        let client = match role_arn {
            None => aws_sdk_sqs::Client::new(&sdk),
            // STS at the same endpoint (LocalStack answers both), signed with the base credentials.
            Some(role_arn) => {
                let assumed = AssumeRoleProvider::builder(role_arn)
                    .session_name(ROLE_SESSION_NAME)
                    .configure(&sdk)
                    .build()
                    .await;
                let config = aws_sdk_sqs::config::Builder::from(&sdk)
                    .credentials_provider(assumed)
                    .build();
                aws_sdk_sqs::Client::from_conf(config)
            }
        };
        self.clients
            .lock()
            .expect("client cache lock")
            .insert(key.clone(), client.clone());
        client
    }

    async fn read_target(&self, target: &QueueTarget) -> Result<Reading, QueueError> {
        let key: ClientKey = (
            target.endpoint.clone(),
            target.region.clone(),
            target.credentials.clone(),
            target.role_arn.clone(),
        );
        let client = self.client(&key).await;
        let mut api_calls = 0;
        let url = match (&target.url, &target.name) {
            (Some(url), _) => url.clone(),
            (None, Some(name)) => {
                let cache_key = (key.clone(), name.clone());
                let cached = self
                    .urls
                    .lock()
                    .expect("url cache lock")
                    .get(&cache_key)
                    .cloned();
                match cached {
                    Some(url) => url,
                    None => {
                        api_calls += 1;
                        let out = client
                            .get_queue_url()
                            .queue_name(name)
                            .send()
                            .await
                            .map_err(QueueError::from_sdk)?;
                        let url = out.queue_url.ok_or_else(|| {
                            QueueError::new("ResponseError", "GetQueueUrl returned no URL")
                        })?;
                        self.urls
                            .lock()
                            .expect("url cache lock")
                            .insert(cache_key, url.clone());
                        url
                    }
                }
            }
            (None, None) => {
                return Err(QueueError::new(
                    "InvalidSpec",
                    "queue has neither url nor name",
                ));
            }
        };
        api_calls += 1;
        let result = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        let attributes = match result {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(err) => {
                // A queue deleted and recreated under the same name gets a new URL.
                if target.url.is_none() {
                    self.urls
                        .lock()
                        .expect("url cache lock")
                        .retain(|(k, _), _| k != &key);
                }
                return Err(QueueError::from_sdk(err));
            }
        };
        let number = |name: QueueAttributeName| -> Result<u64, QueueError> {
            let raw = attributes.get(&name).ok_or_else(|| {
                QueueError::new(
                    "ResponseError",
                    format!("{name} missing from GetQueueAttributes"),
                )
            })?;
            raw.parse().map_err(|_| {
                QueueError::new("ResponseError", format!("{name} is not a count: {raw:?}"))
            })
        };
        Ok(Reading {
            depth: QueueDepth {
                visible: number(QueueAttributeName::ApproximateNumberOfMessages)?,
                in_flight: number(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
                delayed: number(QueueAttributeName::ApproximateNumberOfMessagesDelayed)?,
            },
            url,
            api_calls,
        })
    }
}

impl QueueDepthSource for SqsQueueDepth {
    fn read<'a>(&'a self, target: &'a QueueTarget) -> BoxFuture<'a, Result<Reading, QueueError>> {
        Box::pin(self.read_target(target))
    }
}
