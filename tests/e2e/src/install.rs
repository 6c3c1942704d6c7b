//! The operator, installed once per suite run with the chart (`helm upgrade --install
//! --wait`), as a user would install it.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::cmd;
use crate::settings::Settings;

/// The label selector of the operator's pods.
pub const OPERATOR_PODS: &str = "app.kubernetes.io/name=qwp-operator";

static INSTALLED: Mutex<bool> = Mutex::new(false);

/// The Lease the operator replicas elect their leader on (named like the operator Deployment).
pub fn operator_lease_name() -> String {
    Settings::get().operator_deployment()
}

/// Where an API server of the suite sends wake-up hints (`OPERATOR_WAKE_ADDRESS`): the
/// running operator pods' IPs on the admin port, comma-separated, since the local cluster has
/// no DNS for the chart's headless Service; that Service's name when no pod has an IP yet.
/// A replica restarted later (tests 5 and 9) gets a new IP: hints to it are lost and the
/// queue poll takes over, as for any lost hint.
pub async fn operator_wake_address(client: &Client) -> String {
    let s = Settings::get();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &s.operator_namespace);
    let port = qwp_pool::contract::DEFAULT_OPERATOR_ADMIN_PORT;
    let addresses: Vec<String> = pods
        .list(&ListParams::default().labels(OPERATOR_PODS))
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pod| pod.status?.pod_ip)
        .map(|ip| format!("{ip}:{port}"))
        .collect();
    if addresses.is_empty() {
        s.operator_wake_service()
    } else {
        addresses.join(",")
    }
}

/// `scheme://host:*` of `endpoint`: the allowlist entry for every port of that host.
fn any_port(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    format!("{scheme}://{host}:*")
}

/// Installs (or upgrades) the chart with the operator into the operator namespace and waits
/// for it to be Ready. Runs helm once per test binary; later calls return at once.
pub fn ensure_operator_installed() {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return;
    }
    let s = Settings::get();
    let chart = s.chart_dir();
    let chart = chart.to_str().expect("chart path is UTF-8");
    // A new annotation per run rolls the operator pod, so freshly loaded images are used.
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    );
    let mut sets = vec![
        format!("image.tag={}", s.image_tag),
        format!("image.registry={}", s.image_registry),
        "operator.logLevel=info".to_string(),
        format!("operator.podAnnotations.qwp-e2e-run={run_id}"),
        // Hand edits of a worker Deployment are undone within 10 s (test t11).
        "operator.resyncSeconds=10".to_string(),
        // LocalStack and the outage test's proxy, both on the host pods reach LocalStack at.
        format!(
            "operator.allowedEndpoints={{https://sqs.*.amazonaws.com,{}}}",
            any_port(&s.pod_aws_endpoint)
        ),
    ];
    if let Some(extra) = &s.extra_helm_set {
        sets.push(extra.clone());
    }
    let mut args = vec![
        "upgrade",
        "--install",
        &s.release,
        chart,
        "--namespace",
        &s.operator_namespace,
        "--reset-then-reuse-values",
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    ];
    for set in &sets {
        // Strings: a numeric annotation value must stay a string.
        args.push("--set-string");
        args.push(set);
    }
    let started = std::time::Instant::now();
    // helm installs a chart's crds/ only on first install and never upgrades them, so a
    // cluster kept from an earlier run would validate pools against an old schema (and prune
    // new fields). Apply them first, as docs/helm.md tells users to after a change of the types.
    let crds = s.chart_dir().join("crds");
    let crds = crds.to_str().expect("chart path is UTF-8");
    cmd::must(
        "kubectl",
        &["apply", "--server-side", "--force-conflicts", "-f", crds],
    );
    cmd::must("helm", &args);
    eprintln!(
        "[e2e] helm upgrade --install {} in {} took {:.1} s",
        s.release,
        s.operator_namespace,
        started.elapsed().as_secs_f64()
    );
    *installed = true;
}
