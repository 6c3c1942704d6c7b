//! A faulting HTTP proxy in front of the real LocalStack: a worker whose AWS endpoint is the
//! proxy talks to LocalStack as usual, except for the requests a [`Rule`] picks, which are
//! failed, held, or partly forwarded. Everything not picked is forwarded unchanged.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which requests a rule applies to.
#[derive(Clone, Debug)]
pub enum Match {
    /// S3 `PutObject` into this bucket (path-style `PUT /bucket/key`).
    PutObject { bucket: String },
    /// An SQS operation (JSON protocol, `X-Amz-Target: AmazonSQS.{0}`).
    Sqs(&'static str),
    /// An SQS operation, only for the receipt handle of the first such request: one attempt's
    /// heartbeats, not the next attempt's.
    SqsFirstReceipt(&'static str),
}

/// What the proxy does with a picked request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answers with this status and AWS error code; nothing reaches LocalStack.
    Fail { status: u16, code: &'static str },
    /// Forwards, then answers 500: the request took effect, the client is told it did not.
    ForwardThenFail,
    /// Never answers (until the client gives up).
    Hang,
    /// `DeleteMessageBatch`: forwards every other entry (starting by dropping the first ever
    /// seen) and reports the dropped ones as failed, `SenderFault: false`.
    DropEveryOtherEntry,
}

#[derive(Debug)]
struct Rule {
    matches: Match,
    fault: Fault,
    /// Requests it still applies to; `None`: every one.
    remaining: Option<usize>,
    pinned_receipt: Option<String>,
}

#[derive(Default, Debug)]
struct Faults {
    rules: Vec<Rule>,
    /// Requests a rule applied to.
    injected: usize,
    /// Entries `DropEveryOtherEntry` dropped, and entries it saw.
    dropped_entries: usize,
    seen_entries: usize,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
}

pub struct FaultProxy {
    /// The endpoint to give the worker (`AWS_ENDPOINT_URL`).
    pub url: String,
    faults: Arc<Mutex<Faults>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port (held from bind to serve) and forwards to `upstream`.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            faults: Arc::default(),
        };
        let faults = shared.faults.clone();
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FaultProxy { url, faults, task }
    }

    /// Adds a rule; `times: None` applies it to every matching request.
    pub fn inject(&self, matches: Match, fault: Fault, times: Option<usize>) {
        self.faults.lock().unwrap().rules.push(Rule {
            matches,
            fault,
            remaining: times,
            pinned_receipt: None,
        });
    }

    /// Removes every rule: from now on everything is forwarded.
    pub fn clear(&self) {
        self.faults.lock().unwrap().rules.clear();
    }

    /// Requests a rule applied to so far.
    pub fn injected(&self) -> usize {
        self.faults.lock().unwrap().injected
    }

    /// `DeleteMessageBatch` entries dropped so far.
    pub fn dropped_entries(&self) -> usize {
        self.faults.lock().unwrap().dropped_entries
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SQS operation of a JSON-protocol request.
fn sqs_operation(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-amz-target")?
        .to_str()
        .ok()?
        .strip_prefix("AmazonSQS.")
}

impl Faults {
    /// The fault for this request, if a rule picks it (and uses one of its applications).
    fn pick(
        &mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Fault> {
        let operation = sqs_operation(headers);
        let receipt = || {
            serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["ReceiptHandle"].as_str().map(str::to_string))
        };
        for rule in &mut self.rules {
            if rule.remaining == Some(0) {
                continue;
            }
            let picked = match &rule.matches {
                Match::PutObject { bucket } => {
                    method == Method::PUT && path.starts_with(&format!("/{bucket}/"))
                }
                Match::Sqs(op) => operation == Some(*op),
                Match::SqsFirstReceipt(op) => {
                    operation == Some(*op) && {
                        let handle = receipt();
                        match &rule.pinned_receipt {
                            None => {
                                rule.pinned_receipt = handle;
                                rule.pinned_receipt.is_some()
                            }
                            Some(pinned) => handle.as_ref() == Some(pinned),
                        }
                    }
                }
            };
            if picked {
                if let Some(remaining) = &mut rule.remaining {
                    *remaining -= 1;
                }
                self.injected += 1;
                return Some(rule.fault);
            }
        }
        None
    }
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path().to_string();
    let fault = shared
        .faults
        .lock()
        .unwrap()
        .pick(&parts.method, &path, &parts.headers, &body);
    let is_sqs = sqs_operation(&parts.headers).is_some();
    match fault {
        None => forward(&shared, &parts, body).await,
        Some(Fault::Fail { status, code }) => aws_error(is_sqs, status, code),
        Some(Fault::ForwardThenFail) => {
            let _ = forward(&shared, &parts, body).await;
            aws_error(is_sqs, 500, "InternalError")
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::DropEveryOtherEntry) => drop_every_other_entry(&shared, &parts, body).await,
    }
}

async fn forward(shared: &Shared, parts: &axum::http::request::Parts, body: Bytes) -> Response {
    let target = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = shared
        .client
        .request(parts.method.clone(), target)
        .body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            request = request.header(name, value);
        }
    }
    let upstream = match request.send().await {
        Ok(upstream) => upstream,
        Err(err) => return (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !is_hop_by_hop(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "keep-alive"
    )
}

/// An error as S3 (XML) or SQS (JSON protocol, query-compatible code header) sends it.
fn aws_error(is_sqs: bool, status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let message = "injected by the test's fault proxy";
    if is_sqs {
        let fault = if status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        let mut response = (
            status,
            json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message}).to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        headers.insert(
            "x-amzn-query-error",
            HeaderValue::from_str(&format!("{code};{fault}")).unwrap(),
        );
        response
    } else {
        let mut response = (
            status,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ),
        )
            .into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/xml"));
        response
    }
}

async fn drop_every_other_entry(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let mut request: Value = serde_json::from_slice(&body).unwrap();
    let entries = request["Entries"].as_array().cloned().unwrap_or_default();
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    {
        let mut faults = shared.faults.lock().unwrap();
        for entry in entries {
            if faults.seen_entries.is_multiple_of(2) {
                dropped.push(entry);
                faults.dropped_entries += 1;
            } else {
                kept.push(entry);
            }
            faults.seen_entries += 1;
        }
    }
    let mut answer = if kept.is_empty() {
        json!({"Successful": [], "Failed": []})
    } else {
        request["Entries"] = Value::Array(kept);
        let forwarded = forward(shared, parts, Bytes::from(request.to_string())).await;
        let bytes = axum::body::to_bytes(forwarded.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let failed = answer["Failed"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut failed: Vec<Value> = failed;
    failed.extend(dropped.iter().map(|entry| {
        json!({"Id": entry["Id"], "SenderFault": false, "Code": "InternalError",
               "Message": "injected by the test's fault proxy"})
    }));
    answer["Failed"] = Value::Array(failed);
    let mut response = (StatusCode::OK, answer.to_string()).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}
