//! The API server against the real LocalStack (private buckets and queues per test via
//! `TestStack`), with the real qwp worker wherever a result is needed.
//! LocalStack must be running (`hack/localstack/localstack.sh up`); tests fail otherwise.

mod common;

use common::{Server, checksum_of};

use std::time::Duration;

use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{JobId, JobResult};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

impl Server {
    async fn start(stack: &TestStack) -> Server {
        Self::start_with(stack, stack.clients.clone(), |_| {}, |_| {}).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The admin port: readiness and metrics.
    fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }
}

/// The real worker (checksum processor) consuming the stack's queue until cancelled.
fn start_worker(stack: &TestStack) -> CancellationToken {
    let settings = qwp_worker::Settings {
        concurrency: 4,
        drain: Duration::from_secs(1),
        ..Default::default()
    };
    let worker = qwp_worker::Worker::new(
        &stack.config,
        settings,
        &stack.clients,
        stack.queue_url.clone(),
    )
    .expect("worker settings are valid");
    let token = CancellationToken::new();
    tokio::spawn(worker.run(token.clone()));
    token
}

async fn json_of(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response {status} is not JSON ({e}): {text:?}"));
    (status, headers, body)
}

async fn input_keys(stack: &TestStack) -> Vec<String> {
    stack
        .clients
        .s3
        .list_objects_v2()
        .bucket(&stack.config.s3_in_bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

async fn queued_bodies(stack: &TestStack) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let received = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .send()
            .await
            .unwrap();
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return bodies;
        }
        bodies.extend(messages.into_iter().filter_map(|m| m.body));
    }
}

fn job_id_of(body: &Value) -> JobId {
    body["job_id"]
        .as_str()
        .expect("job_id in body")
        .parse()
        .expect("job_id is a UUID")
}

fn assert_error_names(body: &Value, needle: &str) {
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"));
    assert!(
        message.contains(needle),
        "error {message:?} should mention {needle:?}"
    );
}

// ---------------------------------------------------------------- happy paths

#[tokio::test]
async fn seed_upload_returns_the_workers_result() {
    let stack = TestStack::new("api-upload", TestStackOptions::default()).await;
    let worker = start_worker(&stack);
    let server = Server::start(&stack).await;
    let data = b"a face, or any bytes at all".to_vec();

    let form = Form::new().part(
        "inputFile",
        Part::bytes(data.clone()).file_name("photo.jpg"),
    );
    let response = server
        .client
        .post(server.url("/"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "done");
    assert_eq!(body["result"], checksum_of(&data));
    let job_id = job_id_of(&body);
    assert!(
        input_keys(&stack)
            .await
            .contains(&format!("{job_id}_photo.jpg"))
    );

    // The seed's status endpoint and the new one agree.
    for path in [format!("/status/{job_id}"), format!("/jobs/{job_id}")] {
        let (status, _, again) =
            json_of(server.client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again, body);
    }

    // The raw-body form of POST /jobs.
    let raw = vec![7u8; 100_000];
    let response = server
        .client
        .post(server.url("/jobs?filename=blob.bin"))
        .header("content-type", "application/octet-stream")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], checksum_of(&raw));

    worker.cancel();
    server.shutdown().await;
}

#[tokio::test]
async fn wait_zero_answers_202_then_polling_gives_the_result() {
    let stack = TestStack::new("api-poll", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let data = b"queued before any worker runs".to_vec();

    let form = Form::new().part("file", Part::bytes(data.clone()).file_name("later.txt"));
    let response = server
        .client
        .post(server.url("/jobs?wait=0"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job_id = job_id_of(&body);
    assert_eq!(
        body,
        json!({"job_id": job_id.to_string(), "status": "pending"})
    );
    let location = headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/jobs/{job_id}"));

    // Known but unfinished: 202, also on the seed route.
    for path in [location.clone(), format!("/status/{job_id}")] {
        let (status, _, body) =
            json_of(server.client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], "pending");
    }

    let worker = start_worker(&stack);
    // Long poll: the server holds the request until the worker's result lands.
    let response = server
        .client
        .get(server.url(&format!("{location}?wait=25")))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "done");
    assert_eq!(body["result"], checksum_of(&data));

    worker.cancel();
    server.shutdown().await;
}

#[tokio::test]
async fn failed_results_are_relayed_and_unreadable_ones_are_502() {
    let stack = TestStack::new("api-failed", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = server
            .client
            .post(server.url("/jobs?wait=0&filename=x.bin"))
            .body("input")
            .send()
            .await
            .unwrap();
        ids.push(job_id_of(&json_of(response).await.2));
    }
    // A stand-in for a worker's output: a failed document, and a corrupt one.
    let put = |key: String, body: Vec<u8>| {
        stack
            .clients
            .s3
            .put_object()
            .bucket(&stack.config.s3_out_bucket)
            .key(key)
            .body(body.into())
            .send()
    };
    put(
        ids[0].to_string(),
        JobResult::failed(ids[0], "input is not an image").to_json_bytes(),
    )
    .await
    .unwrap();
    put(ids[1].to_string(), b"{not json".to_vec())
        .await
        .unwrap();

    let (status, _, body) = json_of(
        server
            .client
            .get(server.url(&format!("/jobs/{}", ids[0])))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"job_id": ids[0].to_string(), "status": "failed", "error": "input is not an image"})
    );

    let (status, _, body) = json_of(
        server
            .client
            .get(server.url(&format!("/status/{}", ids[1])))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_error_names(&body, "malformed");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_job_is_404_and_a_non_uuid_is_400() {
    let stack = TestStack::new("api-404", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let unknown = JobId::new();
    for path in [
        format!("/status/{unknown}"),
        format!("/jobs/{unknown}?wait=1"),
    ] {
        let (status, _, body) =
            json_of(server.client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error_names(&body, &unknown.to_string());
    }
    for bad in [
        "abc-123",
        "..%2F..%2Fetc",
        "3f2b8c1e9d4a4e7b8c1d2a3b4c5d6e7f",
        "%FF%FE",
    ] {
        let (status, _, body) = json_of(
            server
                .client
                .get(server.url(&format!("/jobs/{bad}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_error_names(&body, "not a UUID");
    }
    let (status, _, body) = json_of(
        server
            .client
            .get(server.url(&format!("/jobs/{unknown}?wait=soon")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "wait");
    let (status, _, _) =
        json_of(server.client.get(server.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = json_of(
        server
            .client
            .delete(server.url("/jobs"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    server.shutdown().await;
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn each_bad_input_class_is_rejected_and_nothing_is_stored() {
    let stack = TestStack::new("api-bad", TestStackOptions::default()).await;
    let server = Server::start_with(
        &stack,
        stack.clients.clone(),
        |s| s.config.max_file_mb = 1,
        |_| {},
    )
    .await;
    let limit = 1024 * 1024;
    let post = |path: &str| server.client.post(server.url(path));

    // Missing file field: the answer names the field each route expects.
    let form = Form::new().text("other", "value");
    let (status, _, body) = json_of(post("/").multipart(form).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "`inputFile`");
    let form = Form::new().part("inputFile", Part::bytes(b"x".to_vec()).file_name("a"));
    let (status, _, body) = json_of(post("/jobs").multipart(form).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "`file`");

    // Over MAX_FILE_MB: multipart, raw with Content-Length, raw streamed (chunked, no length).
    let form = Form::new().part(
        "file",
        Part::bytes(vec![1u8; limit + 1]).file_name("big.bin"),
    );
    let (status, _, body) = json_of(post("/jobs").multipart(form).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_names(&body, "1 MB");
    let (status, _, _) = json_of(
        post("/jobs")
            .body(vec![1u8; limit + 1])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![2u8; 64 * 1024])).collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, _, _) = json_of(post("/jobs").body(streamed).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine.
    let (status, _, body) = json_of(
        post("/jobs?wait=0&filename=exact.bin")
            .body(vec![3u8; limit])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let exact_job = job_id_of(&body);

    // Unsupported content types.
    for (path, content_type) in [
        ("/jobs", "application/json"),
        ("/", "application/octet-stream"),
        ("/", "text/plain"),
    ] {
        let (status, _, body) = json_of(
            post(path)
                .header("content-type", content_type)
                .body("{}")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path} {content_type}"
        );
        assert_error_names(&body, "multipart/form-data");
    }

    // Malformed multipart: no boundary, and a body that does not follow its boundary.
    let (status, _, body) = json_of(
        post("/")
            .header("content-type", "multipart/form-data")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "boundary");
    let (status, _, body) = json_of(
        post("/")
            .header("content-type", "multipart/form-data; boundary=XYZ")
            .body("--XYZ\r\nContent-Disposition: form-data; name=\"inputFile\"\r\n\r\ntruncated")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "multipart");

    // Bad Idempotency-Key.
    let (status, _, body) = json_of(
        post("/jobs")
            .header("idempotency-key", "")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_names(&body, "Idempotency-Key");

    // Only the one accepted upload left anything behind.
    assert_eq!(
        input_keys(&stack).await,
        vec![format!("{exact_job}_exact.bin")]
    );
    assert_eq!(
        queued_bodies(&stack).await,
        vec![format!("{exact_job}_exact.bin")]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn filenames_are_sanitised_into_the_job_prefix() {
    let stack = TestStack::new("api-names", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let long = format!("{}.jpg", "n".repeat(5000));
    let cases: Vec<(&str, String)> = vec![
        ("../../etc/passwd", "passwd".into()),
        ("..\\..\\windows\\evil.exe", "evil.exe".into()),
        ("tab\tand\u{7}bell.txt", "tabandbell.txt".into()),
        ("", "upload.bin".into()),
        ("..", "upload.bin".into()),
        ("dir/", "upload.bin".into()),
        (&long, format!("{}.jpg", "n".repeat(196))),
    ];
    let mut expected = Vec::new();
    for (raw, clean) in &cases {
        // Multipart filename, sent verbatim. Control characters and backslashes cannot be
        // carried in a quoted header value, so those go through ?filename= only.
        if !raw.contains(['\\', '\t', '\u{7}']) {
            let part = Part::bytes(b"x".to_vec()).file_name(raw.to_string());
            let form = Form::new().percent_encode_noop().part("file", part);
            let response = server
                .client
                .post(server.url("/jobs?wait=0"))
                .multipart(form)
                .send()
                .await;
            let (status, _, body) = json_of(response.unwrap()).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{raw:?}: {body}");
            expected.push(format!("{}_{clean}", job_id_of(&body)));
        }
        // Raw body with ?filename=.
        let response = server
            .client
            .post(server.url("/jobs"))
            .query(&[("filename", *raw), ("wait", "0")])
            .body("x")
            .send()
            .await
            .unwrap();
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{raw:?}: {body}");
        expected.push(format!("{}_{clean}", job_id_of(&body)));
    }
    let mut keys = input_keys(&stack).await;
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    for key in &keys {
        assert!(
            !key.contains('/') && !key.chars().any(char::is_control),
            "{key:?}"
        );
        assert!(
            key.len() <= 37 + qwp_jobs::filename::MAX_FILENAME_BYTES,
            "{key:?}"
        );
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn unreachable_sqs_is_503_and_leaves_no_input_behind() {
    let stack = TestStack::new("api-nosqs", TestStackOptions::default()).await;
    // S3 on the real LocalStack, SQS on a closed port.
    let dead = qwp_jobs::aws::sdk_config(
        Some("http://127.0.0.1:1"),
        "us-east-1",
        Some(("test", "test")),
    )
    .await;
    let mut clients = stack.clients.clone();
    clients.sqs = aws_sdk_sqs::Client::new(&dead);
    let mut config = stack.config.clone();
    config.sqs_queue_url = Some("http://127.0.0.1:1/000000000000/nope".into());
    let mut stack_view = TestStack { config, ..stack };
    let server = Server::start_with(&stack_view, clients, |_| {}, |_| {}).await;

    let form = Form::new().part(
        "inputFile",
        Part::bytes(b"data".to_vec()).file_name("a.jpg"),
    );
    let response = server
        .client
        .post(server.url("/"))
        .header("idempotency-key", "retry-me")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2");
    assert_error_names(&body, "queue is unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "internals leaked: {body}"
    );
    stack_view.config.sqs_queue_url = Some(stack_view.queue_url.clone());
    assert!(
        input_keys(&stack_view).await.is_empty(),
        "input left behind"
    );

    let (status, _, body) = json_of(
        server
            .client
            .get(server.admin_url("/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["request_queue"], "unavailable");
    assert_eq!(body["checks"]["input_bucket"], "ok");
    server.shutdown().await;

    // The failed attempt released its idempotency key: a healthy server accepts the retry.
    let server = Server::start(&stack_view).await;
    let form = Form::new().part(
        "inputFile",
        Part::bytes(b"data".to_vec()).file_name("a.jpg"),
    );
    let response = server
        .client
        .post(server.url("/?wait=0"))
        .header("idempotency-key", "retry-me")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, headers, _) = json_of(response).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(headers.get("idempotent-replayed").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn unreachable_s3_is_503_and_queues_nothing() {
    let stack = TestStack::new("api-nos3", TestStackOptions::default()).await;
    let dead = qwp_jobs::aws::sdk_config(
        Some("http://127.0.0.1:1"),
        "us-east-1",
        Some(("test", "test")),
    )
    .await;
    let mut clients = stack.clients.clone();
    clients.s3 = qwp_jobs::aws::s3_client(&dead, true);
    let server = Server::start_with(&stack, clients, |_| {}, |_| {}).await;

    let response = server
        .client
        .post(server.url("/jobs?filename=a"))
        .body("data")
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2");
    assert_error_names(&body, "storage is unavailable");
    let (status, _, _) = json_of(
        server
            .client
            .get(server.url(&format!("/jobs/{}", JobId::new())))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(queued_bodies(&stack).await.is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------- idempotency

#[tokio::test]
async fn idempotency_key_replays_the_same_job_and_conflicts_on_new_content() {
    let stack = TestStack::new("api-idem", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let submit = |key: &'static str, content: &'static str| {
        let form = Form::new().part(
            "file",
            Part::bytes(content.as_bytes().to_vec()).file_name("o.json"),
        );
        server
            .client
            .post(server.url("/jobs?wait=0"))
            .header("idempotency-key", key)
            .multipart(form)
            .send()
    };

    let (status, headers, first) = json_of(submit("order-1", "{\"n\":1}").await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(headers.get("idempotent-replayed").is_none());
    let job = job_id_of(&first);

    let (status, headers, again) = json_of(submit("order-1", "{\"n\":1}").await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job_id_of(&again), job);
    assert_eq!(headers["idempotent-replayed"], "true");

    let (status, _, conflict) = json_of(submit("order-1", "{\"n\":2}").await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_names(&conflict, "different upload");
    assert!(
        !conflict.to_string().contains(&job.to_string()),
        "a 409 must not name the other job: {conflict}"
    );

    // Concurrent first uses of one key create exactly one job.
    let racing = futures::future::join_all((0..8).map(|_| submit("order-2", "same"))).await;
    let mut raced = Vec::new();
    for response in racing {
        let (status, _, body) = json_of(response.unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        raced.push(job_id_of(&body));
    }
    raced.dedup();
    assert_eq!(raced.len(), 1, "one key gave several jobs: {raced:?}");

    // Another key with the same content is another job.
    let (_, _, other) = json_of(submit("order-3", "{\"n\":1}").await.unwrap()).await;
    assert_ne!(job_id_of(&other), job);

    let mut queued = queued_bodies(&stack).await;
    queued.sort();
    let mut expected = vec![
        format!("{job}_o.json"),
        format!("{}_o.json", raced[0]),
        format!("{}_o.json", job_id_of(&other)),
    ];
    expected.sort();
    assert_eq!(queued, expected);
    server.shutdown().await;
}

// ---------------------------------------------------------------- waiting at scale

#[tokio::test]
async fn many_waiters_for_one_job_share_one_poller() {
    let stack = TestStack::new("api-waiters", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let response = server
        .client
        .post(server.url("/jobs?wait=0&filename=w"))
        .body("shared")
        .send()
        .await
        .unwrap();
    let job = job_id_of(&json_of(response).await.2);

    let waiters: Vec<_> = (0..40)
        .map(|_| {
            let request = server
                .client
                .get(server.url(&format!("/jobs/{job}?wait=30")))
                .send();
            tokio::spawn(request)
        })
        .collect();
    // All requests subscribe to the job's single poller before a result exists.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.state.waiter.waiters(&job) < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiters never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.waiter.active_pollers(), 1);

    let worker = start_worker(&stack);
    for waiter in waiters {
        let (status, _, body) = json_of(waiter.await.unwrap().unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["result"], checksum_of(b"shared"));
    }
    assert_eq!(server.state.waiter.active_pollers(), 0);
    worker.cancel();
    server.shutdown().await;
}

// ---------------------------------------------------------------- probes and shutdown

#[tokio::test]
async fn health_readiness_and_metrics() {
    let stack = TestStack::new("api-probes", TestStackOptions::default()).await;
    let server = Server::start(&stack).await;
    let (status, _, body) = json_of(
        server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _, body) = json_of(
        server
            .client
            .get(server.admin_url("/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    server
        .client
        .post(server.url("/jobs?wait=0&filename=m"))
        .body("m")
        .send()
        .await
        .unwrap();
    server
        .client
        .post(server.url("/jobs?wait=1&filename=m"))
        .body("m")
        .send()
        .await
        .unwrap();
    let metrics = server
        .client
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "qwp_api_jobs_accepted_total 2",
        "qwp_api_result_wait_timeouts_total 1",
        r#"qwp_api_http_requests_total{route="/jobs",method="POST",status="202"} 2"#,
        r#"qwp_api_http_requests_total{route="/readyz",method="GET",status="200"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    assert!(metrics.contains(r#"qwp_api_http_request_duration_seconds_count{route="/jobs"} 2"#));
    server.shutdown().await;
}

/// Reads the server's JSON log up to its "listening" line and returns the port it names; the
/// rest of the log is drained in the background, so the server never blocks on a full pipe.
async fn listening_ports(child: &mut tokio::process::Child) -> (u16, u16) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read the server's log") {
            let json: Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"] == "qwp-api-server listening" {
                return Some(json);
            }
        }
        None
    })
    .await
    .expect("the server logged that it listens within 30 s")
    .expect("the server logs `qwp-api-server listening` with its addresses");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = |field: &str| {
        let address = listening[field].as_str().unwrap_or_default();
        address
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{field} {address:?}: {e}"))
            .port()
    };
    (port("address"), port("admin_address"))
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let stack = TestStack::new("api-sigterm", TestStackOptions::default()).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qwp-api-server"))
        // Port 0: the server binds free ports and logs the addresses it bound, read below;
        // no port is picked for it that another process could take first.
        .env("PORT", "0")
        .env("ADMIN_PORT", "0")
        .env("INTERNAL_PORT", "0")
        .env("LOG_FORMAT", "json")
        .env(
            "AWS_ENDPOINT_URL",
            stack.config.aws_endpoint_url.as_deref().unwrap(),
        )
        .env("S3_IN_BUCKET", &stack.config.s3_in_bucket)
        .env("S3_OUT_BUCKET", &stack.config.s3_out_bucket)
        .env("SQS_QUEUE_URL", &stack.queue_url)
        .env("MAX_WAIT_SECONDS", "60")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start qwp-api-server");
    let (port, admin_port) = listening_ports(&mut child).await;
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never answered /health"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A request that would wait up to 60 s for a result no worker will produce.
    let waiting = tokio::spawn(
        client
            .post(format!("{base}/jobs?filename=t"))
            .body("t")
            .send(),
    );
    loop {
        let metrics = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l == "qwp_api_result_pollers_active 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never started waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    // The request in flight is answered (202, poll later), not cut off.
    let (status, _, body) = json_of(waiting.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("server did not exit after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "still accepting"
    );
    // The job it accepted is really queued.
    assert_eq!(queued_bodies(&stack).await.len(), 1);
}
