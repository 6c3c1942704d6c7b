//! The API server of a test, installed with the chart into the test's namespace (operator
//! off) and pointed at the test's buckets and queue; jobs go through its Service.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use qwp_jobs::JobId;
use qwp_jobs::testing::TestStack;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cmd;
use crate::harness::TestEnv;
use crate::install::operator_wake_address;
use crate::pool::AWS_SECRET;
use crate::settings::Settings;

pub const RELEASE: &str = "api";
const SERVICE: &str = "api-qwp-api-server";

/// How the test process reaches the Service: its ClusterIP when the host routes Service
/// addresses (kube-proxy on this machine, as on the local cluster), else `kubectl
/// port-forward svc/...` (kind).
pub struct ApiServer {
    pub base_url: String,
    pub via: &'static str,
    _port_forward: Option<Child>,
}

/// `helm install api charts/qwp --set operator.enabled=false,apiServer.enabled=true ...`
pub async fn install(env: &TestEnv, stack: &TestStack) -> ApiServer {
    install_with(env, stack, &[]).await
}

/// [`install`] with more `--set` values (e.g. the chart's sample pool).
pub async fn install_with(env: &TestEnv, stack: &TestStack, extra: &[&str]) -> ApiServer {
    let s = Settings::get();
    let chart = s.chart_dir().to_string_lossy().into_owned();
    let mut sets = vec![
        "operator.enabled=false".to_string(),
        "apiServer.enabled=true".to_string(),
        "apiServer.logLevel=warn".to_string(),
        // helm's --set splits values on commas: escape the list's.
        format!(
            "apiServer.operatorWakeAddress={}",
            operator_wake_address(&env.client).await.replace(',', "\\,")
        ),
        format!("image.tag={}", s.image_tag),
        format!("image.registry={}", s.image_registry),
        format!("aws.endpoint={}", s.pod_aws_endpoint),
        format!("aws.region={}", s.region),
        format!("aws.credentials.existingSecret={AWS_SECRET}"),
        format!("jobs.inBucket={}", stack.config.s3_in_bucket),
        format!("jobs.outBucket={}", stack.config.s3_out_bucket),
        format!("jobs.queueName={}", stack.config.sqs_req_queue_name),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let mut args: Vec<String> = [
        "install",
        RELEASE,
        &chart,
        "--namespace",
        &env.ns,
        "--skip-crds",
        "--wait",
        "--timeout",
        "120s",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for set in sets {
        args.push("--set".into());
        args.push(set);
    }
    let out = cmd::run_async("helm", args).await;
    assert!(
        out.ok,
        "helm install of the API server failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    connect(env).await
}

async fn connect(env: &TestEnv) -> ApiServer {
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let service = services
        .get(SERVICE)
        .await
        .expect("the API server Service exists");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let direct = format!("http://{cluster_ip}:8000");
    // kube-proxy programs the Service a moment after the pod is Ready: try for a few seconds.
    for _ in 0..10 {
        if http
            .get(format!("{direct}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return ApiServer {
                base_url: direct,
                via: "ClusterIP",
                _port_forward: None,
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    port_forward(env).await
}

async fn port_forward(env: &TestEnv) -> ApiServer {
    let mut child = Command::new("kubectl")
        .args([
            "-n",
            &env.ns,
            "port-forward",
            &format!("svc/{SERVICE}"),
            ":8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start kubectl port-forward");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    // "Forwarding from 127.0.0.1:41234 -> 8000"
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("kubectl port-forward printed its local port");
    // Keep reading: kubectl prints a line per connection and dies of SIGPIPE if nobody reads.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ApiServer {
        base_url: format!("http://127.0.0.1:{port}"),
        via: "kubectl port-forward",
        _port_forward: Some(child),
    }
}

impl ApiServer {
    /// `POST /jobs?wait=0&filename=...` with a raw body: the job is accepted (202) and its id
    /// returned without waiting for the result.
    pub async fn submit(
        &self,
        http: &reqwest::Client,
        filename: &str,
        body: Vec<u8>,
    ) -> Result<JobId, String> {
        let response = http
            .post(format!("{}/jobs?wait=0&filename={filename}", self.base_url))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST /jobs: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("read the answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST /jobs answered {status}: {text}"));
        }
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("answer is not JSON ({e}): {text}"))?;
        json.get("job_id")
            .and_then(|v| v.as_str())
            .and_then(|id| id.parse::<JobId>().ok())
            .ok_or_else(|| format!("answer has no job_id: {text}"))
    }
}

/// The Prometheus text of every API server pod of the test (their `admin` container port,
/// which the Service does not expose; the host routes pod IPs on the local cluster),
/// concatenated; `Err` naming what could not be read.
pub async fn scrape_metrics(env: &TestEnv) -> Result<String, String> {
    let selector =
        format!("app.kubernetes.io/name=qwp-api-server,app.kubernetes.io/instance={RELEASE}");
    scrape_pods(&env.client, &env.ns, &selector).await
}

/// The Prometheus text of every pod in `ns` matching `selector`, read from its container
/// port named `admin`, concatenated.
pub async fn scrape_pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<String, String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| format!("list the pods {selector}: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut text = String::new();
    for pod in list.items {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let admin = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("admin"))
            .map(|p| p.container_port);
        let (Some(ip), Some(port)) = (ip, admin) else {
            return Err(format!("a pod {selector} without an IP or admin port"));
        };
        let url = format!("http://{ip}:{port}/metrics");
        let body = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        text.push_str(&body);
    }
    Ok(text)
}
