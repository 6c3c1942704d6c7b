//! The API server under hostile clients and failing dependencies, against the real
//! LocalStack (private buckets and queues per test via `TestStack`), the real binary
//! where memory, kills and signals matter, and the real worker wherever a job must be
//! seen through. Faults are injected by `FaultProxy`, an HTTP proxy in front of
//! LocalStack that can hold or fail chosen AWS calls.

mod common;

use common::checksum_of;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use qwp_api_server::settings::Settings;
use qwp_api_server::{AppState, Listeners, serve};
use qwp_jobs::aws::AwsClients;
use qwp_jobs::testing::{TestStack, TestStackOptions};
use qwp_jobs::{JobId, JobResult};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- fault proxy

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward to LocalStack.
    Pass,
    /// Keep the call waiting until the mode changes.
    Hold,
    /// Answer 500 at once.
    Fail,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// Only SQS SendMessage (the step after the input is stored).
    SendMessage,
    /// Every call (S3 and SQS).
    Everything,
}

struct ProxyState {
    upstream: String,
    target: Target,
    mode: watch::Sender<Mode>,
    held: watch::Sender<usize>,
    http: reqwest::Client,
}

/// An HTTP proxy in front of LocalStack that holds or fails the targeted calls.
struct FaultProxy {
    url: String,
    state: Arc<ProxyState>,
}

/// Counts a held call for as long as it is held, even if its client goes away.
struct Held(watch::Sender<usize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl FaultProxy {
    async fn start(upstream: &str, target: Target) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            target,
            mode: watch::channel(Mode::Pass).0,
            held: watch::channel(0).0,
            http: reqwest::Client::new(),
        });
        let app = Router::new().fallback(proxy).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FaultProxy { url, state }
    }

    fn set(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }

    /// Waits until `n` targeted calls are being held.
    async fn wait_held(&self, n: usize) {
        let mut held = self.state.held.subscribe();
        tokio::time::timeout(Duration::from_secs(60), held.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} calls were never held"))
            .unwrap();
    }

    /// Waits until no call is held any more.
    async fn wait_idle(&self) {
        let mut held = self.state.held.subscribe();
        tokio::time::timeout(Duration::from_secs(60), held.wait_for(|h| *h == 0))
            .await
            .expect("held calls were never let go")
            .unwrap();
    }

    /// SDK clients: S3 on LocalStack (or through the proxy), SQS through the proxy.
    async fn clients(&self, s3_through_proxy: bool, stack: &TestStack) -> AwsClients {
        let sdk =
            qwp_jobs::aws::sdk_config(Some(&self.url), "us-east-1", Some(("test", "test"))).await;
        let mut clients = stack.clients.clone();
        clients.sqs = aws_sdk_sqs::Client::new(&sdk);
        if s3_through_proxy {
            clients.s3 = qwp_jobs::aws::s3_client(&sdk, true);
        }
        clients
    }
}

async fn proxy(State(proxy): State<Arc<ProxyState>>, request: Request) -> Response {
    let targeted = match proxy.target {
        Target::Everything => true,
        Target::SendMessage => request
            .headers()
            .get("x-amz-target")
            .is_some_and(|v| v == "AmazonSQS.SendMessage"),
    };
    if targeted {
        let mut mode = proxy.mode.subscribe();
        if *mode.borrow_and_update() == Mode::Hold {
            proxy.held.send_modify(|n| *n += 1);
            let _held = Held(proxy.held.clone());
            let _ = mode.wait_for(|m| *m != Mode::Hold).await;
        }
        if *mode.borrow() == Mode::Fail {
            return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
        }
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = proxy
        .http
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forwarded = forwarded.header(name, value);
        }
    }
    let upstream = match forwarded.send().await {
        Ok(upstream) => upstream,
        Err(err) => return (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

// ---------------------------------------------------------------- servers

/// The server in this process.
struct InProcess {
    base: String,
    admin: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    async fn start(
        stack: &TestStack,
        clients: AwsClients,
        tweak: impl FnOnce(&mut Settings),
    ) -> InProcess {
        let mut settings = Settings::with_config(stack.config.clone());
        tweak(&mut settings);
        let state = AppState::new(settings, clients);
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", public.local_addr().unwrap());
        let admin_base = format!("http://{}", admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            Listeners {
                public,
                admin,
                internal: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            },
            state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        InProcess {
            base,
            admin: admin_base,
            state,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }

    /// Waits until the counter line `line` reads at least `n`.
    async fn wait_metric(&self, line: &str, n: u64) {
        wait_for_metric(|| async { self.state.metrics.render() }, line, n).await;
    }
}

async fn wait_for_metric<F, Fut>(render: F, line: &str, n: u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = render().await;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if value >= n as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line} never reached {n}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary (`QWP_API_SERVER_BIN`, default this build's), on ports it picks itself
/// and reports in its first log line.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    admin: String,
}

impl ServerProcess {
    async fn start(stack: &TestStack, endpoint: &str, env: &[(&str, &str)]) -> ServerProcess {
        // QWP_API_SERVER_BIN runs the tests against another build, e.g. the release one.
        let binary = std::env::var("QWP_API_SERVER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_qwp-api-server").to_string());
        let mut command = tokio::process::Command::new(binary);
        command
            .env("PORT", "0")
            .env("ADMIN_PORT", "0")
            .env("INTERNAL_PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("S3_IN_BUCKET", &stack.config.s3_in_bucket)
            .env("S3_OUT_BUCKET", &stack.config.s3_out_bucket)
            .env("SQS_QUEUE_URL", &stack.queue_url)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start qwp-api-server");
        let pid = child.id().expect("running");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["message"] == "qwp-api-server listening" {
                    return Some(event);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the server logged the addresses it listens on");
        // Keep reading (into the test's output), or the child blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[server {pid}] {line}");
            }
        });
        let url = |field: &str| {
            let address = listening[field].as_str().expect("address field");
            let port = address.rsplit(':').next().unwrap();
            format!("http://127.0.0.1:{port}")
        };
        ServerProcess {
            base: url("address"),
            admin: url("admin_address"),
            child,
            pid,
        }
    }

    /// The process's peak resident memory (VmHWM: the kernel's high-water mark, so no
    /// peak can be missed between samples).
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024.0
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn terminate(mut self) -> std::process::ExitStatus {
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the server exits after SIGTERM")
            .unwrap()
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

// ---------------------------------------------------------------- helpers

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

fn job_id_of(body: &Value) -> JobId {
    body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {body}"))
        .parse()
        .expect("job_id is a UUID")
}

/// Whether `text` contains anything shaped like a UUID (a job id).
fn has_uuid(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .any(|word| word.parse::<JobId>().is_ok())
}

async fn input_keys(stack: &TestStack) -> Vec<String> {
    let mut keys: Vec<String> = stack
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
        .collect();
    keys.sort();
    keys
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
            bodies.sort();
            return bodies;
        }
        bodies.extend(messages.into_iter().filter_map(|m| m.body));
    }
}

/// The queued message bodies, left visible again for the worker.
async fn peek_queued_bodies(stack: &TestStack) -> Vec<String> {
    let mut received = Vec::new();
    loop {
        let batch = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if batch.is_empty() {
            break;
        }
        received.extend(batch);
    }
    let mut bodies = Vec::new();
    for message in received {
        stack
            .clients
            .sqs
            .change_message_visibility()
            .queue_url(&stack.queue_url)
            .receipt_handle(message.receipt_handle.unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        bodies.extend(message.body);
    }
    bodies.sort();
    bodies
}

/// The stored idempotency records (object key → record).
async fn idempotency_records(stack: &TestStack) -> Vec<Value> {
    let listing = stack
        .clients
        .s3
        .list_objects_v2()
        .bucket(&stack.config.s3_out_bucket)
        .prefix(qwp_api_server::idempotency::PREFIX)
        .send()
        .await
        .unwrap();
    let mut records = Vec::new();
    for object in listing.contents() {
        let got = stack
            .clients
            .s3
            .get_object()
            .bucket(&stack.config.s3_out_bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
        let bytes = got.body.collect().await.unwrap().into_bytes();
        records.push(serde_json::from_slice(&bytes).unwrap());
    }
    records
}

/// Waits for the result of every job, failing after two minutes.
async fn results_of(stack: &TestStack, jobs: &[JobId]) -> Vec<JobResult> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut results = Vec::new();
    for job in jobs {
        loop {
            if let Some(result) = stack.result(job).await {
                results.push(result);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no result for job {job}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    results
}

/// A client that sends headers announcing `declared` bytes, then 1 KiB every `every`:
/// returns the status the server answered with (0 if it closed without an answer).
async fn slow_drip(base: &str, path: &str, declared: usize, every: Duration) -> u16 {
    let address = base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let dripping = tokio::spawn(async move {
        let mut sent = 0;
        while sent < declared {
            let n = 1024.min(declared - sent);
            if writer.write_all(&vec![b'd'; n]).await.is_err() {
                return;
            }
            sent += n;
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
        }
    }
    dripping.abort();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn raw_upload(
    client: &reqwest::Client,
    base: &str,
    payload: Vec<u8>,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    client
        .post(format!("{base}/jobs?filename=big.bin&wait=0"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(payload)
        .send()
}

// ---------------------------------------------------------------- memory and time

/// The issue's acceptance load on the real binary with the chart's memory settings:
/// 40 concurrent 8 MiB uploads plus 6 slow-drip bodies. Every request gets an answer the
/// API promises (202, 503 or 408) within two minutes, the process survives with its peak
/// memory under the chart's limit, the server still answers afterwards, and every
/// accepted job is processed: nothing lost, nothing queued without its input, nothing
/// stored or queued for a refused request.
///
/// The peak is bounded generously: this is a debug build (`QWP_API_SERVER_BIN` can
/// point at the release one) on a machine shared with other builds, so the assertion is
/// that the pod would not be OOM-killed (the old server reached ~520 MiB under this
/// load), not the release figure; `make bench-uploads` measures that (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_maximum_uploads_and_slow_drips_stay_within_the_memory_budget() {
    let stack = TestStack::new("hostile-load", TestStackOptions::default()).await;
    let endpoint = stack.config.aws_endpoint_url.clone().unwrap();
    let server = ServerProcess::start(
        &stack,
        &endpoint,
        &[
            ("MAX_FILE_MB", "8"),
            ("UPLOAD_MEMORY_MB", "96"),
            // Short enough to keep the test short, long enough for a debug build on a
            // busy machine to read a fast client's 8 MiB.
            ("BODY_TIMEOUT_SECONDS", "15"),
        ],
    )
    .await;
    let payload: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let drips: Vec<_> = (0..6)
        .map(|_| {
            let base = server.base.clone();
            tokio::spawn(async move {
                slow_drip(
                    &base,
                    "/jobs?filename=slow.bin&wait=0",
                    8 * MIB,
                    Duration::from_millis(200),
                )
                .await
            })
        })
        .collect();
    let uploads: Vec<_> = (0..40)
        .map(|_| tokio::spawn(raw_upload(&client, &server.base, payload.clone())))
        .collect();

    let mut accepted = Vec::new();
    let (mut refused, mut timed_out) = (0, 0);
    for upload in uploads {
        let (status, headers, body) = json_of(upload.await.unwrap().expect("an answer")).await;
        match status {
            StatusCode::ACCEPTED => accepted.push(job_id_of(&body)),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(headers[header::RETRY_AFTER], "2", "{body}");
                refused += 1;
            }
            // A starved machine can make even a fast client's body late.
            StatusCode::REQUEST_TIMEOUT => timed_out += 1,
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    for drip in drips {
        // Cut off with 408, or refused at once when it found the budget full.
        let status = tokio::time::timeout(Duration::from_secs(120), drip)
            .await
            .expect("a slow body is answered within two minutes")
            .unwrap();
        assert!(matches!(status, 408 | 503), "slow body answered {status}");
    }
    let peak = server.peak_rss_mib();
    eprintln!(
        "accepted {} of 40, refused {refused}, timed out {timed_out}, peak RSS {peak:.1} MiB",
        accepted.len()
    );
    assert!(!accepted.is_empty(), "nothing was accepted");
    // The chart's memory limit for these settings (charts/qwp/values.yaml); the
    // budget's arithmetic (docs/api-server.md, "Memory") puts the peak well below it.
    assert!(peak < 256.0, "peak RSS {peak:.1} MiB");
    let health = client
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // Exactly the accepted jobs are stored: nothing from a 503 or a 408.
    let mut expected: Vec<String> = accepted.iter().map(|j| format!("{j}_big.bin")).collect();
    expected.sort();
    assert_eq!(input_keys(&stack).await, expected);
    // Exactly the accepted jobs are queued, each naming its stored input.
    assert_eq!(peek_queued_bodies(&stack).await, expected);
    let worker = start_worker(&stack);
    for result in results_of(&stack, &accepted).await {
        assert_eq!(
            serde_json::to_value(&result).unwrap()["result"],
            checksum_of(&payload),
            "{result:?}"
        );
    }
    worker.cancel();
    assert!(server.terminate().await.success());
}

/// A body that trickles in is cut off with 408, and a SIGTERM ends the server within
/// SHUTDOWN_TIMEOUT_SECONDS even while a body is still arriving; nothing is stored.
#[tokio::test]
async fn slow_bodies_get_408_and_shutdown_is_bounded_while_one_still_drips() {
    let stack = TestStack::new("hostile-slow", TestStackOptions::default()).await;
    let endpoint = stack.config.aws_endpoint_url.clone().unwrap();
    let server = ServerProcess::start(
        &stack,
        &endpoint,
        &[
            ("BODY_TIMEOUT_SECONDS", "1"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    let status = slow_drip(
        &server.base,
        "/jobs?filename=s&wait=0",
        100_000,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_for_metric(
        || server.metrics(),
        r#"qwp_api_uploads_refused_total{reason="body_timeout"}"#,
        1,
    )
    .await;

    // Now one that outlives the shutdown: a 60 s body timeout, a 1 s shutdown bound.
    drop(server);
    let server = ServerProcess::start(
        &stack,
        &endpoint,
        &[
            ("BODY_TIMEOUT_SECONDS", "60"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let base = server.base.clone();
    let drip = tokio::spawn(async move {
        slow_drip(
            &base,
            "/jobs?filename=s&wait=0",
            1_000_000,
            Duration::from_millis(100),
        )
        .await
    });
    wait_for_metric(
        || server.metrics(),
        "qwp_api_upload_memory_reserved_bytes",
        1,
    )
    .await;
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit:?}");
    // Cut off without an answer (0) or told why; either way not stored.
    assert!(matches!(drip.await.unwrap(), 0 | 408 | 503));
    assert!(input_keys(&stack).await.is_empty());
    assert!(queued_bodies(&stack).await.is_empty());
}

/// Headers that never finish and idle connections are closed after
/// HEADER_TIMEOUT_SECONDS, so MAX_CONNECTIONS idle sockets cannot lock everyone out.
#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_and_the_limit_frees_up() {
    let stack = TestStack::new("hostile-conns", TestStackOptions::default()).await;
    let server = InProcess::start(&stack, stack.clients.clone(), |s| {
        s.max_connections = 2;
        s.header_timeout = Duration::from_secs(1);
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut idle = TcpStream::connect(&address).await.unwrap();
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // With both slots taken, this request is served only once the server drops them.
    let health = tokio::spawn(reqwest::get(format!("{}/health", server.base)));
    for socket in [&mut idle, &mut slow] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .expect("the server closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(health.await.unwrap().unwrap().status(), StatusCode::OK);
    server.shutdown().await;
}

// ---------------------------------------------------------------- idempotency

/// The first request holds the key (pending) while its SendMessage hangs. A second with
/// the same key waits for it; then SQS fails. Neither is handed a job id, nothing is left
/// stored or queued, and once SQS is back the key works.
#[tokio::test]
async fn a_same_key_request_waiting_on_a_pending_key_gets_no_id_when_the_first_fails() {
    let stack = TestStack::new("hostile-idem-fail", TestStackOptions::default()).await;
    let proxy = FaultProxy::start(
        stack.config.aws_endpoint_url.as_deref().unwrap(),
        Target::SendMessage,
    )
    .await;
    // Long enough that the SDK does not give up on the held call by itself.
    let server = InProcess::start(&stack, proxy.clients(false, &stack).await, |s| {
        s.store_timeout = Duration::from_secs(30);
    })
    .await;
    let http = reqwest::Client::new();
    let submit = || {
        http.post(format!("{}/jobs?filename=o.json&wait=0", server.base))
            .header("idempotency-key", "order-42")
            .body("{\"n\":1}")
            .send()
    };

    proxy.set(Mode::Hold);
    let first = tokio::spawn(submit());
    proxy.wait_held(1).await;
    let records = idempotency_records(&stack).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["state"], "pending", "{records:?}");
    let second = tokio::spawn(submit());
    server
        .wait_metric(
            r#"qwp_api_idempotency_keys_total{outcome="pending_wait"}"#,
            1,
        )
        .await;

    proxy.set(Mode::Fail);
    for request in [first, second] {
        let (status, headers, body) = json_of(request.await.unwrap().unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert!(
            !has_uuid(&body.to_string()),
            "no job id in a failure: {body}"
        );
    }
    assert!(input_keys(&stack).await.is_empty(), "input left behind");
    assert!(queued_bodies(&stack).await.is_empty());
    let records = idempotency_records(&stack).await;
    assert!(
        records.iter().all(|r| r["state"] == "released"),
        "{records:?}"
    );

    proxy.set(Mode::Pass);
    let (status, headers, body) = json_of(submit().await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(headers.get("idempotent-replayed").is_none());
    let job = job_id_of(&body);
    assert_eq!(queued_bodies(&stack).await, vec![format!("{job}_o.json")]);
    server.shutdown().await;
}

/// While the first request is pending, a same-key request waits (up to 5 s) and then
/// answers 409 "in progress" with Retry-After and no job id; one that is still waiting
/// when the first commits gets the first's job. A different upload under the key is a
/// 409 that does not name the job.
#[tokio::test]
async fn pending_keys_answer_in_progress_or_the_committed_job_and_conflicts_name_nothing() {
    let stack = TestStack::new("hostile-idem-wait", TestStackOptions::default()).await;
    let proxy = FaultProxy::start(
        stack.config.aws_endpoint_url.as_deref().unwrap(),
        Target::SendMessage,
    )
    .await;
    let server = InProcess::start(&stack, proxy.clients(false, &stack).await, |s| {
        s.store_timeout = Duration::from_secs(30);
    })
    .await;
    let http = reqwest::Client::new();
    let submit = |content: &'static str| {
        http.post(format!("{}/jobs?filename=o.json&wait=0", server.base))
            .header("idempotency-key", "order-7")
            .body(content)
            .send()
    };

    proxy.set(Mode::Hold);
    let first = tokio::spawn(submit("same"));
    proxy.wait_held(1).await;
    // Held for longer than a same-key request waits.
    let (status, headers, body) = json_of(submit("same").await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "2");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("still being accepted")
    );
    assert!(!has_uuid(&body.to_string()), "{body}");

    let waiting = tokio::spawn(submit("same"));
    server
        .wait_metric(
            r#"qwp_api_idempotency_keys_total{outcome="pending_wait"}"#,
            2,
        )
        .await;
    proxy.set(Mode::Pass);
    let (status, _, first_body) = json_of(first.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first_body}");
    let job = job_id_of(&first_body);
    let (status, headers, body) = json_of(waiting.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(job_id_of(&body), job);
    assert_eq!(headers["idempotent-replayed"], "true");

    let (status, _, body) = json_of(submit("different").await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let text = body.to_string();
    assert!(text.contains("different upload"), "{text}");
    assert!(
        !text.contains(&job.to_string()) && !has_uuid(&text),
        "a 409 names a job: {text}"
    );
    assert_eq!(queued_bodies(&stack).await, vec![format!("{job}_o.json")]);
    server.shutdown().await;
}

/// The process is killed after storing the input, before queueing the job: the key is
/// left pending. A new server with the same key and upload answers "in progress" until
/// the claim times out, then takes the key over and finishes the same job, which the
/// worker processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_left_pending_by_a_killed_server_is_recovered_and_its_job_processed() {
    let stack = TestStack::new("hostile-idem-kill", TestStackOptions::default()).await;
    let proxy = FaultProxy::start(
        stack.config.aws_endpoint_url.as_deref().unwrap(),
        Target::SendMessage,
    )
    .await;
    let settings = [
        ("STORE_TIMEOUT_SECONDS", "2"),
        ("IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS", "8"),
    ];
    let data = b"recover me".to_vec();
    let submit = |base: String| {
        reqwest::Client::new()
            .post(format!("{base}/jobs?filename=r.bin&wait=0"))
            .header("idempotency-key", "order-99")
            .body(data.clone())
            .send()
    };

    proxy.set(Mode::Hold);
    let server = ServerProcess::start(&stack, &proxy.url, &settings).await;
    let doomed = tokio::spawn(submit(server.base.clone()));
    proxy.wait_held(1).await;
    server.kill().await;
    assert!(doomed.await.unwrap().is_err(), "the killed server answered");
    // The dead server's SendMessage must never reach the queue.
    proxy.set(Mode::Fail);
    proxy.wait_idle().await;
    proxy.set(Mode::Pass);
    let records = idempotency_records(&stack).await;
    assert_eq!(records[0]["state"], "pending", "{records:?}");
    let job: JobId = records[0]["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(input_keys(&stack).await, vec![format!("{job}_r.bin")]);

    let server = ServerProcess::start(&stack, &proxy.url, &settings).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let recovered = loop {
        let (status, headers, body) = json_of(submit(server.base.clone()).await.unwrap()).await;
        match status {
            StatusCode::ACCEPTED => break job_id_of(&body),
            StatusCode::CONFLICT => {
                assert!(!has_uuid(&body.to_string()), "{body}");
                let retry: u64 = headers[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_secs(retry)).await;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    };
    assert_eq!(
        recovered, job,
        "the key finishes the job it was claimed for"
    );
    wait_for_metric(
        || server.metrics(),
        r#"qwp_api_idempotency_keys_total{outcome="recovered"}"#,
        1,
    )
    .await;
    let worker = start_worker(&stack);
    let results = results_of(&stack, &[job]).await;
    assert_eq!(
        serde_json::to_value(&results[0]).unwrap()["result"],
        checksum_of(&data)
    );
    worker.cancel();
    let records = idempotency_records(&stack).await;
    assert_eq!(records[0]["state"], "committed");
    assert!(server.terminate().await.success());
}

// ---------------------------------------------------------------- admin and auth

/// `/metrics` and `/readyz` exist only on the admin port; `/health` is on both.
#[tokio::test]
async fn admin_routes_are_absent_from_the_public_port() {
    let stack = TestStack::new("hostile-admin", TestStackOptions::default()).await;
    let server = InProcess::start(&stack, stack.clients.clone(), |_| {}).await;
    let http = reqwest::Client::new();
    for path in ["/metrics", "/readyz"] {
        let public = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public port"
        );
        let admin = http
            .get(format!("{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(admin.status(), StatusCode::OK, "{path} on the admin port");
    }
    for base in [&server.base, &server.admin] {
        let health = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    server.shutdown().await;
}

/// Once ready, a replica stays ready while S3 and SQS fail (reported as degraded);
/// a replica that never reached them is not ready.
#[tokio::test]
async fn readiness_does_not_flap_when_dependencies_blink() {
    let stack = TestStack::new("hostile-ready", TestStackOptions::default()).await;
    let proxy = FaultProxy::start(
        stack.config.aws_endpoint_url.as_deref().unwrap(),
        Target::Everything,
    )
    .await;
    let clients = proxy.clients(true, &stack).await;
    let server = InProcess::start(&stack, clients.clone(), |s| {
        s.readiness_check_interval = Duration::ZERO;
        s.store_timeout = Duration::from_secs(2);
    })
    .await;
    let readyz = |admin: String| async move {
        let response = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        json_of(response).await
    };
    let (status, _, body) = readyz(server.admin.clone()).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));

    proxy.set(Mode::Fail);
    let (status, _, body) = readyz(server.admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["input_bucket"], "unavailable");
    let metrics = server.state.metrics.render();
    assert!(
        metrics.contains(r#"qwp_api_dependency_up{dependency="input_bucket"} 0"#),
        "{metrics}"
    );

    // A fresh replica that has never reached them is not ready.
    let fresh = InProcess::start(&stack, clients, |s| {
        s.store_timeout = Duration::from_secs(2);
    })
    .await;
    let (status, _, body) = readyz(fresh.admin.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "starting");

    proxy.set(Mode::Pass);
    let (status, _, body) = readyz(server.admin.clone()).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));
    let (status, _, _) = readyz(fresh.admin.clone()).await;
    assert_eq!(status, StatusCode::OK);
    fresh.shutdown().await;
    server.shutdown().await;
}

/// With API_TOKENS set, every public route but /health needs a valid bearer token (401
/// otherwise), and idempotency keys are the caller's own.
#[tokio::test]
async fn bearer_tokens_guard_every_route_but_health_and_scope_idempotency_keys() {
    let stack = TestStack::new("hostile-auth", TestStackOptions::default()).await;
    let alice = "alice-token-0123456789abcdef";
    let bob = "bob-token-0123456789abcdef";
    let tokens = qwp_api_server::auth::Tokens::parse(&format!("{alice},{bob}")).unwrap();
    let server = InProcess::start(&stack, stack.clients.clone(), |s| s.tokens = tokens).await;
    let http = reqwest::Client::new();
    let submit = |token: Option<&str>| {
        let mut request = http
            .post(format!("{}/jobs?filename=a&wait=0", server.base))
            .header("idempotency-key", "shared-key")
            .body("payload");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    for token in [None, Some("not-a-valid-token-at-all"), Some(&alice[1..])] {
        let (status, headers, body) = json_of(submit(token).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], r#"Bearer realm="qwp""#);
    }
    assert!(input_keys(&stack).await.is_empty());

    let (status, _, body) = json_of(submit(Some(alice)).await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let alices = job_id_of(&body);
    // The same key from another caller is another job, not a conflict or a replay.
    let (status, headers, body) = json_of(submit(Some(bob)).await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_ne!(job_id_of(&body), alices);

    let status_url = format!("{}/status/{alices}", server.base);
    let anonymous = http.get(&status_url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let authorised = http
        .get(&status_url)
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(authorised.status(), StatusCode::ACCEPTED);
    let health = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.wait_metric("qwp_api_auth_failures_total", 4).await;
    server.shutdown().await;
}
