//! Completion hints (`qwp_jobs::hint`): once a job's result is stored, the worker tells
//! the API server replica that accepted it, so that replica's waiting request reads the
//! result now instead of at its next poll. Best effort by design: a short timeout, no
//! retry, no redirect, and sent from its own task so the next job never waits for it. A
//! hint that is lost costs the client one poll interval; the API server never trusts it
//! (it reads the result from S3).

use std::sync::Arc;
use std::time::Duration;

use qwp_jobs::JobId;
use qwp_jobs::hint::{result_hint_url, valid_reply_to};

use crate::metrics::Metrics;
use crate::queue::Received;

/// A hint that takes longer than this is not worth sending: the API server's own poll
/// would have found the result by then.
pub const HINT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct ResultHints {
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl ResultHints {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(HINT_TIMEOUT)
            .connect_timeout(HINT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // The internal address is a pod IP or 127.0.0.1: never through a proxy.
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        ResultHints { client, metrics }
    }

    /// Called once per result this worker stored (`done` or `failed`), right after the
    /// write succeeded. Not called when the conditional write found a result already there
    /// (another attempt of the same message stored it and sent its own hint) nor for a
    /// redelivery that finds its result: the writer is the one that hints, once.
    pub fn result_stored(&self, msg: &Received, job_id: JobId) {
        self.send(msg.reply_to.as_deref(), job_id);
    }

    /// Sends the hint in the background; `reply_to` is the message's attribute, if any.
    pub fn send(&self, reply_to: Option<&str>, job_id: JobId) {
        let Some(reply_to) = reply_to else {
            self.metrics.result_hint("no_address");
            return;
        };
        let Some(address) = valid_reply_to(reply_to) else {
            tracing::warn!(%job_id, reply_to, "ignoring a reply address that is not host:port");
            self.metrics.result_hint("bad_address");
            return;
        };
        let url = result_hint_url(address, &job_id);
        let hints = self.clone();
        tokio::spawn(async move {
            let outcome = match hints.client.post(&url).send().await {
                Ok(response) if response.status().is_success() => "sent",
                Ok(response) => {
                    tracing::debug!(%job_id, status = %response.status(), "completion hint refused");
                    "refused"
                }
                Err(err) => {
                    tracing::debug!(%job_id, error = %err, "completion hint not delivered");
                    "failed"
                }
            };
            hints.metrics.result_hint(outcome);
        });
    }
}
