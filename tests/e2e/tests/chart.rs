//! Chart checks that need no cluster (run by `make unit` too).

use std::path::PathBuf;

use qwp_e2e::chart::{Pod, ingress_allowed, lint, object, of_kind, render, selects};
use qwp_pool::QueueWorkerPool;
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::POOL_LABEL;
use qwp_pool::deployment::build_deployment;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn chart_crd_is_byte_identical_to_the_generated_crd() {
    let generated = std::fs::read(repo().join("crds/queueworkerpool.yaml"))
        .expect("read crds/queueworkerpool.yaml");
    let in_chart = std::fs::read(repo().join("charts/qwp/crds/queueworkerpool.yaml"))
        .expect("read charts/qwp/crds/queueworkerpool.yaml");
    assert!(
        generated == in_chart,
        "charts/qwp/crds/queueworkerpool.yaml differs from crds/queueworkerpool.yaml: run `make crds` (it copies the CRD into the chart)"
    );
}

#[test]
fn chart_crd_is_the_crd_the_operator_types_generate() {
    let in_chart = std::fs::read_to_string(repo().join("charts/qwp/crds/queueworkerpool.yaml"))
        .expect("read the chart's CRD");
    assert_eq!(
        in_chart,
        qwp_pool::crd::crd_yaml(),
        "the chart's CRD is stale: run `make crds`"
    );
}

// The optional extras (monitoring, dashboard, NetworkPolicy, PDBs), rendered by `helm template`.

const RELEASE: &str = "r";
const NAMESPACE: &str = "qwp-system";
const OPERATOR: &str = "r-qwp-operator";
const API_SERVER: &str = "r-qwp-api-server";
const WORKERS: &str = "r-qwp-workers";
/// Where the sample pool (and so its workers) lives in these renders.
const POOL_NAMESPACE: &str = "jobs";

/// Every extra on, the API server with two replicas, the sample pool, pools watched in
/// POOL_NAMESPACE.
const EVERYTHING: &[&str] = &[
    "apiServer.enabled=true",
    "apiServer.replicas=2",
    "samplePool.enabled=true",
    "monitoring.enabled=true",
    "grafanaDashboard.enabled=true",
    "networkPolicy.enabled=true",
    "operator.watchNamespace=jobs",
];

fn everything() -> Vec<Value> {
    render(RELEASE, NAMESPACE, EVERYTHING)
}

fn deployment_pod(objects: &[Value], name: &str) -> Pod {
    Pod::of_template(
        NAMESPACE,
        &object(objects, "Deployment", name)["spec"]["template"],
    )
}

/// The pod the operator creates for the chart's sample pool: the real Deployment builder on
/// the rendered QueueWorkerPool.
fn sample_worker_pod(objects: &[Value]) -> (Pod, u16) {
    let mut rendered = of_kind(objects, "QueueWorkerPool")
        .first()
        .copied()
        .expect("the sample pool is rendered")
        .clone();
    rendered["metadata"]["namespace"] = json!(POOL_NAMESPACE);
    let pool: QueueWorkerPool = serde_json::from_value(rendered).expect("a valid pool");
    let admin_port =
        object(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "QWP_WORKER_ADMIN_PORT")
            .and_then(|e| e["value"].as_str()?.parse::<u16>().ok())
            .expect("the operator is told the workers' admin port");
    let deployment = build_deployment(&pool, 1, admin_port).expect("pool Deployment");
    let template = serde_json::to_value(deployment.spec.unwrap().template).unwrap();
    (Pod::of_template(POOL_NAMESPACE, &template), admin_port)
}

#[test]
fn chart_lints_with_defaults_and_with_every_extra() {
    lint(&[]);
    lint(EVERYTHING);
}

#[test]
fn defaults_render_no_extra_that_needs_a_crd_or_changes_traffic() {
    let objects = render(RELEASE, NAMESPACE, &[]);
    for kind in ["PodMonitor", "ServiceMonitor", "NetworkPolicy", "ConfigMap"] {
        assert!(
            of_kind(&objects, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    assert!(
        objects
            .iter()
            .all(|o| o["apiVersion"] != "monitoring.coreos.com/v1")
    );
    pdbs_follow_replicas(&objects);
}

/// A PDB exactly for the components with more than one replica, selecting their pods.
fn pdbs_follow_replicas(objects: &[Value]) {
    for name in [OPERATOR, API_SERVER] {
        let Some(deployment) = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        else {
            continue;
        };
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        let pdb = objects
            .iter()
            .find(|o| o["kind"] == "PodDisruptionBudget" && o["metadata"]["name"] == name);
        assert_eq!(
            pdb.is_some(),
            replicas > 1,
            "{name}: {replicas} replicas, PDB {pdb:?}"
        );
        if let Some(pdb) = pdb {
            assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{name}");
            assert!(
                selects(
                    &pdb["spec"]["selector"],
                    &deployment_pod(objects, name).labels
                ),
                "{name}'s PDB selects its pods"
            );
        }
    }
}

#[test]
fn pdbs_cover_replicated_components() {
    let objects = everything();
    pdbs_follow_replicas(&objects);
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "PodDisruptionBudget" && o["metadata"]["name"] == API_SERVER),
        "two API server replicas get a PDB"
    );
}

#[test]
fn pod_monitors_scrape_the_metrics_ports_of_the_pods_they_select() {
    let objects = everything();
    for name in [OPERATOR, API_SERVER] {
        let monitor = object(&objects, "PodMonitor", name);
        let pod = deployment_pod(&objects, name);
        assert!(
            selects(&monitor["spec"]["selector"], &pod.labels),
            "{name}'s PodMonitor selects its pods"
        );
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["path"], qwp_runtime::metrics::PATH, "{name}");
        let port = endpoint["port"].as_str().expect("a named port");
        assert!(
            pod.ports.contains_key(port),
            "{name} declares the port {port} its PodMonitor scrapes: {:?}",
            pod.ports
        );
        assert!(
            monitor["spec"]["namespaceSelector"].is_null(),
            "{name}: its own namespace"
        );
    }
    assert_eq!(
        object(&objects, "PodMonitor", OPERATOR)["spec"]["podMetricsEndpoints"][0]["honorLabels"],
        true,
        "the operator's pool series keep their namespace label"
    );

    let workers = object(&objects, "PodMonitor", WORKERS);
    let (worker, admin_port) = sample_worker_pod(&objects);
    assert_eq!(admin_port, DEFAULT_ADMIN_PORT, "the chart's default");
    assert!(
        selects(&workers["spec"]["selector"], &worker.labels),
        "the workers' PodMonitor selects the pods the operator creates: {:?}",
        worker.labels
    );
    let api_pod = deployment_pod(&objects, API_SERVER);
    let operator_pod = deployment_pod(&objects, OPERATOR);
    for other in [&api_pod, &operator_pod] {
        assert!(!selects(&workers["spec"]["selector"], &other.labels));
    }
    assert_eq!(
        workers["spec"]["namespaceSelector"],
        json!({"matchNames": [POOL_NAMESPACE]}),
        "the watched namespace"
    );
    let endpoint = &workers["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], qwp_runtime::metrics::PATH);
    let relabelings = endpoint["relabelings"].as_array().unwrap();
    let keep = relabelings
        .iter()
        .find(|r| r["action"] == "keep")
        .expect("a keep on the admin port");
    assert_eq!(
        keep["sourceLabels"],
        json!(["__meta_kubernetes_pod_container_port_number"])
    );
    assert_eq!(keep["regex"], admin_port.to_string());
    assert!(
        worker.ports.values().any(|p| *p == admin_port),
        "the sample pool declares the admin port the PodMonitor keeps: {:?}",
        worker.ports
    );
    // Prometheus' pod label meta name: every character outside [a-zA-Z0-9_] becomes `_`.
    let meta = format!(
        "__meta_kubernetes_pod_label_{}",
        POOL_LABEL.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    assert!(
        relabelings
            .iter()
            .any(|r| r["sourceLabels"] == json!([meta]) && r["targetLabel"] == "pool"),
        "the pool label comes from {meta}: {relabelings:?}"
    );

    let everywhere = render(
        RELEASE,
        NAMESPACE,
        &["monitoring.enabled=true", "monitoring.labels.release=prom"],
    );
    let workers = object(&everywhere, "PodMonitor", WORKERS);
    assert_eq!(workers["spec"]["namespaceSelector"], json!({"any": true}));
    assert_eq!(workers["metadata"]["labels"]["release"], "prom");
    assert!(
        of_kind(&everywhere, "PodMonitor")
            .iter()
            .all(|m| m["metadata"]["name"] != API_SERVER),
        "no API server, no API server PodMonitor"
    );
}

#[test]
fn the_dashboard_config_map_carries_the_dashboard_file_for_the_sidecar() {
    let objects = everything();
    let config_map = object(&objects, "ConfigMap", "r-qwp-dashboard");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(config_map["metadata"]["namespace"], NAMESPACE);
    let in_chart: Value = serde_json::from_str(
        config_map["data"]["qwp.json"]
            .as_str()
            .expect("qwp.json in the ConfigMap"),
    )
    .expect("the ConfigMap's dashboard is JSON");
    let file = std::fs::read_to_string(repo().join("docs/grafana/qwp.json"))
        .expect("read docs/grafana/qwp.json");
    assert_eq!(in_chart, serde_json::from_str::<Value>(&file).unwrap());

    let elsewhere = render(
        RELEASE,
        NAMESPACE,
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.annotations.grafana_folder=qwp",
        ],
    );
    let config_map = object(&elsewhere, "ConfigMap", "r-qwp-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "qwp"
    );
}

#[test]
fn network_policies_open_the_public_port_and_admin_ports_only_to_their_callers() {
    let objects = everything();
    let policies = of_kind(&objects, "NetworkPolicy");
    let operator = deployment_pod(&objects, OPERATOR);
    let api = deployment_pod(&objects, API_SERVER);
    let (worker, worker_admin) = sample_worker_pod(&objects);
    let client = Pod::plain("shop", &[("app", "checkout")]);
    let scraper = Pod::plain("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
    let neighbour = Pod::plain(NAMESPACE, &[("app", "other")]);
    let port = |pod: &Pod, name: &str| -> u16 {
        *pod.ports
            .get(name)
            .unwrap_or_else(|| panic!("port {name} in {:?}", pod.ports))
    };
    let allowed = |from: &Pod, to: &Pod, p: u16| ingress_allowed(&policies, from, to, p);

    // The public API port: anyone.
    for from in [&client, &scraper, &neighbour, &worker] {
        assert!(allowed(from, &api, port(&api, "http")), "{from:?} → API");
    }
    // Admin ports: only the scraper (and, for workers, the operator).
    for to in [&api, &operator] {
        let admin = port(to, "admin");
        assert!(allowed(&scraper, to, admin), "scraper → {:?}", to.labels);
        for from in [&client, &neighbour, &worker] {
            assert!(
                !allowed(from, to, admin),
                "{from:?} → admin of {:?}",
                to.labels
            );
        }
    }
    assert!(
        allowed(&operator, &worker, worker_admin),
        "operator → /status"
    );
    // Wake-up hints: the API server's pods reach the operator's admin port.
    assert!(
        allowed(&api, &operator, port(&operator, "admin")),
        "API server → operator wake-up"
    );
    // Completion hints: pool pods reach the API server's internal port, nobody else does.
    let internal = port(&api, "internal");
    assert!(allowed(&worker, &api, internal), "worker → API hints");
    for from in [&client, &scraper, &neighbour, &operator] {
        assert!(!allowed(from, &api, internal), "{from:?} → API hints");
    }
    assert!(allowed(&scraper, &worker, worker_admin), "scraper → worker");
    for from in [&client, &api, &neighbour, &Pod::plain(POOL_NAMESPACE, &[])] {
        assert!(!allowed(from, &worker, worker_admin), "{from:?} → worker");
    }
    // An operator of another release (same labels' name, other instance) is no operator here.
    let other_operator = Pod {
        labels: operator
            .labels
            .iter()
            .map(|(k, v)| {
                let v = if k == "app.kubernetes.io/instance" {
                    "x"
                } else {
                    v
                };
                (k.clone(), v.to_string())
            })
            .collect(),
        ..operator.clone()
    };
    assert!(!allowed(&other_operator, &worker, worker_admin));
    // Nothing else on any port.
    for to in [&api, &operator, &worker] {
        assert!(
            !allowed(&operator, to, 4566),
            "unlisted port on {:?}",
            to.labels
        );
    }
    assert!(
        policies
            .iter()
            .all(|p| p["spec"]["policyTypes"] == json!(["Ingress"])),
        "egress is left alone"
    );

    // Clients restricted: only the listed peers reach the public port.
    let restricted = render(
        RELEASE,
        NAMESPACE,
        &[
            "apiServer.enabled=true",
            "networkPolicy.enabled=true",
            "networkPolicy.apiClients[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx",
        ],
    );
    let policies = of_kind(&restricted, "NetworkPolicy");
    let api = deployment_pod(&restricted, API_SERVER);
    let ingress = Pod::plain("ingress-nginx", &[("app", "controller")]);
    assert!(ingress_allowed(
        &policies,
        &ingress,
        &api,
        port(&api, "http")
    ));
    assert!(!ingress_allowed(
        &policies,
        &client,
        &api,
        port(&api, "http")
    ));
    // No watched namespace: the workers' policy goes to the release namespace.
    let worker_policies: Vec<_> = policies
        .iter()
        .filter(|p| p["metadata"]["name"] == WORKERS)
        .collect();
    assert_eq!(worker_policies.len(), 1);
    assert_eq!(worker_policies[0]["metadata"]["namespace"], NAMESPACE);
}
