//! The work done on one job's input. A processor either produces the result value,
//! fails the job for good (the input is at fault), or reports a transient problem
//! so the message goes back to the queue.

use std::process::Stdio;
#[cfg(feature = "face")]
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use qwp_jobs::JobMessage;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[cfg(feature = "face")]
use crate::face::FaceRecognizer;
use crate::settings::{ProcessorSettings, SleepDuration};

/// Bigger outputs are refused rather than stored in a result document.
pub const MAX_COMMAND_OUTPUT_BYTES: usize = 1024 * 1024;
/// How much of a failing command's stderr goes into the failed result.
const STDERR_EXCERPT_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    /// The job cannot succeed with this input: a failed result is stored.
    #[error("{0}")]
    Failed(String),
    /// Worth another attempt later (timeout, cannot start the program): the message
    /// returns to the queue with backoff and ends in the DLQ if it keeps failing.
    #[error("{0}")]
    Transient(String),
}

#[derive(Clone)]
pub struct Processor {
    settings: ProcessorSettings,
    /// The loaded models and gallery of the `face` processor ([`Processor::with_face`]).
    #[cfg(feature = "face")]
    face: Option<Arc<FaceRecognizer>>,
}

impl Processor {
    pub fn new(settings: ProcessorSettings) -> Self {
        Processor {
            settings,
            #[cfg(feature = "face")]
            face: None,
        }
    }

    #[cfg(feature = "face")]
    pub fn with_face(mut self, face: Option<Arc<FaceRecognizer>>) -> Self {
        self.face = face;
        self
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.settings {
            ProcessorSettings::Sleep(_) => "sleep",
            ProcessorSettings::Checksum => "checksum",
            ProcessorSettings::Command { .. } => "command",
            #[cfg(feature = "face")]
            ProcessorSettings::Face(_) => "face",
        }
    }

    pub async fn process(&self, job: &JobMessage, input: &[u8]) -> Result<Value, ProcessError> {
        match &self.settings {
            ProcessorSettings::Sleep(duration) => Ok(sleep(*duration).await),
            ProcessorSettings::Checksum => Ok(checksum(input)),
            ProcessorSettings::Command { argv, timeout, env } => {
                run_command(argv, *timeout, env, job, input).await
            }
            #[cfg(feature = "face")]
            ProcessorSettings::Face(_) => match &self.face {
                Some(face) => face.recognise(input).await,
                None => Err(ProcessError::Transient(
                    "the face processor was not started (FaceRecognizer::start)".into(),
                )),
            },
        }
    }
}

async fn sleep(duration: SleepDuration) -> Value {
    let duration = match duration {
        SleepDuration::Fixed(d) => d,
        SleepDuration::Between(low, high) => rand::rng().random_range(low..=high),
    };
    tokio::time::sleep(duration).await;
    json!({ "slept_ms": duration.as_millis() as u64 })
}

pub fn checksum(input: &[u8]) -> Value {
    json!({
        "bytes": input.len(),
        "sha256": format!("{:x}", Sha256::digest(input)),
    })
}

/// Runs the program on a private copy of the input, named like the upload (the
/// filename is validated by [`qwp_jobs::Filename`], so it cannot escape the directory),
/// with only `env` and `QWP_JOB_ID` in its environment and bounded reads of its output.
/// Dropping this future (timeout, shutdown abort) kills the child process.
async fn run_command(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    job: &JobMessage,
    input: &[u8],
) -> Result<Value, ProcessError> {
    let dir = tempfile::Builder::new()
        .prefix("qwp-job-")
        .tempdir()
        .map_err(|e| {
            ProcessError::Transient(format!("cannot create a temporary directory: {e}"))
        })?;
    let path = dir.path().join(job.filename.as_str());
    tokio::fs::write(&path, input)
        .await
        .map_err(|e| ProcessError::Transient(format!("cannot write the input file: {e}")))?;
    let path = path.to_string_lossy().into_owned();

    let (program, args) = argv.split_first().expect("settings require a program");
    let mut command = tokio::process::Command::new(program);
    if args.iter().any(|a| a.contains("{input}")) {
        command.args(args.iter().map(|a| a.replace("{input}", &path)));
    } else {
        command.args(args).arg(&path);
    }
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("QWP_JOB_ID", job.job_id.to_string())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let mut child = command
        .spawn()
        .map_err(|e| ProcessError::Transient(format!("cannot start {program:?}: {e}")))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (stdout, stderr, status) = tokio::join!(
            read_bounded(stdout, MAX_COMMAND_OUTPUT_BYTES, Keep::Head),
            read_bounded(stderr, STDERR_EXCERPT_BYTES, Keep::Tail),
            child.wait()
        );
        Ok::<_, std::io::Error>((stdout?, stderr?, status?))
    };
    let (stdout, stderr, status) = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(ProcessError::Transient(format!(
                "waiting for {program:?}: {e}"
            )));
        }
        Err(_) => {
            return Err(ProcessError::Transient(format!(
                "{program:?} timed out after {} s",
                timeout.as_secs_f64()
            )));
        }
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr.kept);
        let excerpt = tail(stderr.trim(), STDERR_EXCERPT_BYTES);
        return Err(ProcessError::Failed(format!(
            "{program:?} {}{}{}",
            describe_status(status),
            if excerpt.is_empty() { "" } else { ": " },
            excerpt
        )));
    }
    if stdout.total > MAX_COMMAND_OUTPUT_BYTES {
        return Err(ProcessError::Failed(format!(
            "{program:?} wrote {} bytes to stdout; at most {MAX_COMMAND_OUTPUT_BYTES} are kept",
            stdout.total
        )));
    }
    Ok(Value::String(
        String::from_utf8_lossy(&stdout.kept).trim().to_string(),
    ))
}

/// Which part of a stream [`read_bounded`] keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Head,
    Tail,
}

struct Captured {
    /// At most the bound: the first or the last bytes.
    kept: Vec<u8>,
    /// Everything the child wrote.
    total: usize,
}

/// Reads a pipe to its end keeping at most `bound` bytes, so a noisy tool cannot exhaust
/// the worker's memory; the rest is read and dropped so the child never blocks on a full pipe.
async fn read_bounded(
    pipe: Option<impl AsyncRead + Unpin>,
    bound: usize,
    keep: Keep,
) -> std::io::Result<Captured> {
    let mut captured = Captured {
        kept: Vec::new(),
        total: 0,
    };
    let Some(mut pipe) = pipe else {
        return Ok(captured);
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok(captured);
        }
        captured.total += n;
        match keep {
            Keep::Head => {
                let room = bound.saturating_sub(captured.kept.len());
                captured.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Keep::Tail => {
                captured.kept.extend_from_slice(&chunk[..n]);
                let excess = captured.kept.len().saturating_sub(bound);
                captured.kept.drain(..excess);
            }
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwp_jobs::{Filename, JobId};

    fn job(name: &str) -> JobMessage {
        JobMessage::new(JobId::new(), Filename::parse(name).unwrap())
    }

    fn command(argv: &[&str], timeout_ms: u64) -> Processor {
        command_with_env(argv, timeout_ms, &[("PATH", "/usr/bin:/bin")])
    }

    fn command_with_env(argv: &[&str], timeout_ms: u64, env: &[(&str, &str)]) -> Processor {
        Processor::new(ProcessorSettings::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[tokio::test]
    async fn checksum_is_size_and_sha256() {
        let p = Processor::new(ProcessorSettings::Checksum);
        let value = p.process(&job("a.txt"), b"abc").await.unwrap();
        assert_eq!(
            value,
            json!({"bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"})
        );
    }

    #[tokio::test]
    async fn sleep_reports_a_duration_inside_the_range() {
        let p = Processor::new(ProcessorSettings::Sleep(SleepDuration::Between(
            Duration::from_millis(5),
            Duration::from_millis(20),
        )));
        let value = p.process(&job("a.txt"), b"").await.unwrap();
        let ms = value["slept_ms"].as_u64().unwrap();
        assert!((5..=20).contains(&ms), "{ms}");
    }

    #[tokio::test]
    async fn command_stdout_is_the_result_and_the_input_path_is_appended() {
        let value = command(&["cat"], 10_000)
            .process(&job("face_1.jpg"), b"  hello world \n")
            .await
            .unwrap();
        assert_eq!(value, json!("hello world"));
    }

    #[tokio::test]
    async fn command_input_placeholder_keeps_the_upload_name() {
        let value = command(&["sh", "-c", "basename \"$0\"", "{input}"], 10_000)
            .process(&job("my face.jpg"), b"x")
            .await
            .unwrap();
        assert_eq!(value, json!("my face.jpg"));
    }

    #[tokio::test]
    async fn command_non_zero_exit_fails_the_job_with_stderr() {
        let err = command(
            &["sh", "-c", "echo no face found >&2; exit 3", "{input}"],
            10_000,
        )
        .process(&job("a.jpg"), b"x")
        .await
        .unwrap_err();
        match err {
            ProcessError::Failed(msg) => {
                assert!(msg.contains("exited with status 3"), "{msg}");
                assert!(msg.contains("no face found"), "{msg}");
            }
            other => panic!("expected a failed job, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn command_timeout_is_transient_and_kills_the_child() {
        let pid_file = tempfile::NamedTempFile::new().unwrap();
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.path().display());
        let err = command(&["sh", "-c", &script, "{input}"], 300)
            .process(&job("a.jpg"), b"x")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProcessError::Transient(m) if m.contains("timed out")),
            "{err:?}"
        );
        let pid = std::fs::read_to_string(pid_file.path()).unwrap();
        // kill_on_drop sends SIGKILL; give the kernel a moment to reap, then the pid is gone.
        let alive = || std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
        for _ in 0..50 {
            if !alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        // A zombie (state Z) is dead too; tokio reaps it in the background.
        assert!(
            !alive() || status.contains(") Z"),
            "child still running: {status}"
        );
    }

    #[tokio::test]
    async fn missing_program_is_transient() {
        let err = command(&["/nonexistent/qwp-recognizer"], 1000)
            .process(&job("a.jpg"), b"x")
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Transient(m) if m.contains("cannot start")));
    }

    #[tokio::test]
    async fn command_sees_only_its_allowlisted_environment() {
        // The test process has its own environment (CARGO_*, maybe AWS_*): none of it leaks.
        let job = job("a.jpg");
        let value = command_with_env(
            // `-u {input}` places the input path where env ignores it (unsets no such variable).
            &["/usr/bin/env", "-0", "-u", "{input}"],
            10_000,
            &[("PATH", "/usr/bin:/bin"), ("MODEL_DIR", "/models")],
        )
        .process(&job, b"x")
        .await
        .unwrap();
        let output = value.as_str().unwrap();
        let mut seen: Vec<&str> = output.split('\0').filter(|v| !v.is_empty()).collect();
        seen.sort();
        let job_id = format!("QWP_JOB_ID={}", job.job_id);
        assert_eq!(
            seen,
            ["MODEL_DIR=/models", "PATH=/usr/bin:/bin", job_id.as_str()]
        );
    }

    #[tokio::test]
    async fn a_flood_on_stdout_is_read_with_a_bound_and_fails_the_job() {
        // 8 MiB on stdout, 1 MiB of it kept at most; the child is never blocked on the pipe.
        let err = command(
            &[
                "sh",
                "-c",
                "head -c 8388608 /dev/zero; echo tail-of-stderr >&2",
                "{input}",
            ],
            30_000,
        )
        .process(&job("a.jpg"), b"x")
        .await
        .unwrap_err();
        assert_eq!(
            err,
            ProcessError::Failed(format!(
                "\"sh\" wrote 8388608 bytes to stdout; at most {MAX_COMMAND_OUTPUT_BYTES} are kept"
            ))
        );
    }

    #[tokio::test]
    async fn a_flood_on_stderr_keeps_only_its_tail() {
        let err = command(
            &[
                "sh",
                "-c",
                "head -c 4000000 /dev/zero | tr '\\0' a >&2; echo END >&2; exit 1",
                "{input}",
            ],
            30_000,
        )
        .process(&job("a.jpg"), b"x")
        .await
        .unwrap_err();
        let ProcessError::Failed(message) = err else {
            panic!("expected a failed job, got {err:?}");
        };
        assert!(message.ends_with("aaaaEND"), "{}", tail(&message, 40));
        assert!(
            message.len() < STDERR_EXCERPT_BYTES + 100,
            "{} bytes",
            message.len()
        );
    }

    #[test]
    fn tail_cuts_at_a_character_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
