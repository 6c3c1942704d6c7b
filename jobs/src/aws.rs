//! S3 and SQS clients built from [`Config`], with the endpoint override for LocalStack.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Credentials;

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    pub async fn connect(config: &Config) -> Self {
        let sdk = sdk_config(
            config.aws_endpoint_url.as_deref(),
            &config.aws_region,
            config
                .aws_access_key_id
                .as_deref()
                .zip(config.aws_secret_access_key.as_deref()),
        )
        .await;
        AwsClients {
            s3: s3_client(&sdk, config.aws_endpoint_url.is_some()),
            sqs: aws_sdk_sqs::Client::new(&sdk),
        }
    }

    /// The request queue's URL: `SQS_QUEUE_URL` when given, else looked up by name.
    pub async fn request_queue_url(&self, config: &Config) -> Result<String, aws_sdk_sqs::Error> {
        if let Some(url) = &config.sqs_queue_url {
            return Ok(url.clone());
        }
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(&config.sqs_req_queue_name)
            .send()
            .await?;
        Ok(out.queue_url.unwrap_or_default())
    }
}

/// Shared SDK configuration. `static_keys` overrides the default credential chain
/// (LocalStack, or keys from a Secret); `None` leaves IRSA and friends in charge.
pub async fn sdk_config(
    endpoint: Option<&str>,
    region: &str,
    static_keys: Option<(&str, &str)>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        // Fail fast on an unreachable endpoint; the attempt limit stays above the
        // longest SQS long poll (20 s).
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(25))
                .build(),
        );
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = static_keys {
        loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "qwp"));
    }
    loader.load().await
}

/// LocalStack serves buckets by path (`endpoint/bucket/key`), not by virtual host.
pub fn s3_client(sdk: &aws_config::SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
