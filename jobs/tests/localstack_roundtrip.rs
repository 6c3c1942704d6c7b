//! Round-trips a job's input, message and result through the real LocalStack.

use aws_sdk_s3::primitives::ByteStream;
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{Filename, JobId, JobMessage, JobResult};

#[tokio::test]
async fn input_message_and_result_round_trip_through_localstack() {
    let stack = TestStack::new("jobs-rt", TestStackOptions::default()).await;
    let s3 = &stack.clients.s3;
    let sqs = &stack.clients.sqs;

    let message = JobMessage::new(JobId::new(), Filename::sanitize("../holiday photo.jpg"));
    s3.put_object()
        .bucket(&stack.config.s3_in_bucket)
        .key(message.input_key())
        .body(ByteStream::from_static(b"image bytes"))
        .send()
        .await
        .expect("store input");
    sqs.send_message()
        .queue_url(&stack.queue_url)
        .message_body(message.encode())
        .send()
        .await
        .expect("send message");

    let received = sqs
        .receive_message()
        .queue_url(&stack.queue_url)
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1, "exactly the one message we sent");
    let decoded = JobMessage::decode(received[0].body().unwrap()).expect("our own body decodes");
    assert_eq!(decoded, message);
    assert_eq!(
        decoded.input_key(),
        format!("{}_holiday photo.jpg", message.job_id)
    );

    let input = s3
        .get_object()
        .bucket(&stack.config.s3_in_bucket)
        .key(decoded.input_key())
        .send()
        .await
        .expect("fetch input")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&input[..], b"image bytes");

    let result = JobResult::done(decoded.job_id, format!("{} bytes", input.len()));
    s3.put_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(decoded.output_key())
        .body(ByteStream::from(result.to_json_bytes()))
        .send()
        .await
        .expect("store result");
    let stored = s3
        .get_object()
        .bucket(&stack.config.s3_out_bucket)
        .key(message.job_id.to_string())
        .send()
        .await
        .expect("fetch result")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(JobResult::from_json_bytes(&stored).unwrap(), result);
}
