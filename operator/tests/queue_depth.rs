//! Reading queue depth from the real LocalStack (start it with `make localstack-up`).

use std::time::Duration;

use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_operator::queue::{QueueDepthSource, QueueTarget, SqsQueueDepth, StaticCredentials};
use qwp_pool::decision::QueueDepth;

fn target(stack: &TestStack) -> QueueTarget {
    QueueTarget {
        url: Some(stack.queue_url.clone()),
        name: None,
        region: stack.config.aws_region.clone(),
        endpoint: stack.config.aws_endpoint_url.clone(),
        credentials: Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        }),
        role_arn: None,
    }
}

/// SQS's counters are approximate and settle shortly after a change; read until they match.
async fn settled(source: &SqsQueueDepth, target: &QueueTarget, want: QueueDepth) -> QueueDepth {
    let mut last = QueueDepth::default();
    for _ in 0..50 {
        last = source.read(target).await.expect("LocalStack answers").depth;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn reads_visible_in_flight_and_delayed_counts() {
    let stack = TestStack::new("op-depth", TestStackOptions::default()).await;
    let sqs = &stack.clients.sqs;
    for i in 0..5 {
        sqs.send_message()
            .queue_url(&stack.queue_url)
            .message_body(format!("now-{i}"))
            .send()
            .await
            .unwrap();
    }
    for i in 0..2 {
        sqs.send_message()
            .queue_url(&stack.queue_url)
            .message_body(format!("later-{i}"))
            .delay_seconds(600)
            .send()
            .await
            .unwrap();
    }
    // Receive three: they become in flight for the 30 s visibility timeout.
    let mut received = 0;
    while received < 3 {
        let out = sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(3 - received)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        received += out.messages.unwrap_or_default().len() as i32;
    }

    let source = SqsQueueDepth::new();
    let want = QueueDepth {
        visible: 2,
        in_flight: 3,
        delayed: 2,
    };
    let depth = settled(&source, &target(&stack), want).await;
    assert_eq!(depth, want);

    let reading = source.read(&target(&stack)).await.unwrap();
    assert_eq!(reading.url, stack.queue_url);
    assert_eq!(reading.api_calls, 1, "one GetQueueAttributes per read");
}

#[tokio::test]
async fn resolves_a_queue_name_once_and_reports_a_missing_queue_by_code() {
    let stack = TestStack::new("op-name", TestStackOptions::default()).await;
    let source = SqsQueueDepth::new();
    let mut by_name = target(&stack);
    by_name.url = None;
    by_name.name = Some(stack.config.sqs_req_queue_name.clone());

    let first = source.read(&by_name).await.expect("the queue exists");
    assert_eq!(first.url, stack.queue_url);
    assert_eq!(first.api_calls, 2, "GetQueueUrl, then GetQueueAttributes");
    let second = source.read(&by_name).await.unwrap();
    assert_eq!(second.api_calls, 1, "the URL is cached");

    let mut missing = target(&stack);
    missing.url = Some(format!("{}-gone", stack.queue_url));
    let err = source.read(&missing).await.unwrap_err();
    assert!(
        err.code.contains("NonExistentQueue") || err.code.contains("QueueDoesNotExist"),
        "AWS error code, got {err}"
    );

    let mut unknown_name = by_name.clone();
    unknown_name.name = Some("no-such-queue-qwp".into());
    let err = source.read(&unknown_name).await.unwrap_err();
    assert!(
        err.code.contains("NonExistentQueue") || err.code.contains("QueueDoesNotExist"),
        "AWS error code, got {err}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_not_a_hang() {
    let source = SqsQueueDepth::new();
    let target = QueueTarget {
        url: Some("http://127.0.0.1:9/000000000000/q".into()),
        name: None,
        region: "us-east-1".into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        credentials: Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        }),
        role_arn: None,
    };
    let err = source.read(&target).await.unwrap_err();
    assert_eq!(err.code, "DispatchFailure", "{err}");
}
