//! The completion-hint contract between the API server and the worker.
//!
//! The API server that accepts a job puts its own internal address (`host:port`, the pod IP
//! and [`INTERNAL_PORT_ENV`]) in the job message's [`REPLY_TO_ATTRIBUTE`]. The worker, once
//! the job's result is stored, POSTs to [`result_hint_url`] on that address: best effort, a
//! short timeout, no retry, no redirect. The hint carries no result: it only wakes the
//! requests waiting for that job, which confirm by reading the result from S3, so a lost or
//! forged hint costs at most one read and the S3 poll stays the fallback.

use crate::id::JobId;

/// SQS message attribute (type `String`) holding the accepting replica's `host:port`.
pub const REPLY_TO_ATTRIBUTE: &str = "qwp.reply-to";

/// The API server's internal port (hints only; not in the public Service).
pub const INTERNAL_PORT_ENV: &str = "INTERNAL_PORT";
pub const DEFAULT_INTERNAL_PORT: u16 = 9092;

/// The host the API server advertises in [`REPLY_TO_ATTRIBUTE`]: the pod IP from the
/// downward API in the chart; unset for local processes, which advertise 127.0.0.1.
pub const ADVERTISE_HOST_ENV: &str = "POD_IP";

/// Route of the result hint on the API server's internal port (axum path syntax).
pub const RESULT_HINT_ROUTE: &str = "/internal/v1/results/{job_id}";

/// The URL a worker POSTs to once `job_id`'s result is stored.
pub fn result_hint_url(reply_to: &str, job_id: &JobId) -> String {
    format!(
        "http://{reply_to}{}",
        RESULT_HINT_ROUTE.replace("{job_id}", &job_id.to_string())
    )
}

/// An address from a message attribute is only used if it is a plain `host:port` (no
/// scheme, path, user info or query), so a message cannot point a worker at an arbitrary
/// URL.
pub fn valid_reply_to(raw: &str) -> Option<&str> {
    let raw = raw.trim();
    let (host, port) = raw.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    (host_ok && port_ok).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_url_names_the_job_on_the_reply_address() {
        let id: JobId = "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f".parse().unwrap();
        assert_eq!(
            result_hint_url("10.0.0.7:9092", &id),
            "http://10.0.0.7:9092/internal/v1/results/3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f"
        );
    }

    #[test]
    fn only_plain_host_port_addresses_are_used() {
        for ok in [
            "127.0.0.1:9092",
            "10.1.2.3:1",
            "api-0.qwp:9092",
            "[::1]:9092",
        ] {
            assert_eq!(valid_reply_to(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "http://10.0.0.1:80",
            "evil.example/x:80",
            "user@host:80",
            "host:80?x",
            ":9092",
        ] {
            assert_eq!(valid_reply_to(bad), None, "{bad}");
        }
    }
}
