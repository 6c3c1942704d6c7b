//! Jobs put straight on a test's queue (input object first, message second, as the API server
//! does), and the results read back from the output bucket.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use qwp_jobs::result::JobResult;
use qwp_jobs::testing::TestStack;
use qwp_jobs::{Filename, JobId, JobMessage};

/// Queues `count` jobs named `job-<i>.txt` (input first, message second); returns their ids.
pub async fn submit_direct(stack: &TestStack, count: usize) -> Vec<JobId> {
    let jobs: Vec<(JobMessage, Vec<u8>)> = (0..count)
        .map(|i| {
            let filename = Filename::parse(&format!("job-{i}.txt")).expect("valid filename");
            (
                JobMessage::new(JobId::new(), filename),
                format!("job {i}").into_bytes(),
            )
        })
        .collect();
    stack.submit(&jobs).await;
    jobs.into_iter().map(|(job, _)| job.job_id).collect()
}

/// Objects in the output bucket (one per stored result): key and LastModified in seconds
/// since the epoch (NaN when S3 gives none).
pub async fn result_objects(stack: &TestStack) -> Vec<(String, f64)> {
    let pages = stack
        .clients
        .s3
        .list_objects_v2()
        .bucket(&stack.config.s3_out_bucket)
        .into_paginator()
        .send();
    let mut objects = Vec::new();
    let mut pages = std::pin::pin!(pages);
    while let Some(page) = pages.next().await {
        let page = page.expect("list the output bucket");
        objects.extend(page.contents().iter().filter_map(|o| {
            let modified = o.last_modified().map_or(f64::NAN, |m| m.as_secs_f64());
            o.key().map(|key| (key.to_string(), modified))
        }));
    }
    objects
}

/// Keys in the output bucket (one per stored result).
pub async fn result_keys(stack: &TestStack) -> Vec<String> {
    result_objects(stack)
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Every stored result, by job id.
pub async fn results(stack: &TestStack) -> HashMap<String, JobResult> {
    let keys = result_keys(stack).await;
    futures::stream::iter(keys)
        .map(|key| async move {
            let object = stack
                .clients
                .s3
                .get_object()
                .bucket(&stack.config.s3_out_bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| format!("get result {key}: {e}"))?;
            let bytes = object
                .body
                .collect()
                .await
                .map_err(|e| format!("read result {key}: {e}"))?
                .into_bytes();
            let result = JobResult::from_json_bytes(&bytes)
                .map_err(|e| format!("result {key} is not a result document: {e}"))?;
            Ok::<_, String>((key, result))
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that each of `ids` has exactly one stored result, `done`, for that job, with the
/// sleep processor's output; and that there are no other results.
pub async fn assert_all_done(stack: &TestStack, ids: &[JobId]) {
    let results = results(stack).await;
    let mut missing = Vec::new();
    for id in ids {
        let key = qwp_jobs::keys::output_key(id);
        match results.get(&key) {
            None => missing.push(id.to_string()),
            Some(result) => {
                assert_eq!(&result.job_id, id, "result {key} names another job");
                match &result.outcome {
                    qwp_jobs::result::Outcome::Done { result } => assert!(
                        result.get("slept_ms").and_then(|v| v.as_u64()).is_some(),
                        "job {id}: result has no slept_ms: {result}"
                    ),
                    qwp_jobs::result::Outcome::Failed { error } => {
                        panic!("job {id} failed: {error}")
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} jobs have no result: {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        results.len(),
        ids.len(),
        "the output bucket holds results of jobs nobody submitted"
    );
}

/// Empties and deletes the run's buckets and deletes its queue (thousands of objects would
/// otherwise stay in the shared LocalStack). Best effort: failures are printed.
pub async fn remove_stack(stack: &TestStack) {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let s3 = &stack.clients.s3;
    for bucket in [&stack.config.s3_in_bucket, &stack.config.s3_out_bucket] {
        let mut keys = Vec::new();
        let mut pages = std::pin::pin!(s3.list_objects_v2().bucket(bucket).into_paginator().send());
        while let Some(Ok(page)) = pages.next().await {
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let Ok(delete) = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
            else {
                continue;
            };
            if let Err(e) = s3
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
            {
                eprintln!("[e2e] could not empty {bucket}: {e}");
            }
        }
        if let Err(e) = s3.delete_bucket().bucket(bucket).send().await {
            eprintln!("[e2e] could not delete bucket {bucket}: {e}");
        }
    }
    if let Err(e) = stack
        .clients
        .sqs
        .delete_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
    {
        eprintln!("[e2e] could not delete queue {}: {e}", stack.queue_url);
    }
}
