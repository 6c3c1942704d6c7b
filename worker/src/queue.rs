//! The request queue as the worker uses it: receive, acknowledge, hide for a while,
//! hand back, and park poison pills in the DLQ.

use std::time::Duration;

use std::sync::Arc;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use qwp_runtime::aws_error::{ErrorClass, classify, describe};

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
    /// 1 on first delivery; drives the retry backoff.
    pub receive_count: u32,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueueError {
    pub class: ErrorClass,
    pub message: String,
}

impl<E> From<SdkError<E, HttpResponse>> for QueueError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    fn from(err: SdkError<E, HttpResponse>) -> Self {
        QueueError {
            class: classify(&err),
            message: describe(&err),
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
            .send()
            .await?;
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
                Some(Received {
                    message_id: m.message_id.unwrap_or_default(),
                    // Without a receipt handle a message cannot be settled; SQS always sends one.
                    receipt_handle: m.receipt_handle?,
                    body: m.body,
                    receive_count,
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
