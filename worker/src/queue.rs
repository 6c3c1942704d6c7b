//! The request queue as the worker uses it: receive, acknowledge, hide for a while,
//! hand back, and park poison pills in the DLQ.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use qwp_jobs::hint::REPLY_TO_ATTRIBUTE;
use qwp_runtime::aws_error::{ErrorClass, classify, code, describe};

/// SQS returns at most 10 messages per receive.
pub const MAX_BATCH: usize = 10;
/// SQS's longest visibility timeout (12 h).
const MAX_VISIBILITY_SECONDS: u64 = 43_200;

/// One received message, with what the worker needs to settle it.
#[derive(Clone, Debug)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Option<String>,
    /// 1 on first delivery; drives the retry backoff and the attempt limit.
    pub receive_count: u32,
    /// When the receive answered: the message is hidden for one visibility timeout from
    /// about then.
    pub received_at: Instant,
    /// The accepting API server's internal address ([`REPLY_TO_ATTRIBUTE`]), for the
    /// completion hint; absent for other producers.
    pub reply_to: Option<String>,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueueError {
    pub class: ErrorClass,
    /// The service's error code (`ReceiptHandleIsInvalid`), or how the call failed.
    pub code: String,
    pub message: String,
}

/// Codes meaning the receipt handle no longer holds the message: its visibility lapsed and
/// it was received again (by this or another worker), or it was deleted.
const RECEIPT_LOST_CODES: &[&str] = &[
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
];

impl QueueError {
    /// The message is no longer ours to extend or delete. AWS also answers an expired handle
    /// with `InvalidParameterValue` naming the receipt handle.
    pub fn receipt_lost(&self) -> bool {
        RECEIPT_LOST_CODES.contains(&self.code.as_str())
            || (self.code == "InvalidParameterValue" && self.message.contains("ReceiptHandle"))
    }
}

impl<E> From<SdkError<E, HttpResponse>> for QueueError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    fn from(err: SdkError<E, HttpResponse>) -> Self {
        QueueError {
            class: classify(&err),
            code: code(&err).to_string(),
            message: describe(&err),
        }
    }
}

/// How many receives the queue allows before its redrive policy moves a message to the
/// dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedrivePolicy {
    /// `maxReceiveCount` of the queue's `RedrivePolicy`.
    DeadLetterAfter(u32),
    /// No redrive policy: the queue would redeliver forever.
    None,
}

impl RedrivePolicy {
    /// Parses the `RedrivePolicy` attribute; SQS writes `maxReceiveCount` as a number or a
    /// string depending on how it was set.
    pub fn parse(attribute: Option<&str>) -> Result<Self, String> {
        let Some(raw) = attribute.filter(|a| !a.trim().is_empty()) else {
            return Ok(RedrivePolicy::None);
        };
        let policy: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| format!("RedrivePolicy {raw:?}: {e}"))?;
        let count = match &policy["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        count
            .and_then(|c| u32::try_from(c).ok())
            .filter(|&c| c >= 1)
            .map(RedrivePolicy::DeadLetterAfter)
            .ok_or_else(|| format!("RedrivePolicy {raw:?} has no valid maxReceiveCount"))
    }
}

/// The queue's redrive policy as last read. Read at start and refreshed in the background
/// (a changed policy is picked up without a restart); a job only looks at the cached value.
#[derive(Clone, Debug, Default)]
pub struct CachedRedrivePolicy(Arc<std::sync::RwLock<Option<RedrivePolicy>>>);

/// How long one read of the policy may take before the worker goes on without it.
const REDRIVE_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl CachedRedrivePolicy {
    /// `None` until a read succeeded.
    pub fn get(&self) -> Option<RedrivePolicy> {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the policy now; a failure keeps the last value (and is logged).
    pub async fn refresh(&self, queue: &Queue) {
        let read = tokio::time::timeout(REDRIVE_READ_TIMEOUT, queue.redrive_policy()).await;
        match read {
            Ok(Ok(policy)) => {
                let previous = self
                    .0
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(policy);
                if previous != Some(policy) {
                    tracing::info!(?policy, "queue redrive policy");
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not read the queue's redrive policy; keeping the last one known")
            }
            Err(_) => {
                tracing::warn!(
                    "reading the queue's redrive policy timed out; keeping the last one known"
                )
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Queue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    wait_time: Duration,
    visibility: Duration,
}

impl Queue {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        url: String,
        wait_time: Duration,
        visibility: Duration,
    ) -> Self {
        Queue {
            sqs,
            url,
            wait_time,
            visibility,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long a received message stays hidden; the heartbeat renews this.
    pub fn visibility(&self) -> Duration {
        self.visibility
    }

    /// Long-polls for up to `max` messages (1..=10). The visibility timeout is set
    /// per receive, so the heartbeat's arithmetic never depends on queue attributes.
    pub async fn receive(&self, max: usize) -> Result<Vec<Received>, QueueError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(self.wait_time.as_secs() as i32)
            .visibility_timeout(self.visibility.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(REPLY_TO_ATTRIBUTE)
            .send()
            .await?;
        let received_at = Instant::now();
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let reply_to = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get(REPLY_TO_ATTRIBUTE))
                    .and_then(|v| v.string_value.clone());
                Some(Received {
                    message_id: m.message_id.unwrap_or_default(),
                    // Without a receipt handle a message cannot be settled; SQS always sends one.
                    receipt_handle: m.receipt_handle?,
                    body: m.body,
                    receive_count,
                    received_at,
                    reply_to,
                })
            })
            .collect())
    }

    /// Acknowledges one message: it is never delivered again. Jobs go through
    /// [`BatchDeleter`]; this is for single settlements.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await?;
        Ok(())
    }

    /// Makes a message visible again after `delay` (0 = at once).
    pub async fn hide_for(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(delay.as_secs().min(MAX_VISIBILITY_SECONDS) as i32)
            .send()
            .await?;
        Ok(())
    }

    /// Hands messages back for another consumer to take at once (visibility 0), in
    /// batches of 10. Returns how many SQS accepted.
    pub async fn release(&self, receipt_handles: &[String]) -> usize {
        let mut released = 0;
        for chunk in receipt_handles.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            match self
                .sqs
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    for failed in &out.failed {
                        tracing::warn!(code = %failed.code, message = ?failed.message, "could not hand a message back");
                    }
                    released += out.successful.len();
                }
                Err(err) => {
                    let err = QueueError::from(err);
                    tracing::warn!(error = %err, "could not hand messages back; they reappear when their visibility expires");
                }
            }
        }
        released
    }

    /// The queue's redrive policy, read from its attributes.
    pub async fn redrive_policy(&self) -> Result<RedrivePolicy, QueueError> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await?;
        let attribute = out
            .attributes
            .as_ref()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy));
        RedrivePolicy::parse(attribute.map(String::as_str)).map_err(|message| QueueError {
            class: ErrorClass::Unexpected,
            code: "InvalidRedrivePolicy".into(),
            message,
        })
    }

    /// Copies a poison pill to the DLQ with the reason attached.
    pub async fn send_to_dlq(
        &self,
        dlq_url: &str,
        body: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        let reason = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(truncate(reason, 1024))
            .build()
            .expect("data type is set");
        self.sqs
            .send_message()
            .queue_url(dlq_url)
            .message_body(body)
            .message_attributes("qwp-poison-reason", reason)
            .send()
            .await?;
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Concurrent `DeleteMessageBatch` calls at most; further acks wait and batch up.
const DELETE_BATCHES_IN_FLIGHT: usize = 4;

type DeleteRequest = (String, oneshot::Sender<Result<(), QueueError>>);

/// Acknowledges messages with `DeleteMessageBatch`: whatever acks are waiting when a
/// batch can go out are sent together (up to 10), with no added delay. A lone ack is
/// sent at once; under load, acks share requests (fewer SQS calls, lower cost).
#[derive(Clone, Debug)]
pub struct BatchDeleter {
    requests: mpsc::UnboundedSender<DeleteRequest>,
}

impl BatchDeleter {
    /// Starts the batching task; it ends when the last clone is dropped.
    pub fn spawn(queue: Queue) -> Self {
        let (requests, mut incoming) = mpsc::unbounded_channel::<DeleteRequest>();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(DELETE_BATCHES_IN_FLIGHT));
            while let Some(first) = incoming.recv().await {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let queue = queue.clone();
                tokio::spawn(async move {
                    queue.delete_batch(batch).await;
                    drop(permit);
                });
            }
        });
        BatchDeleter { requests }
    }

    /// Resolves once SQS confirmed (or refused) the deletion of this message.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let (reply, answer) = oneshot::channel();
        let gone = || QueueError {
            class: ErrorClass::Unexpected,
            code: "BatcherStopped".into(),
            message: "the delete batcher has stopped".into(),
        };
        self.requests
            .send((receipt_handle.to_string(), reply))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Queue {
    async fn delete_batch(&self, batch: Vec<DeleteRequest>) {
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, (handle, _))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let sent = self
            .sqs
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let mut failures: std::collections::HashMap<String, QueueError> = out
                    .failed
                    .into_iter()
                    .map(|f| {
                        let error = QueueError {
                            class: if f.sender_fault {
                                ErrorClass::Unexpected
                            } else {
                                ErrorClass::Transient
                            },
                            code: f.code.clone(),
                            message: format!("{}: {}", f.code, f.message.unwrap_or_default()),
                        };
                        (f.id, error)
                    })
                    .collect();
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    let _ = reply.send(failures.remove(&i.to_string()).map_or(Ok(()), Err));
                }
            }
            Err(err) => {
                let error = QueueError::from(err);
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_reads_max_receive_count_as_number_or_string() {
        let arn = "arn:aws:sqs:us-east-1:000000000000:dlq";
        for raw in [
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":2}}"#),
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"2"}}"#),
        ] {
            assert_eq!(
                RedrivePolicy::parse(Some(&raw)),
                Ok(RedrivePolicy::DeadLetterAfter(2))
            );
        }
        assert_eq!(RedrivePolicy::parse(None), Ok(RedrivePolicy::None));
        assert_eq!(RedrivePolicy::parse(Some("")), Ok(RedrivePolicy::None));
        for bad in [
            "{",
            r#"{"maxReceiveCount":0}"#,
            r#"{"maxReceiveCount":"x"}"#,
        ] {
            assert!(RedrivePolicy::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lost_receipt_is_told_apart_from_other_failures() {
        let err = |code: &str, message: &str| QueueError {
            class: ErrorClass::Unexpected,
            code: code.into(),
            message: message.into(),
        };
        assert!(err("ReceiptHandleIsInvalid", "").receipt_lost());
        assert!(
            err(
                "InvalidParameterValue",
                "Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist"
            )
            .receipt_lost()
        );
        assert!(!err("InvalidParameterValue", "VisibilityTimeout too big").receipt_lost());
        assert!(!err("InternalError", "").receipt_lost());
    }
}
