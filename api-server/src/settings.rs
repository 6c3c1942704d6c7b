//! The API server's settings: the shared job [`Config`] (seed 001 names) plus the
//! server's own knobs, all from environment variables via [`Vars`].

use std::time::Duration;

use qwp_jobs::config::{Config, ConfigError, Vars};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config: Config,
    /// `PORT`: where the server listens (all interfaces).
    pub port: u16,
    /// `RESULT_POLL_CONCURRENCY`: at most this many S3 result polls run at once,
    /// however many clients are waiting.
    pub result_poll_concurrency: usize,
    /// `RESULT_POLL_INITIAL_MS` / `RESULT_POLL_MAX_MS`: the waiter's backoff, doubling
    /// from the first to the second.
    pub result_poll_initial: Duration,
    pub result_poll_max: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let initial_ms = vars.parse_in("RESULT_POLL_INITIAL_MS", 50u64, 1..=60_000)?;
        let max_ms = vars.parse_in("RESULT_POLL_MAX_MS", 1_000u64, initial_ms..=60_000)?;
        Ok(Settings {
            config: Config::from_vars(vars)?,
            port: vars.parse("PORT", 8000u16)?,
            result_poll_concurrency: vars.parse_in(
                "RESULT_POLL_CONCURRENCY",
                64usize,
                1..=10_000,
            )?,
            result_poll_initial: Duration::from_millis(initial_ms),
            result_poll_max: Duration::from_millis(max_ms),
        })
    }

    /// Settings for a given job configuration with every server default; used by tests
    /// and embedders that build [`Config`] themselves.
    pub fn with_config(config: Config) -> Self {
        let defaults = Self::from_vars(&Vars::new(|_| None)).expect("defaults are valid");
        Settings { config, ..defaults }
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.config.max_wait_seconds)
    }
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
        assert_eq!(s.result_poll_concurrency, 64);
        assert_eq!(s.result_poll_initial, Duration::from_millis(50));
        assert_eq!(s.result_poll_max, Duration::from_secs(1));
        assert_eq!(s.max_wait(), Duration::from_secs(30));
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
    }
}
