//! The worker's own settings (`WORKER_*`, `SQS_DLQ_URL`), read with the shared
//! [`Vars`] so a bad value stops the process at start with the variable's name. Those the
//! operator injects (concurrency, admin port, drain) are read through
//! [`qwp_pool::contract::WorkerEnv`], the parser of what the operator builds.

use std::time::Duration;

use qwp_jobs::config::{ConfigError, Vars};
use qwp_pool::contract::WorkerEnv;

#[cfg(feature = "face")]
use crate::face::{FaceSettings, GallerySource};

/// `WORKER_MAX_ATTEMPTS`' default: attempts a job gets when the queue has no redrive policy.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Where the worker image puts the face models (hack/cluster/images.sh).
pub const DEFAULT_FACE_MODEL_DIR: &str = "/usr/local/share/qwp/face-models";

/// How long the `sleep` processor pretends to work: fixed, or uniformly random in a range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SleepDuration {
    Fixed(Duration),
    Between(Duration, Duration),
}

impl SleepDuration {
    /// `3`, `0.25` or a range `1-5` (seconds, inclusive).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let seconds = |part: &str| -> Result<Duration, String> {
            let value: f64 = part
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a number of seconds"))?;
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| *d <= Duration::from_secs(12 * 3600))
                .ok_or_else(|| format!("{part:?} must be between 0 and 43200 seconds"))
        };
        match raw.split_once('-') {
            None => Ok(SleepDuration::Fixed(seconds(raw)?)),
            Some((low, high)) => {
                let (low, high) = (seconds(low)?, seconds(high)?);
                if low > high {
                    return Err("the range's lower bound is above its upper bound".into());
                }
                Ok(SleepDuration::Between(low, high))
            }
        }
    }
}

/// Which processor runs a job, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum ProcessorSettings {
    /// Simulated external work (seed 002/004's 3 s payment step).
    Sleep(SleepDuration),
    /// Size and SHA-256 of the input.
    Checksum,
    /// A program run on the input file; `{input}` in the arguments is replaced by the
    /// file's path, otherwise the path is appended as the last argument.
    Command {
        argv: Vec<String>,
        timeout: Duration,
        /// The child's whole environment (besides `QWP_JOB_ID`): see [`command_env`].
        env: Vec<(String, String)>,
    },
    /// The person in a photo, named from a gallery of reference photos (docs/worker.md).
    #[cfg(feature = "face")]
    Face(FaceSettings),
}

/// Variables a `command` child gets from the worker's environment when they are set. Nothing
/// else is inherited: the worker's AWS keys must not reach a tool that parses uploads.
pub const COMMAND_BASE_ENV: [&str; 4] = ["PATH", "HOME", "TMPDIR", "LANG"];
/// `PATH` of a child when the worker has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The `command` child's environment: [`COMMAND_BASE_ENV`] plus the names listed in
/// `WORKER_COMMAND_ENV` (comma- or space-separated), each with the worker's value when set.
/// `AWS_*` names are refused: credentials never reach a job.
pub fn command_env(vars: &Vars) -> Result<Vec<(String, String)>, ConfigError> {
    let listed = vars.optional("WORKER_COMMAND_ENV").unwrap_or_default();
    let mut names: Vec<&str> = COMMAND_BASE_ENV.to_vec();
    for name in listed.split([',', ' ']).filter(|n| !n.is_empty()) {
        let refuse = |reason: &str| ConfigError {
            name: "WORKER_COMMAND_ENV".into(),
            value: listed.clone(),
            reason: format!("{name:?} {reason}"),
        };
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(refuse("is not a variable name"));
        }
        if name.to_ascii_uppercase().starts_with("AWS_") {
            return Err(refuse("is an AWS variable; credentials never reach a job"));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut env: Vec<(String, String)> = names
        .iter()
        .filter_map(|name| vars.optional(name).map(|value| (name.to_string(), value)))
        .collect();
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    Ok(env)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Jobs in processing at once in this process (`WORKER_CONCURRENCY`).
    pub concurrency: usize,
    pub processor: ProcessorSettings,
    /// After SIGTERM, how long in-flight jobs may run before they are handed back.
    pub drain: Duration,
    pub admin_port: u16,
    /// Where poison pills go; unset means they are deleted.
    pub dlq_url: Option<String>,
    /// First delay before a job that failed transiently is retried; doubles per receive.
    pub retry_base: Duration,
    /// Cap of that delay.
    pub retry_max: Duration,
    /// Attempts a job gets when the queue has no redrive policy (`WORKER_MAX_ATTEMPTS`); with
    /// one, its `maxReceiveCount` decides. The last attempt that fails stores a `failed` result.
    pub max_attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        let injected = WorkerEnv::default();
        Settings {
            concurrency: injected.concurrency as usize,
            processor: ProcessorSettings::Checksum,
            drain: injected.drain(),
            admin_port: injected.admin_port,
            dlq_url: None,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let injected = WorkerEnv::from_vars(vars)?;
        let processor = match vars.string("WORKER_PROCESSOR", "checksum").trim() {
            "sleep" => ProcessorSettings::Sleep(vars.parse_with(
                "WORKER_SLEEP_SECONDS",
                SleepDuration::Fixed(Duration::from_secs(3)),
                SleepDuration::parse,
            )?),
            "checksum" => ProcessorSettings::Checksum,
            "command" => {
                let argv = vars.parse_with("WORKER_COMMAND", Vec::new(), |raw| {
                    shell_words::split(raw).map_err(|e| format!("cannot split into words: {e}"))
                })?;
                if argv.is_empty() {
                    return Err(ConfigError {
                        name: "WORKER_COMMAND".into(),
                        value: String::new(),
                        reason: "must name a program when WORKER_PROCESSOR=command".into(),
                    });
                }
                let timeout = vars.parse_in("WORKER_COMMAND_TIMEOUT_SECONDS", 60, 1..=43_200)?;
                ProcessorSettings::Command {
                    argv,
                    timeout: Duration::from_secs(timeout),
                    env: command_env(vars)?,
                }
            }
            #[cfg(feature = "face")]
            "face" => ProcessorSettings::Face(face_settings(vars)?),
            #[cfg(not(feature = "face"))]
            "face" => {
                return Err(ConfigError {
                    name: "WORKER_PROCESSOR".into(),
                    value: "face".into(),
                    reason: "this worker was built without its `face` feature".into(),
                });
            }
            other => {
                return Err(ConfigError {
                    name: "WORKER_PROCESSOR".into(),
                    value: other.into(),
                    reason: "must be one of sleep, checksum, command, face".into(),
                });
            }
        };
        let retry_base = vars.parse_in("WORKER_RETRY_BASE_SECONDS", 5, 0..=43_200)?;
        let retry_max = vars.parse_in("WORKER_RETRY_MAX_SECONDS", 300, 0..=43_200)?;
        if retry_base > retry_max {
            return Err(ConfigError {
                name: "WORKER_RETRY_BASE_SECONDS".into(),
                value: retry_base.to_string(),
                reason: format!("must not exceed WORKER_RETRY_MAX_SECONDS ({retry_max})"),
            });
        }
        Ok(Settings {
            concurrency: injected.concurrency as usize,
            processor,
            drain: injected.drain(),
            admin_port: injected.admin_port,
            dlq_url: vars.optional("SQS_DLQ_URL"),
            retry_base: Duration::from_secs(retry_base),
            retry_max: Duration::from_secs(retry_max),
            max_attempts: vars.parse_in("WORKER_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, 1..=1000)?,
        })
    }

    /// How long a message stays invisible before the `receive_count`-th retry:
    /// `retry_base * 2^(receive_count - 1)`, capped at `retry_max`.
    pub fn retry_delay(&self, receive_count: u32) -> Duration {
        let doublings = receive_count.saturating_sub(1).min(30);
        self.retry_base
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max)
    }
}

#[cfg(feature = "face")]
fn face_settings(vars: &Vars) -> Result<FaceSettings, ConfigError> {
    let defaults = qwp_face::Limits::default();
    Ok(FaceSettings {
        model_dir: vars
            .string("WORKER_FACE_MODEL_DIR", DEFAULT_FACE_MODEL_DIR)
            .into(),
        gallery: vars.parse_with(
            "WORKER_FACE_GALLERY",
            GallerySource::S3 {
                bucket: None,
                prefix: "gallery/".into(),
            },
            GallerySource::parse,
        )?,
        threshold: vars.parse_with(
            "WORKER_FACE_THRESHOLD",
            qwp_face::gallery::DEFAULT_THRESHOLD,
            |raw| {
                raw.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (-1.0..=1.0).contains(t))
                    .ok_or_else(|| "must be a cosine similarity between -1 and 1".to_string())
            },
        )?,
        refresh: Duration::from_secs(vars.parse_in(
            "WORKER_FACE_GALLERY_REFRESH_SECONDS",
            30,
            0..=86_400,
        )?),
        limits: qwp_face::Limits {
            max_side: vars.parse_in("WORKER_FACE_MAX_SIDE", defaults.max_side, 64..=65_535)?,
            max_pixels: vars.parse_in(
                "WORKER_FACE_MAX_PIXELS",
                defaults.max_pixels,
                4096..=400_000_000,
            )?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwp_pool::contract::{
        DEFAULT_ADMIN_PORT, DEFAULT_DRAIN_SECONDS, WORKER_ADMIN_PORT, WORKER_CONCURRENCY,
        WORKER_DRAIN_SECONDS,
    };

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(&Vars::from_pairs(pairs))
    }

    #[test]
    fn defaults_match_the_conventions() {
        let s = settings(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.concurrency, 1);
        assert_eq!(s.processor, ProcessorSettings::Checksum);
        assert_eq!(s.drain, Duration::from_secs(25));
        assert_eq!(s.admin_port, 9090);
        assert_eq!(s.drain.as_secs(), u64::from(DEFAULT_DRAIN_SECONDS));
        assert_eq!(s.admin_port, DEFAULT_ADMIN_PORT);
    }

    #[test]
    fn sleep_takes_a_fixed_value_or_a_range() {
        let s = settings(&[
            ("WORKER_PROCESSOR", "sleep"),
            ("WORKER_SLEEP_SECONDS", "1-5"),
        ]);
        assert_eq!(
            s.unwrap().processor,
            ProcessorSettings::Sleep(SleepDuration::Between(
                Duration::from_secs(1),
                Duration::from_secs(5)
            ))
        );
        let s = settings(&[
            ("WORKER_PROCESSOR", "sleep"),
            ("WORKER_SLEEP_SECONDS", "0.25"),
        ]);
        assert_eq!(
            s.unwrap().processor,
            ProcessorSettings::Sleep(SleepDuration::Fixed(Duration::from_millis(250)))
        );
        for bad in ["abc", "5-1", "-3", "1-", "1e9", "NaN"] {
            let err = settings(&[("WORKER_PROCESSOR", "sleep"), ("WORKER_SLEEP_SECONDS", bad)])
                .unwrap_err();
            assert_eq!(err.name, "WORKER_SLEEP_SECONDS", "{bad}: {err}");
        }
    }

    #[test]
    fn command_is_split_like_a_shell_and_required() {
        let s = settings(&[
            ("WORKER_PROCESSOR", "command"),
            ("WORKER_COMMAND", "python3 'my script.py' --in {input}"),
            ("WORKER_COMMAND_TIMEOUT_SECONDS", "7"),
        ])
        .unwrap();
        assert_eq!(
            s.processor,
            ProcessorSettings::Command {
                argv: vec![
                    "python3".into(),
                    "my script.py".into(),
                    "--in".into(),
                    "{input}".into()
                ],
                timeout: Duration::from_secs(7),
                env: vec![("PATH".into(), DEFAULT_PATH.into())],
            }
        );
        let err = settings(&[("WORKER_PROCESSOR", "command")]).unwrap_err();
        assert_eq!(err.name, "WORKER_COMMAND");
        let err =
            settings(&[("WORKER_PROCESSOR", "command"), ("WORKER_COMMAND", "a 'b")]).unwrap_err();
        assert_eq!(err.name, "WORKER_COMMAND");
    }

    #[cfg(not(feature = "face"))]
    #[test]
    fn face_is_refused_by_a_build_without_it() {
        let err = settings(&[("WORKER_PROCESSOR", "face")]).unwrap_err();
        assert_eq!(err.name, "WORKER_PROCESSOR");
        assert!(err.reason.contains("`face` feature"), "{}", err.reason);
    }

    #[cfg(feature = "face")]
    #[test]
    fn face_has_defaults_and_takes_a_gallery() {
        let s = settings(&[("WORKER_PROCESSOR", "face")]).unwrap();
        let ProcessorSettings::Face(face) = s.processor else {
            panic!("{:?}", s.processor)
        };
        assert_eq!(face.model_dir, std::path::Path::new(DEFAULT_FACE_MODEL_DIR));
        assert_eq!(
            face.gallery,
            GallerySource::S3 {
                bucket: None,
                prefix: "gallery/".into()
            }
        );
        assert_eq!(face.refresh, Duration::from_secs(30));
        let s = settings(&[
            ("WORKER_PROCESSOR", "face"),
            ("WORKER_FACE_GALLERY", "/srv/people"),
            ("WORKER_FACE_THRESHOLD", "0.5"),
        ])
        .unwrap();
        let ProcessorSettings::Face(face) = s.processor else {
            panic!()
        };
        assert_eq!(face.gallery, GallerySource::Dir("/srv/people".into()));
        assert_eq!(face.threshold, 0.5);
        for (name, value) in [
            ("WORKER_FACE_THRESHOLD", "2"),
            ("WORKER_FACE_MAX_SIDE", "10"),
            ("WORKER_FACE_GALLERY_REFRESH_SECONDS", "soon"),
        ] {
            let err = settings(&[("WORKER_PROCESSOR", "face"), (name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("WORKER_PROCESSOR", "gpu"),
            (WORKER_CONCURRENCY, "0"),
            (WORKER_CONCURRENCY, "many"),
            (WORKER_DRAIN_SECONDS, "-1"),
            (WORKER_ADMIN_PORT, "70000"),
            ("WORKER_RETRY_BASE_SECONDS", "600"),
            ("WORKER_MAX_ATTEMPTS", "0"),
        ] {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }

    #[test]
    fn command_env_is_the_allowlist_with_the_workers_values() {
        let vars = Vars::from_pairs(&[
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/home/worker"),
            ("LANG", "C.UTF-8"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("MODEL_DIR", "/models"),
            ("UNLISTED", "x"),
            ("WORKER_COMMAND_ENV", "MODEL_DIR, NOT_SET"),
        ]);
        assert_eq!(
            command_env(&vars).unwrap(),
            [
                ("PATH", "/opt/bin:/usr/bin"),
                ("HOME", "/home/worker"),
                ("LANG", "C.UTF-8"),
                ("MODEL_DIR", "/models"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        for refused in ["AWS_SECRET_ACCESS_KEY", "aws_session_token", "1X", "A-B"] {
            let err =
                command_env(&Vars::from_pairs(&[("WORKER_COMMAND_ENV", refused)])).unwrap_err();
            assert_eq!(err.name, "WORKER_COMMAND_ENV", "{refused}: {err}");
        }
    }

    #[test]
    fn retry_delay_doubles_per_receive_and_is_capped() {
        let s = Settings {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(20),
            ..Settings::default()
        };
        let delays: Vec<u64> = (0..7).map(|n| s.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 2, 4, 8, 16, 20, 20]);
        assert_eq!(s.retry_delay(u32::MAX), Duration::from_secs(20));
    }
}
