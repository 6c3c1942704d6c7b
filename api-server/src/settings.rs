//! The API server's settings: the shared job [`Config`] (seed 001 names) plus the
//! server's own knobs, all from environment variables via [`Vars`].
//! docs/api-server.md has the table, and the arithmetic that ties the memory knobs to the
//! chart's memory limit.

use std::time::Duration;

use qwp_jobs::config::{Config, ConfigError, Vars};
use qwp_jobs::hint::{ADVERTISE_HOST_ENV, DEFAULT_INTERNAL_PORT, INTERNAL_PORT_ENV};
use qwp_pool::contract::OPERATOR_WAKE_ADDRESS_ENV;

use crate::auth::Tokens;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config: Config,
    /// `PORT`: the public API (all interfaces).
    pub port: u16,
    /// `ADMIN_PORT`: `/readyz`, `/metrics` and `/health`, never behind the public Service.
    pub admin_port: u16,
    /// `RESULT_POLL_CONCURRENCY`: at most this many S3 result polls run at once,
    /// however many clients are waiting.
    pub result_poll_concurrency: usize,
    /// `RESULT_POLL_INITIAL_MS` / `RESULT_POLL_MAX_MS`: the waiter's backoff, doubling
    /// from the first to the second.
    pub result_poll_initial: Duration,
    pub result_poll_max: Duration,
    /// `UPLOAD_MEMORY_MB`: upload bodies held in memory at once, all requests together.
    pub upload_memory_bytes: u64,
    /// `UPLOAD_ADMISSION_WAIT_MS`: how long an upload waits for room in that budget
    /// before it is answered 503.
    pub upload_admission_wait: Duration,
    /// `MAX_CONNECTIONS`: open client connections on the public port.
    pub max_connections: usize,
    /// `HEADER_TIMEOUT_SECONDS`: a request's headers (and an idle keep-alive connection's
    /// next request) must arrive within this; otherwise the connection is closed.
    pub header_timeout: Duration,
    /// `BODY_TIMEOUT_SECONDS`: an upload's body must arrive within this; else 408.
    pub body_timeout: Duration,
    /// `REQUEST_TIMEOUT_SECONDS`: upper bound of any request, headers to answer.
    pub request_timeout: Duration,
    /// `STORE_TIMEOUT_SECONDS`: each S3 or SQS call on the submission path, retries
    /// included.
    pub store_timeout: Duration,
    /// `SHUTDOWN_TIMEOUT_SECONDS`: after SIGTERM, requests in flight get this long.
    pub shutdown_timeout: Duration,
    /// `IDEMPOTENCY_TTL_HOURS`: a committed key is honoured this long after it was claimed.
    pub idempotency_ttl: Duration,
    /// `IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS`: a key still pending this long after it was
    /// claimed belongs to a request that died; the next request with it takes it over.
    pub idempotency_claim_timeout: Duration,
    /// `READINESS_CHECK_SECONDS`: how long a dependency check answers readiness probes
    /// before the next probe checks again.
    pub readiness_check_interval: Duration,
    /// `API_TOKENS`: bearer tokens; empty means the API is unauthenticated.
    pub tokens: Tokens,
    /// `INTERNAL_PORT`: completion hints from workers (0: any free port). Not public.
    pub internal_port: u16,
    /// `POD_IP`: the host advertised to workers for hints (the chart sets it from the
    /// downward API); 127.0.0.1 for local processes.
    pub advertise_host: String,
    /// `RESULT_CACHE_MB`: finished results kept in memory (0 turns the cache off).
    pub result_cache_bytes: u64,
    /// `OPERATOR_WAKE_ADDRESS`: `host:port` of the operator's admin port for wake-up hints
    /// on enqueue, or several comma-separated (the replicas' pod IPs without cluster DNS);
    /// unset turns them off.
    pub operator_wake_address: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let config = Config::from_vars(vars)?;
        let initial_ms = vars.parse_in("RESULT_POLL_INITIAL_MS", 50u64, 1..=60_000)?;
        let max_ms = vars.parse_in("RESULT_POLL_MAX_MS", 1_000u64, initial_ms..=60_000)?;
        // At least one upload of the largest size must fit, with its overhead.
        let upload_memory_mb = vars.parse_in(
            "UPLOAD_MEMORY_MB",
            96u64.max(config.max_file_mb + 1),
            (config.max_file_mb + 1)..=1_048_576,
        )?;
        let store_timeout = vars.parse_in("STORE_TIMEOUT_SECONDS", 10u64, 1..=600)?;
        // A live request finishes claim → store → queue → commit within 3 store calls;
        // a pending key older than this margin can only belong to a dead one.
        let claim_timeout = vars.parse_in(
            "IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS",
            60u64.max(4 * store_timeout),
            (4 * store_timeout)..=86_400,
        )?;
        let port = vars.parse("PORT", 8000u16)?;
        let admin_port = vars.parse("ADMIN_PORT", 9091u16)?;
        let internal_port = vars.parse(INTERNAL_PORT_ENV, DEFAULT_INTERNAL_PORT)?;
        if internal_port != 0 && (internal_port == port || internal_port == admin_port) {
            return Err(ConfigError {
                name: INTERNAL_PORT_ENV.into(),
                value: internal_port.to_string(),
                reason: "must differ from PORT and ADMIN_PORT".into(),
            });
        }
        let advertise_host = vars.string(ADVERTISE_HOST_ENV, "127.0.0.1");
        if admin_port != 0 && admin_port == port {
            return Err(ConfigError {
                name: "ADMIN_PORT".into(),
                value: admin_port.to_string(),
                reason: "must differ from PORT: the admin routes stay off the public port".into(),
            });
        }
        Ok(Settings {
            port,
            admin_port,
            result_poll_concurrency: vars.parse_in(
                "RESULT_POLL_CONCURRENCY",
                64usize,
                1..=10_000,
            )?,
            result_poll_initial: Duration::from_millis(initial_ms),
            result_poll_max: Duration::from_millis(max_ms),
            upload_memory_bytes: upload_memory_mb * 1024 * 1024,
            upload_admission_wait: Duration::from_millis(vars.parse_in(
                "UPLOAD_ADMISSION_WAIT_MS",
                2_000u64,
                0..=60_000,
            )?),
            max_connections: vars.parse_in("MAX_CONNECTIONS", 256usize, 1..=100_000)?,
            header_timeout: seconds(vars.parse_in("HEADER_TIMEOUT_SECONDS", 10u64, 1..=600)?),
            body_timeout: seconds(vars.parse_in("BODY_TIMEOUT_SECONDS", 30u64, 1..=3_600)?),
            request_timeout: seconds(vars.parse_in(
                "REQUEST_TIMEOUT_SECONDS",
                120u64,
                1..=7_200,
            )?),
            store_timeout: seconds(store_timeout),
            shutdown_timeout: seconds(vars.parse_in(
                "SHUTDOWN_TIMEOUT_SECONDS",
                20u64,
                0..=3_600,
            )?),
            idempotency_ttl: seconds(
                3_600 * vars.parse_in("IDEMPOTENCY_TTL_HOURS", 24u64, 1..=8_760)?,
            ),
            idempotency_claim_timeout: seconds(claim_timeout),
            readiness_check_interval: seconds(vars.parse_in(
                "READINESS_CHECK_SECONDS",
                10u64,
                0..=3_600,
            )?),
            tokens: Tokens::from_vars(vars)?,
            internal_port,
            advertise_host,
            operator_wake_address: vars.optional(OPERATOR_WAKE_ADDRESS_ENV),
            result_cache_bytes: vars.parse_in("RESULT_CACHE_MB", 64u64, 0..=65_536)? * 1024 * 1024,
            config,
        })
    }

    /// Settings for a given job configuration with every server default; used by tests
    /// and embedders that build [`Config`] themselves.
    pub fn with_config(config: Config) -> Self {
        let defaults = Self::from_vars(&Vars::new(|_| None)).expect("defaults are valid");
        Settings {
            upload_memory_bytes: defaults
                .upload_memory_bytes
                .max((config.max_file_mb + 1) * 1024 * 1024),
            config,
            ..defaults
        }
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.config.max_wait_seconds)
    }
}

fn seconds(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(&Vars::from_pairs(pairs))
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.admin_port, 9091);
        assert_eq!(s.result_poll_concurrency, 64);
        assert_eq!(s.result_poll_initial, Duration::from_millis(50));
        assert_eq!(s.result_poll_max, Duration::from_secs(1));
        assert_eq!(s.max_wait(), Duration::from_secs(30));
        assert_eq!(s.upload_memory_bytes, 96 * 1024 * 1024);
        assert_eq!(s.upload_admission_wait, Duration::from_secs(2));
        assert_eq!(s.max_connections, 256);
        assert_eq!(s.body_timeout, Duration::from_secs(30));
        assert_eq!(s.request_timeout, Duration::from_secs(120));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(s.idempotency_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.idempotency_claim_timeout, Duration::from_secs(60));
        assert!(s.tokens.is_empty());
        assert_eq!(s.internal_port, 9092);
        assert_eq!(s.advertise_host, "127.0.0.1");
        assert_eq!(s.result_cache_bytes, 64 * 1024 * 1024);
        let s = settings(&[("POD_IP", "10.1.2.3"), ("INTERNAL_PORT", "7000")]).unwrap();
        assert_eq!(
            (s.advertise_host.as_str(), s.internal_port),
            ("10.1.2.3", 7000)
        );
        assert_eq!(
            settings(&[("INTERNAL_PORT", "9091")]).unwrap_err().name,
            "INTERNAL_PORT"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(settings(&[("PORT", "http")]).unwrap_err().name, "PORT");
        assert_eq!(settings(&[("PORT", "70000")]).unwrap_err().name, "PORT");
        let err = settings(&[
            ("RESULT_POLL_INITIAL_MS", "500"),
            ("RESULT_POLL_MAX_MS", "100"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "RESULT_POLL_MAX_MS");
        assert_eq!(
            settings(&[("MAX_FILE_MB", "0")]).unwrap_err().name,
            "MAX_FILE_MB"
        );
        assert_eq!(
            settings(&[("PORT", "8000"), ("ADMIN_PORT", "8000")])
                .unwrap_err()
                .name,
            "ADMIN_PORT"
        );
    }

    #[test]
    fn the_budget_holds_one_largest_upload_and_claims_outlive_store_calls() {
        let err = settings(&[("MAX_FILE_MB", "64"), ("UPLOAD_MEMORY_MB", "64")]).unwrap_err();
        assert_eq!(err.name, "UPLOAD_MEMORY_MB");
        let s = settings(&[("MAX_FILE_MB", "100")]).unwrap();
        assert_eq!(s.upload_memory_bytes, 101 * 1024 * 1024);

        let err = settings(&[
            ("STORE_TIMEOUT_SECONDS", "30"),
            ("IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS", "60"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS");
        let s = settings(&[("STORE_TIMEOUT_SECONDS", "30")]).unwrap();
        assert_eq!(s.idempotency_claim_timeout, Duration::from_secs(120));
    }
}
