//! Configuration from environment variables, with seed 001's names and defaults.
//! A bad value is an error naming the variable and the value, so a binary stops at start.
//! The queue's variables are the ones the operator injects into workers, read through
//! [`qwp_pool::contract::QueueEnv`]; [`Vars`] and [`ConfigError`] come from [`qwp_pool::env`].

use qwp_pool::contract::QueueEnv;
pub use qwp_pool::env::{ConfigError, Vars};

/// What the API server and the worker share: where jobs live and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `AWS_ENDPOINT_URL`: LocalStack's address; unset means real AWS.
    pub aws_endpoint_url: Option<String>,
    pub aws_region: String,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub s3_in_bucket: String,
    pub s3_out_bucket: String,
    pub sqs_req_queue_name: String,
    /// [`SQS_QUEUE_URL`](qwp_pool::contract::SQS_QUEUE_URL): a full queue URL (the operator injects it); wins over the name.
    pub sqs_queue_url: Option<String>,
    pub sqs_wait_time_seconds: u32,
    pub sqs_visibility_timeout_seconds: u32,
    pub max_wait_seconds: u64,
    pub max_file_mb: u64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let queue = QueueEnv::from_vars(vars)?;
        // LocalStack accepts any key; seed 001 defaulted to test/test. Against real AWS
        // unset keys leave the default credential chain (IRSA, instance profile) in charge.
        let default_key = queue.endpoint.as_ref().map(|_| "test".to_string());
        Ok(Config {
            aws_region: queue.region.unwrap_or_else(|| "us-east-1".into()),
            aws_access_key_id: queue.access_key_id.or(default_key.clone()),
            aws_secret_access_key: queue.secret_access_key.or(default_key),
            aws_endpoint_url: queue.endpoint,
            s3_in_bucket: vars.string("S3_IN_BUCKET", "input-bucket"),
            s3_out_bucket: vars.string("S3_OUT_BUCKET", "output-bucket"),
            sqs_req_queue_name: queue.queue_name.unwrap_or_else(|| "request-queue".into()),
            sqs_queue_url: queue.queue_url,
            sqs_wait_time_seconds: vars.parse_in("SQS_WAIT_TIME_SECONDS", 10, 0..=20)?,
            sqs_visibility_timeout_seconds: vars.parse_in(
                "SQS_VISIBILITY_TIMEOUT_SECONDS",
                60,
                0..=43_200,
            )?,
            max_wait_seconds: vars.parse_in("MAX_WAIT_SECONDS", 30, 0..=3_600)?,
            max_file_mb: vars.parse_in("MAX_FILE_MB", 8, 1..=5_120)?,
        })
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_mb * 1024 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwp_pool::contract::AWS_ENDPOINT_URL;

    fn vars(pairs: &[(&str, &str)]) -> Config {
        try_vars(pairs).unwrap()
    }

    fn try_vars(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(&Vars::from_pairs(pairs))
    }

    #[test]
    fn defaults_are_the_seeds() {
        let cfg = vars(&[]);
        assert_eq!(cfg.aws_endpoint_url, None);
        assert_eq!(cfg.aws_region, "us-east-1");
        assert_eq!(cfg.aws_access_key_id, None);
        assert_eq!(cfg.s3_in_bucket, "input-bucket");
        assert_eq!(cfg.s3_out_bucket, "output-bucket");
        assert_eq!(cfg.sqs_req_queue_name, "request-queue");
        assert_eq!(cfg.sqs_wait_time_seconds, 10);
        assert_eq!(cfg.sqs_visibility_timeout_seconds, 60);
        assert_eq!(cfg.max_wait_seconds, 30);
        assert_eq!(cfg.max_file_mb, 8);
        assert_eq!(cfg.max_file_bytes(), 8 * 1024 * 1024);
    }

    #[test]
    fn localstack_endpoint_defaults_credentials_to_test() {
        let cfg = vars(&[(AWS_ENDPOINT_URL, "http://localhost:4566/")]);
        assert_eq!(
            cfg.aws_endpoint_url.as_deref(),
            Some("http://localhost:4566")
        );
        assert_eq!(cfg.aws_access_key_id.as_deref(), Some("test"));
        assert_eq!(cfg.aws_secret_access_key.as_deref(), Some("test"));
    }

    #[test]
    fn bad_values_name_variable_and_value() {
        let err = try_vars(&[("SQS_WAIT_TIME_SECONDS", "ten")]).unwrap_err();
        assert_eq!(err.name, "SQS_WAIT_TIME_SECONDS");
        assert_eq!(err.value, "ten");
        assert!(
            err.to_string().contains("SQS_WAIT_TIME_SECONDS") && err.to_string().contains("ten")
        );

        let err = try_vars(&[("SQS_WAIT_TIME_SECONDS", "25")]).unwrap_err();
        assert!(err.reason.contains("between 0 and 20"), "{err}");

        let err = try_vars(&[("MAX_FILE_MB", "0")]).unwrap_err();
        assert_eq!(err.name, "MAX_FILE_MB");

        let err = try_vars(&[(AWS_ENDPOINT_URL, "localhost:4566")]).unwrap_err();
        assert_eq!(err.name, AWS_ENDPOINT_URL);
    }

    #[test]
    fn blank_counts_as_unset() {
        assert_eq!(vars(&[("MAX_WAIT_SECONDS", "  ")]).max_wait_seconds, 30);
    }
}
