//! Test support: a mocked API server that plays a scenario of expected requests (method,
//! path, body checks) with canned answers, a fake queue and a fake in-flight probe, and the
//! reconcile scenarios themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use kube::{Client, Resource};
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::{QueueWorkerPool, QueueWorkerPoolSpec};
use qwp_pool::decision::QueueDepth;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::Context;
use crate::deletion_cost::InFlightProbe;
use crate::metrics::Metrics;
use crate::queue::{QueueDepthSource, QueueError, QueueTarget, Reading};

pub const NS: &str = "jobs";
pub const POOL: &str = "thumbs";
pub const QUEUE_URL: &str = "http://localstack:4566/000000000000/thumbs";

/// A queue whose depth (or failure) the test sets; remembers what it was asked to read.
#[derive(Default)]
pub struct FakeQueue {
    pub answer: Mutex<Option<Result<QueueDepth, QueueError>>>,
    pub targets: Mutex<Vec<QueueTarget>>,
}

impl FakeQueue {
    pub fn set(&self, answer: Result<QueueDepth, QueueError>) {
        *self.answer.lock().unwrap() = Some(answer);
    }
}

impl QueueDepthSource for FakeQueue {
    fn read<'a>(&'a self, target: &'a QueueTarget) -> BoxFuture<'a, Result<Reading, QueueError>> {
        self.targets.lock().unwrap().push(target.clone());
        let answer = self
            .answer
            .lock()
            .unwrap()
            .clone()
            .expect("the test sets the queue depth");
        Box::pin(async move {
            answer.map(|depth| Reading {
                url: target.display_name(),
                depth,
                api_calls: 1,
            })
        })
    }
}

/// In-flight counts by pod IP; an unknown IP does not answer.
#[derive(Default)]
pub struct FakeProbe(pub HashMap<String, u32>);

impl InFlightProbe for FakeProbe {
    fn in_flight<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Option<u32>> {
        let answer = self.0.get(pod_ip).copied();
        Box::pin(async move { answer })
    }
}

/// One request the reconciler must make next, and what the API server answers.
pub struct Expect {
    pub method: Method,
    pub path: String,
    pub check: Box<dyn FnOnce(&Value) + Send>,
    pub reply: Reply,
    /// May come in any order with the unordered expectations next to it.
    pub unordered: bool,
}

#[derive(Clone)]
pub enum Reply {
    Json(Value),
    NotFound,
    Error(StatusCode, &'static str),
    /// Answer with the request body (what an API server roughly does for apply and create).
    Echo,
}

impl Expect {
    pub fn new(method: Method, path: impl Into<String>, reply: Reply) -> Self {
        Expect {
            method,
            path: path.into(),
            check: Box::new(|_| {}),
            reply,
            unordered: false,
        }
    }

    /// This request and the unordered ones next to it may come in any order.
    pub fn unordered(mut self) -> Self {
        self.unordered = true;
        self
    }

    pub fn check(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
}

type MockHandle = Handle<Request<Body>, Response<Body>>;

pub struct ApiServerVerifier(MockHandle);

impl ApiServerVerifier {
    /// Serves the expected requests in order, asserting method, path (not the query) and
    /// body; a run of [`Expect::unordered`] ones may come in any order (parallel requests).
    /// The handle is kept afterwards, so a request beyond the script gets no answer and the
    /// reconcile times out (failing the test) instead of slipping through.
    pub fn run(self, script: Vec<Expect>) -> JoinHandle<MockHandle> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut script = std::collections::VecDeque::from(script);
            let mut step = 0;
            while let Some(first) = script.pop_front() {
                let mut group = vec![first];
                while group[0].unordered && script.front().is_some_and(|e| e.unordered) {
                    group.extend(script.pop_front());
                }
                while !group.is_empty() {
                    let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                        panic!(
                            "step {step}: expected {} {}, got no request",
                            group[0].method, group[0].path
                        )
                    });
                    let found = group.iter().position(|e| {
                        (request.method(), request.uri().path()) == (&e.method, e.path.as_str())
                    });
                    let expect = match found {
                        Some(index) => group.remove(index),
                        None => panic!(
                            "step {step}: unexpected request {} {}, expected {} {}",
                            request.method(),
                            request.uri(),
                            group[0].method,
                            group[0].path
                        ),
                    };
                    serve(step, request, send, expect).await;
                    step += 1;
                }
            }
            handle
        })
    }
}

async fn serve(
    step: usize,
    request: Request<Body>,
    send: tower_test::mock::SendResponse<Response<Body>>,
    expect: Expect,
) {
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    if expect.method == Method::PATCH && query.contains("fieldManager") {
        assert!(
            query.contains("fieldManager=qwp-operator"),
            "step {step}: field manager in {query}"
        );
    }
    (expect.check)(&body);
    let response = match expect.reply {
        Reply::Json(value) => json_response(StatusCode::OK, &value),
        Reply::Echo => json_response(StatusCode::OK, &body),
        Reply::NotFound => status_response(StatusCode::NOT_FOUND, "NotFound"),
        Reply::Error(code, reason) => status_response(code, reason),
    };
    send.send_response(response);
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

fn status_response(code: StatusCode, reason: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{reason} (mocked)"), "reason": reason, "code": code.as_u16()}),
    )
}

pub struct TestContext {
    pub ctx: Arc<Context>,
    pub api: Option<ApiServerVerifier>,
    pub queue: Arc<FakeQueue>,
    /// Fills the context's pod cache, as the operator's reflector would.
    pub pods: kube::runtime::reflector::store::Writer<k8s_openapi::api::core::v1::Pod>,
}

impl Context {
    /// A context with a mocked API server, a fake queue and the given in-flight counts.
    pub fn test(probe: FakeProbe) -> TestContext {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let queue = Arc::new(FakeQueue::default());
        let ctx = Context::new(
            client,
            queue.clone(),
            Arc::new(probe),
            Arc::new(Metrics::default()),
        )
        .with_allowlist(
            crate::access::EndpointAllowlist::parse(
                "https://sqs.*.amazonaws.com,http://localstack:4566",
            )
            .unwrap(),
        );
        let pods = ctx
            .take_pod_writer()
            .expect("a new context has its pod writer");
        TestContext {
            ctx: Arc::new(ctx),
            api: Some(ApiServerVerifier(handle)),
            queue,
            pods,
        }
    }
}

/// A pool as the API server returns it (defaults applied, uid and generation set).
pub fn test_pool(spec: Value) -> QueueWorkerPool {
    let mut full = json!({
        "queue": {"url": QUEUE_URL, "region": "us-east-1", "endpoint": "http://localstack:4566"},
        "maxReplicas": 10,
        "targetBacklogPerPod": 5,
        "template": {"spec": {"containers": [{"name": "worker", "image": "qwp-worker:dev"}]}},
    });
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    let spec: QueueWorkerPoolSpec = serde_json::from_value(full).unwrap();
    let mut pool = QueueWorkerPool::new(POOL, spec);
    pool.meta_mut().namespace = Some(NS.into());
    pool.meta_mut().uid = Some("pool-uid".into());
    pool.meta_mut().generation = Some(1);
    pool
}

/// The Deployment the operator would have created earlier, with `replicas` set by someone.
pub fn existing_deployment(pool: &QueueWorkerPool, replicas: i32, ready: i32) -> Value {
    let mut deployment: Deployment =
        qwp_pool::deployment::build_deployment(pool, replicas, DEFAULT_ADMIN_PORT).unwrap();
    deployment.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        ..Default::default()
    });
    serde_json::to_value(deployment).unwrap()
}

pub fn deployment_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{POOL}")
}

pub fn status_path() -> String {
    format!("/apis/queueworker.io/v1alpha1/namespaces/{NS}/queueworkerpools/{POOL}/status")
}

pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

impl TestContext {
    /// The pod cache holds exactly `pods` (after its first list).
    pub fn set_pods(&mut self, pods: Vec<Value>) {
        use kube::runtime::watcher::Event;
        self.pods.apply_watcher_event(&Event::Init);
        for pod in pods {
            self.pods
                .apply_watcher_event(&Event::InitApply(serde_json::from_value(pod).unwrap()));
        }
        self.pods.apply_watcher_event(&Event::InitDone);
    }

    /// Runs one reconcile against the script; a reconcile that waits for a request the
    /// script does not answer fails the test instead of hanging.
    pub async fn reconcile(
        &mut self,
        pool: &QueueWorkerPool,
        script: Vec<Expect>,
    ) -> crate::Result<kube::runtime::controller::Action> {
        let server = self
            .api
            .take()
            .expect("one reconcile at a time")
            .run(script);
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            crate::reconcile(Arc::new(pool.clone()), self.ctx.clone()),
        )
        .await
        .expect("reconcile made a request the scenario does not expect, or hung");
        let handle = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the reconcile skipped requests of the scenario")
            .expect("scenario assertions hold");
        self.api = Some(ApiServerVerifier(handle));
        result
    }
}

/// A stateful fake of one Lease on the API server (GET, POST, PATCH merged into the object),
/// recording every request, for the leader election tests: the order and number of the
/// election's calls are the crate's business, what ends up in the Lease is ours.
pub mod lease_server {
    use super::*;

    pub const LEASE_NS: &str = "qwp-system";
    pub const LEASE: &str = "qwp-operator";

    #[derive(Clone, Debug)]
    pub struct Recorded {
        pub method: String,
        pub path: String,
        pub query: String,
        pub body: Value,
    }

    #[derive(Default)]
    struct State {
        lease: Option<Value>,
        requests: Vec<Recorded>,
    }

    pub struct FakeLeaseServer {
        client: Client,
        state: Arc<Mutex<State>>,
    }

    /// Merge patch semantics (RFC 7386), which is what a strategic merge patch and an apply
    /// of a Lease's scalar fields amount to.
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(target), Some(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    impl FakeLeaseServer {
        /// A server whose Lease has `spec` (or does not exist yet with `None`).
        pub fn start(spec: Option<Value>) -> Self {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let state = Arc::new(Mutex::new(State {
                lease: spec.map(|spec| {
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": LEASE, "namespace": LEASE_NS}, "spec": spec})
                }),
                requests: Vec::new(),
            }));
            let shared = state.clone();
            tokio::spawn(async move {
                while let Some((request, send)) = handle.next_request().await {
                    let method = request.method().to_string();
                    let path = request.uri().path().to_string();
                    let query = request.uri().query().unwrap_or_default().to_string();
                    let bytes = request.into_body().collect_bytes().await.unwrap();
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let mut state = shared.lock().unwrap();
                    state.requests.push(Recorded {
                        method: method.clone(),
                        path: path.clone(),
                        query,
                        body: body.clone(),
                    });
                    let response = match (method.as_str(), state.lease.as_mut()) {
                        ("GET", Some(lease)) => json_response(StatusCode::OK, lease),
                        ("GET", None) => status_response(StatusCode::NOT_FOUND, "NotFound"),
                        ("POST", _) => {
                            let mut lease = body;
                            lease["metadata"]["namespace"] = json!(LEASE_NS);
                            state.lease = Some(lease.clone());
                            json_response(StatusCode::CREATED, &lease)
                        }
                        ("PATCH", Some(lease)) => {
                            merge(lease, &body);
                            json_response(StatusCode::OK, lease)
                        }
                        _ => status_response(StatusCode::NOT_FOUND, "NotFound"),
                    };
                    send.send_response(response);
                }
            });
            FakeLeaseServer {
                client: Client::new(service, "default"),
                state,
            }
        }

        pub fn client(&self) -> Client {
            self.client.clone()
        }

        pub fn lease_path(&self) -> String {
            format!("{}/{LEASE}", self.collection_path())
        }

        pub fn collection_path(&self) -> String {
            format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases")
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.state.lock().unwrap().requests.clone()
        }

        pub fn holder(&self) -> Option<String> {
            let state = self.state.lock().unwrap();
            state.lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(String::from)
        }
    }
}

#[cfg(test)]
mod scenarios {
    use super::*;
    use crate::deletion_cost::DELETION_COST_ANNOTATION;
    use kube::runtime::controller::Action;
    use qwp_pool::contract::WORKER_DRAIN_SECONDS;
    use qwp_pool::crd::QueueWorkerPoolStatus;

    fn env_value<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e.get("value").unwrap_or(&e["valueFrom"]))
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
    }

    fn keep(slot: &Arc<Mutex<Value>>) -> impl FnOnce(&Value) + Send + 'static {
        let slot = slot.clone();
        move |body: &Value| *slot.lock().unwrap() = body.clone()
    }

    fn pool_reply(pool: &QueueWorkerPool) -> Reply {
        Reply::Json(serde_json::to_value(pool).unwrap())
    }

    #[tokio::test]
    async fn fresh_pool_with_backlog_gets_its_deployment_at_once() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth {
            visible: 40,
            in_flight: 2,
            delayed: 7,
        }));
        let pool = test_pool(json!({"concurrency": 2, "drainSeconds": 40}));
        let status = Arc::new(Mutex::new(Value::Null));
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["spec"]["replicas"], 9, "ceil(42 / 5)");
                        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "pool-uid");
                        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
                        assert_eq!(
                            body["spec"]["selector"]["matchLabels"]["queueworker.io/pool"],
                            POOL
                        );
                        assert_eq!(env_value(body, "SQS_QUEUE_URL"), Some(&json!(QUEUE_URL)));
                        assert_eq!(env_value(body, "WORKER_CONCURRENCY"), Some(&json!("2")));
                        assert_eq!(
                            env_value(body, "AWS_ENDPOINT_URL"),
                            Some(&json!("http://localstack:4566"))
                        );
                        // One drain budget: the pool's drainSeconds, plus the 5 s release
                        // margin for the kubelet.
                        assert_eq!(env_value(body, WORKER_DRAIN_SECONDS), Some(&json!("40")));
                        assert_eq!(
                            body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
                            json!(45)
                        );
                    }),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Normal");
                        assert_eq!(body["reason"], "Scaled");
                        assert_eq!(
                            body["note"],
                            "scaled from 0 to 9 replicas: backlog 42 / 5 per pod → 9 replicas"
                        );
                        assert_eq!(body["regarding"]["name"], POOL);
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool))
                        .check(keep(&status)),
                ],
            )
            .await;
        // Requeued to poll again 5 s later: the scheduler adds the debounce to the request.
        assert_eq!(
            result.unwrap(),
            Action::requeue(Duration::from_secs(5) - crate::controller::WATCH_DEBOUNCE)
        );
        let body = status.lock().unwrap().clone();
        assert_eq!(body["kind"], "QueueWorkerPool");
        let status = &body["status"];
        assert_eq!(status["desiredReplicas"], 9);
        assert_eq!(
            status["backlog"],
            json!({"visible": 40, "inFlight": 2, "delayed": 7, "counted": 42})
        );
        assert_eq!(
            status["lastScaleReason"],
            "backlog 42 / 5 per pod → 9 replicas"
        );
        assert_eq!(status["queue"], QUEUE_URL);
        assert_eq!(condition(status, "QueueReachable")["status"], "True");
        assert_eq!(
            condition(status, "Ready")["status"],
            "False",
            "no pod is ready yet"
        );
        let target = test.queue.targets.lock().unwrap()[0].clone();
        assert_eq!(target.url.as_deref(), Some(QUEUE_URL));
        assert_eq!(target.endpoint.as_deref(), Some("http://localstack:4566"));
        assert!(
            target.credentials.is_none(),
            "default credential chain without a Secret"
        );
    }

    #[tokio::test]
    async fn unreachable_queue_holds_replicas_and_warns_once() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Err(QueueError::new(
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )));
        let mut pool = test_pool(json!({}));
        let deployment = existing_deployment(&pool, 3, 3);
        let status = Arc::new(Mutex::new(Value::Null));
        let result = test
            .reconcile(
                &pool,
                vec![
                    // The Deployment is up to date at 3 replicas: nothing to apply.
                    Expect::new(
                        Method::GET,
                        deployment_path(),
                        Reply::Json(deployment.clone()),
                    ),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Warning");
                        assert_eq!(body["reason"], "QueueUnreachable");
                        let note = body["note"].as_str().unwrap();
                        assert!(note.contains("holding 3 replicas"), "{note}");
                        assert!(
                            note.contains("AWS.SimpleQueueService.NonExistentQueue"),
                            "{note}"
                        );
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool))
                        .check(keep(&status)),
                ],
            )
            .await;
        assert!(
            result.is_ok(),
            "an unreadable queue is not a reconcile error: {result:?}"
        );
        let written = status.lock().unwrap()["status"].clone();
        assert_eq!(written["desiredReplicas"], 3);
        let reachable = condition(&written, "QueueReachable");
        assert_eq!(reachable["status"], "False");
        assert_eq!(
            reachable["reason"],
            "AWS_SimpleQueueService_NonExistentQueue"
        );

        // The next poll: same outage, status already says so: no event, no status write.
        pool.status = Some(serde_json::from_value::<QueueWorkerPoolStatus>(written).unwrap());
        let result = test
            .reconcile(
                &pool,
                vec![Expect::new(
                    Method::GET,
                    deployment_path(),
                    Reply::Json(deployment.clone()),
                )],
            )
            .await;
        assert!(result.is_ok());

        // Recovery: the queue answers again; the pool says so and scales on the backlog.
        test.queue.set(Ok(QueueDepth {
            visible: 20,
            in_flight: 0,
            delayed: 0,
        }));
        let mut changed = pool.clone();
        changed.metadata.generation = Some(2); // a spec edit: the cached reading is not reused
        let result = test
            .reconcile(
                &changed,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(deployment)),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo)
                        .check(|body| assert_eq!(body["spec"]["replicas"], 4)),
                    Expect::new(Method::POST, events_path(), Reply::Echo)
                        .check(|body| assert_eq!(body["reason"], "Scaled")),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["reason"], "QueueReachable");
                        assert_eq!(body["type"], "Normal");
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)).check(|body| {
                        assert_eq!(
                            condition(&body["status"], "QueueReachable")["status"],
                            "True"
                        );
                    }),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    fn pod(name: &str, ip: &str, cost: Option<&str>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"queueworker.io/pool": POOL}},
            "spec": {"containers": [{"name": "worker", "image": "qwp-worker:dev"}]},
            "status": {"podIP": ip, "phase": "Running"},
        });
        if let Some(cost) = cost {
            pod["metadata"]["annotations"] = json!({DELETION_COST_ANNOTATION: cost});
        }
        pod
    }

    fn cost_patch_of(expected: &'static str) -> impl FnOnce(&Value) + Send + 'static {
        move |body: &Value| {
            assert_eq!(
                body,
                &json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: expected}}})
            );
        }
    }

    #[tokio::test]
    async fn hand_edit_is_corrected_and_idle_pods_go_first() {
        let probe = FakeProbe(HashMap::from([
            ("10.1.0.1".to_string(), 2),
            ("10.1.0.2".to_string(), 0),
            ("10.1.0.4".to_string(), 0),
        ]));
        let mut test = Context::test(probe);
        test.queue.set(Ok(QueueDepth {
            visible: 15,
            in_flight: 0,
            delayed: 0,
        }));
        let pool = test_pool(json!({}));

        // The operator runs the pool at 3 replicas (ceil(15 / 5)): nothing to change.
        let settled = existing_deployment(&pool, 3, 3);
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(settled)),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");

        // Someone runs `kubectl scale --replicas=10`; the next reconcile takes it back to 3,
        // after ranking the pods so that the busy one is removed last.
        let mut status_pool = pool.clone();
        status_pool.status = None;
        let edited = existing_deployment(&pool, 10, 10);
        // From the pod cache, not a LIST; one pod of another pool is not touched.
        let mut stranger = pod("other-pool", "10.1.0.9", None);
        stranger["metadata"]["labels"]["queueworker.io/pool"] = json!("other");
        test.set_pods(vec![
            pod("busy", "10.1.0.1", None),
            pod("idle", "10.1.0.2", None),
            // /status does not answer: it counts as busy, keeping its last cost...
            pod("silent", "10.1.0.3", Some("5")),
            // ...or a full pod's jobs (concurrency 1) when it has none yet, never 0.
            pod("silent-new", "10.1.0.5", None),
            pod("known", "10.1.0.4", Some("0")),
            stranger,
        ]);
        let pod_path = |name: &str| format!("/api/v1/namespaces/{NS}/pods/{name}");
        let result = test
            .reconcile(
                &status_pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(edited)),
                    // Patched in parallel: any order.
                    Expect::new(Method::PATCH, pod_path("busy"), Reply::Echo)
                        .check(cost_patch_of("2"))
                        .unordered(),
                    Expect::new(Method::PATCH, pod_path("idle"), Reply::Echo)
                        .check(cost_patch_of("0"))
                        .unordered(),
                    Expect::new(Method::PATCH, pod_path("silent-new"), Reply::Echo)
                        .check(cost_patch_of("1"))
                        .unordered(),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo)
                        .check(|body| assert_eq!(body["spec"]["replicas"], 3)),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(
                            body["note"],
                            "scaled from 10 to 3 replicas: backlog 15 / 5 per pod → 3 replicas"
                        );
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn a_pool_naming_an_endpoint_outside_the_allowlist_is_refused_without_a_call() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let pool = test_pool(json!({
            "queue": {"name": "thumbs", "region": "us-east-1", "endpoint": "http://collector.example:8080",
                      "credentialsSecretRef": {"name": "aws"}},
        }));
        let status = Arc::new(Mutex::new(Value::Null));
        // Not even the Deployment or the Secret is read: only the refusal is reported.
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Warning");
                        assert_eq!(body["reason"], "EndpointNotAllowed");
                        let note = body["note"].as_str().unwrap();
                        assert!(note.contains("http://collector.example:8080"), "{note}");
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool))
                        .check(keep(&status)),
                ],
            )
            .await;
        let error = result.unwrap_err();
        assert!(matches!(error, crate::Error::Refused(_)), "{error}");
        assert!(test.queue.targets.lock().unwrap().is_empty(), "no SQS call");
        let ready = condition(&status.lock().unwrap()["status"], "Ready").clone();
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("EndpointNotAllowed"))
        );
        assert_eq!(
            crate::error_policy(Arc::new(pool), &error, test.ctx.clone()),
            Action::await_change(),
            "the allowlist is fixed at install time: only a change of the pool helps"
        );
    }

    #[tokio::test]
    async fn a_secret_that_does_not_opt_in_is_not_used() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let pool = test_pool(json!({
            "queue": {"url": QUEUE_URL, "region": "us-east-1", "endpoint": "http://localstack:4566",
                      "credentialsSecretRef": {"name": "db"}},
        }));
        let unlabelled = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": NS},
            "data": {"AWS_ACCESS_KEY_ID": "QUtJREVYQU1QTEU=", "AWS_SECRET_ACCESS_KEY": "czNjcjN0Cg=="}});
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(
                        Method::GET,
                        deployment_path(),
                        Reply::Json(existing_deployment(&pool, 2, 2)),
                    ),
                    Expect::new(
                        Method::GET,
                        format!("/api/v1/namespaces/{NS}/secrets/db"),
                        Reply::Json(unlabelled),
                    ),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["reason"], "SecretNotOptedIn");
                        let note = body["note"].as_str().unwrap();
                        assert!(note.contains("queueworker.io/credentials"), "{note}");
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)).check(|body| {
                        let ready = condition(&body["status"], "Ready");
                        assert_eq!(
                            (&ready["status"], &ready["reason"]),
                            (&json!("False"), &json!("SecretNotOptedIn"))
                        );
                    }),
                ],
            )
            .await;
        let error = result.unwrap_err();
        assert!(matches!(error, crate::Error::Refused(_)), "{error}");
        assert!(
            test.queue.targets.lock().unwrap().is_empty(),
            "its values are never sent anywhere"
        );
        assert_eq!(
            crate::error_policy(Arc::new(pool), &error, test.ctx.clone()),
            Action::requeue(Duration::from_secs(5)),
            "labelling the Secret fixes it: retried"
        );
    }

    #[tokio::test]
    async fn a_hand_edit_of_the_template_is_undone_at_the_next_resync() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth {
            visible: 10,
            in_flight: 0,
            delayed: 0,
        }));
        let pool = test_pool(json!({}));
        // `kubectl set image`: the operator's hash annotation is still there and right.
        let mut edited = existing_deployment(&pool, 2, 2);
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone-else:latest");
        // Within the resync period the hash says "up to date": nothing is applied.
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(edited.clone())),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        // Once the resync period has passed, the pool's template is applied again.
        Arc::get_mut(&mut test.ctx)
            .expect("no other reference")
            .resync = Duration::ZERO;
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(edited)),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo).check(|body| {
                        assert_eq!(
                            body["spec"]["template"]["spec"]["containers"][0]["image"],
                            "qwp-worker:dev"
                        );
                        assert_eq!(body["spec"]["replicas"], 2);
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn credentials_come_from_the_pools_secret() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let pool = test_pool(json!({
            "queue": {"name": "thumbs", "region": "eu-west-1",
                      "credentialsSecretRef": {"name": "aws"}},
        }));
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "aws", "namespace": NS, "labels": {"queueworker.io/credentials": "true"}},
            // base64 of "AKIDEXAMPLE" and "s3cr3t\n" (a trailing newline is ignored)
            "data": {"AWS_ACCESS_KEY_ID": "QUtJREVYQU1QTEU=", "AWS_SECRET_ACCESS_KEY": "czNjcjN0Cg=="}});
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(Method::GET, format!("/api/v1/namespaces/{NS}/secrets/aws"), Reply::Json(secret)),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["spec"]["replicas"], 0, "an empty queue keeps a new pool at zero");
                        assert_eq!(env_value(body, "SQS_REQ_QUEUE_NAME"), Some(&json!("thumbs")));
                        assert_eq!(
                            env_value(body, "AWS_SECRET_ACCESS_KEY"),
                            Some(&json!({"secretKeyRef": {"name": "aws", "key": "AWS_SECRET_ACCESS_KEY", "optional": false}}))
                        );
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        let target = test.queue.targets.lock().unwrap()[0].clone();
        let credentials = target.credentials.expect("keys from the Secret");
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key, "s3cr3t");
        assert_eq!(target.name.as_deref(), Some("thumbs"));
    }

    #[tokio::test]
    async fn missing_secret_is_an_unreachable_queue_not_a_crash() {
        let mut test = Context::test(FakeProbe::default());
        let pool = test_pool(json!({
            "queue": {"url": QUEUE_URL, "region": "us-east-1", "credentialsSecretRef": {"name": "nope"}},
        }));
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(
                        Method::GET,
                        deployment_path(),
                        Reply::Json(existing_deployment(&pool, 2, 2)),
                    ),
                    Expect::new(
                        Method::GET,
                        format!("/api/v1/namespaces/{NS}/secrets/nope"),
                        Reply::NotFound,
                    ),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert!(
                            body["note"].as_str().unwrap().contains("SecretNotFound"),
                            "{body}"
                        );
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)).check(|body| {
                        let reachable = condition(&body["status"], "QueueReachable");
                        assert_eq!(reachable["reason"], "SecretNotFound");
                        assert_eq!(body["status"]["desiredReplicas"], 2);
                    }),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(
            test.queue.targets.lock().unwrap().is_empty(),
            "SQS is not called without keys"
        );
    }

    #[tokio::test]
    async fn a_rejected_deployment_is_reported_and_retried_with_backoff() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth {
            visible: 1,
            in_flight: 0,
            delayed: 0,
        }));
        let pool = test_pool(json!({}));
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(
                        Method::PATCH,
                        deployment_path(),
                        Reply::Error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
                    ),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Warning");
                        assert_eq!(body["reason"], "DeploymentApplyFailed");
                    }),
                    // The status says why, with the API server's own message.
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)).check(|body| {
                        let ready = condition(&body["status"], "Ready");
                        assert_eq!(
                            (&ready["status"], &ready["reason"]),
                            (&json!("False"), &json!("DeploymentApplyFailed"))
                        );
                        let message = ready["message"].as_str().unwrap();
                        assert!(message.contains("Invalid (mocked)"), "{message}");
                    }),
                ],
            )
            .await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, crate::Error::DeploymentApply { .. }),
            "{error}"
        );
        let pool = Arc::new(pool);
        let first = crate::error_policy(pool.clone(), &error, test.ctx.clone());
        let second = crate::error_policy(pool, &error, test.ctx.clone());
        assert_eq!(first, Action::requeue(Duration::from_secs(5)));
        assert_eq!(second, Action::requeue(Duration::from_secs(10)));
        assert!(
            test.ctx
                .metrics
                .encode()
                .contains(r#"qwp_operator_reconcile_errors_total{error="deployment_apply"} 2"#)
        );
    }

    #[tokio::test]
    async fn a_deployment_of_someone_else_is_not_taken_over_and_the_pool_waits() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let mut pool = test_pool(json!({}));
        let foreign = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": POOL, "namespace": NS},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}},
                                  "spec": {"containers": [{"name": "x", "image": "x"}]}}}});
        let status = Arc::new(Mutex::new(Value::Null));
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(foreign.clone())),
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Warning");
                        assert_eq!(body["reason"], "DeploymentNotOwned");
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool))
                        .check(keep(&status)),
                ],
            )
            .await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, crate::Error::DeploymentNotOwned(_)),
            "{error}"
        );
        assert!(
            test.queue.targets.lock().unwrap().is_empty(),
            "a pool that cannot act does not read its queue"
        );
        let written = status.lock().unwrap()["status"].clone();
        let ready = condition(&written, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("DeploymentNotOwned"))
        );
        assert_eq!(ready["message"], error.to_string());
        let action = crate::error_policy(Arc::new(pool.clone()), &error, test.ctx.clone());
        assert_eq!(
            action,
            Action::await_change(),
            "no retry: only a change helps"
        );

        // Woken again (by the status write, or the foreign Deployment changing): the status
        // says so already, so nothing is written or announced.
        pool.status = Some(serde_json::from_value::<QueueWorkerPoolStatus>(written).unwrap());
        let result = test
            .reconcile(
                &pool,
                vec![Expect::new(
                    Method::GET,
                    deployment_path(),
                    Reply::Json(foreign),
                )],
            )
            .await;
        assert!(matches!(result, Err(crate::Error::DeploymentNotOwned(_))));
    }

    #[tokio::test]
    async fn an_invalid_spec_waits_for_a_change_and_says_why() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let mut pool = test_pool(json!({"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "qwp-worker:dev"}]}}}));
        let status = Arc::new(Mutex::new(Value::Null));
        // Validation comes first: no Deployment read, no queue read, only the report.
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::POST, events_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["type"], "Warning");
                        assert_eq!(body["reason"], "InvalidSpec");
                        let note = body["note"].as_str().unwrap();
                        assert!(note.contains("restartPolicy is Never"), "{note}");
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool))
                        .check(keep(&status)),
                ],
            )
            .await;
        let error = result.unwrap_err();
        assert!(matches!(error, crate::Error::InvalidSpec(_)), "{error}");
        assert!(test.queue.targets.lock().unwrap().is_empty());
        let written = status.lock().unwrap()["status"].clone();
        assert_eq!(written["observedGeneration"], 1);
        let ready = condition(&written, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("InvalidSpec"))
        );

        // A permanent error does not back off: every failure waits for a change.
        let shared = Arc::new(pool.clone());
        for _ in 0..3 {
            assert_eq!(
                crate::error_policy(shared.clone(), &error, test.ctx.clone()),
                Action::await_change()
            );
        }
        assert!(
            test.ctx
                .metrics
                .encode()
                .contains(r#"qwp_operator_reconcile_errors_total{error="invalid_spec"} 3"#)
        );

        // The status write wakes the pool once more: already reported, no request at all.
        pool.status = Some(serde_json::from_value::<QueueWorkerPoolStatus>(written).unwrap());
        let result = test.reconcile(&pool, vec![]).await;
        assert!(matches!(result, Err(crate::Error::InvalidSpec(_))));

        // The fix is the change it waited for: the pool gets its Deployment and is Ready.
        let mut fixed = test_pool(json!({}));
        fixed.metadata.generation = Some(2);
        fixed.status = pool.status.clone();
        let result = test
            .reconcile(
                &fixed,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo).check(|body| {
                        assert_eq!(body["spec"]["replicas"], 0);
                        assert_eq!(
                            body["spec"]["template"]["spec"]["restartPolicy"],
                            Value::Null
                        );
                    }),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&fixed)).check(|body| {
                        let ready = condition(&body["status"], "Ready");
                        assert_eq!(
                            (&ready["status"], &ready["reason"]),
                            (&json!("True"), &json!("ReplicasReady"))
                        );
                        assert_eq!(body["status"]["observedGeneration"], 2);
                    }),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn transient_errors_back_off_until_a_success_resets_them() {
        let mut test = Context::test(FakeProbe::default());
        test.queue.set(Ok(QueueDepth::default()));
        let pool = test_pool(json!({}));
        let shared = Arc::new(pool.clone());
        let unavailable = || {
            vec![Expect::new(
                Method::GET,
                deployment_path(),
                Reply::Error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            )]
        };
        let mut delays = Vec::new();
        for _ in 0..3 {
            let error = test.reconcile(&pool, unavailable()).await.unwrap_err();
            assert!(
                matches!(error, crate::Error::Kube(_)) && !error.is_permanent(),
                "{error}"
            );
            delays.push(crate::error_policy(
                shared.clone(),
                &error,
                test.ctx.clone(),
            ));
        }
        assert_eq!(
            delays,
            [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
        );
        assert!(
            test.queue.targets.lock().unwrap().is_empty(),
            "no queue read without the Deployment"
        );

        // A success ends the run of failures: the next one starts at the base delay again.
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        let error = test.reconcile(&pool, unavailable()).await.unwrap_err();
        assert_eq!(
            crate::error_policy(shared, &error, test.ctx.clone()),
            Action::requeue(Duration::from_secs(5))
        );
    }

    thread_local! {
        /// Where the log lines of this thread go, if a test captures them.
        static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// A log writer that keeps the lines of threads that asked for them and drops the rest.
    struct ThreadCapture;

    impl std::io::Write for ThreadCapture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buffer) = c.borrow().as_ref() {
                    buffer.lock().unwrap().extend_from_slice(bytes);
                }
            });
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Captures this thread's log lines. The subscriber is process-wide: a scoped one races
    /// with other test threads over tracing's global callsite-interest and max-level caches
    /// (an INFO span could be cached as disabled while a WARN event still got through).
    fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| ThreadCapture)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber");
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        buffer
    }

    #[tokio::test]
    async fn every_log_line_of_a_reconcile_names_the_pool() {
        // The test runtime has one thread: the reconcile and the mocked API server run on it.
        let logs = capture_logs();

        let mut test = Context::test(FakeProbe::default());
        test.queue
            .set(Err(QueueError::new("DispatchFailure", "no route to host")));
        let pool = test_pool(json!({}));
        let result = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::NotFound),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo),
                    Expect::new(Method::POST, events_path(), Reply::Echo),
                    Expect::new(Method::PATCH, status_path(), pool_reply(&pool)),
                ],
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().any(|l| l.contains("queue depth unreadable")),
            "{text}"
        );
        for line in lines {
            assert!(
                line.contains(&format!("reconcile{{namespace={NS} pool={POOL}}}")),
                "a line outside the reconcile span: {line}"
            );
        }
    }
}
