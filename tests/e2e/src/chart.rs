//! The chart as `helm template` renders it, read back as JSON objects, and the two Kubernetes
//! rules the chart's extras rely on: label selectors and NetworkPolicy ingress. Used by
//! `tests/chart.rs` (no cluster).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cmd;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// helm: `QWP_HELM`, else the one on PATH, else the one `make cluster-helm` builds into
/// `.cache/cluster/<version>/bin` (`QWP_CLUSTER_CACHE` moves `.cache/cluster`).
pub fn helm_binary() -> PathBuf {
    if let Some(helm) = std::env::var_os("QWP_HELM") {
        return PathBuf::from(helm);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("helm"))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    let cache = std::env::var_os("QWP_CLUSTER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/cluster"));
    std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/helm"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "helm not found (QWP_HELM, PATH, {}/<version>/bin): run `make cluster-helm`",
                cache.display()
            )
        })
}

/// `helm template <release> charts/qwp -n <namespace> --set <set>...`, one JSON value per
/// rendered object.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = repo_root().join("charts/qwp");
    let mut args = vec![
        "template",
        release,
        chart.to_str().expect("chart path is UTF-8"),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let helm = helm_binary();
    let out = cmd::run(helm.to_str().expect("helm path is UTF-8"), &args);
    assert!(
        out.ok,
        "helm {} failed:\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    serde_yaml::Deserializer::from_str(&out.stdout)
        .map(|doc| Value::deserialize(doc).expect("helm renders YAML"))
        .filter(|object| !object.is_null())
        .collect()
}

/// `helm lint --strict charts/qwp --set <set>...` must pass.
pub fn lint(sets: &[&str]) {
    let chart = repo_root().join("charts/qwp");
    let mut args = vec![
        "lint",
        "--strict",
        chart.to_str().expect("chart path is UTF-8"),
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let helm = helm_binary();
    let out = cmd::run(helm.to_str().expect("helm path is UTF-8"), &args);
    assert!(
        out.ok,
        "helm {} failed:\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
}

/// The rendered objects of `kind`.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one rendered object of `kind` named `name`.
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

pub type Labels = BTreeMap<String, String>;

/// Labels from a JSON object of strings (a missing one: no labels).
pub fn labels(value: &Value) -> Labels {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `LabelSelector` (matchLabels and matchExpressions) selects `labels`, as the API
/// server evaluates it. An empty selector selects everything.
pub fn selects(selector: &Value, of: &Labels) -> bool {
    let by_label = labels(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| of.get(k) == Some(v));
    let by_expression = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|expression| {
            let key = expression["key"].as_str().expect("expression key");
            let values: Vec<&str> = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let value = of.get(key).map(String::as_str);
            match expression["operator"]
                .as_str()
                .expect("expression operator")
            {
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                other => panic!("unknown selector operator {other}"),
            }
        });
    by_label && by_expression
}

/// A pod as NetworkPolicies see it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub labels: Labels,
    /// Named container ports (`ports[].name` → `containerPort`).
    pub ports: BTreeMap<String, u16>,
}

impl Pod {
    /// The pod a Deployment (or a pool's Deployment) creates, in `namespace`.
    pub fn of_template(namespace: &str, template: &Value) -> Pod {
        let ports = template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    u16::try_from(p["containerPort"].as_u64()?).ok()?,
                ))
            })
            .collect();
        Pod {
            namespace: namespace.to_string(),
            labels: labels(&template["metadata"]["labels"]),
            ports,
        }
    }

    /// A pod with only labels (a client, a scraper).
    pub fn plain(namespace: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: BTreeMap::new(),
        }
    }

    /// The labels the API server gives every namespace.
    fn namespace_labels(&self) -> Labels {
        Labels::from([(
            "kubernetes.io/metadata.name".to_string(),
            self.namespace.clone(),
        )])
    }
}

/// Whether `policies` let `from` open a TCP connection to `port` of `to`, as Kubernetes
/// defines NetworkPolicy ingress: a pod no policy selects accepts everything; a selected pod
/// accepts what any rule of any selecting policy allows (a rule: its ports, or every port
/// when it names none; its peers, or every source when it names none).
pub fn ingress_allowed(policies: &[&Value], from: &Pod, to: &Pod, port: u16) -> bool {
    let selecting: Vec<&&Value> = policies
        .iter()
        .filter(|p| namespace_of(p, &to.namespace) == to.namespace)
        .filter(|p| selects(&p["spec"]["podSelector"], &to.labels))
        .filter(|p| {
            p["spec"]["policyTypes"]
                .as_array()
                .is_none_or(|types| types.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|policy| {
        let policy_ns = namespace_of(policy, &to.namespace);
        policy["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule_ports_match(rule, to, port) && rule_peers_match(rule, from, &policy_ns)
            })
    })
}

fn namespace_of(object: &Value, default: &str) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default)
        .to_string()
}

fn rule_ports_match(rule: &Value, to: &Pod, port: u16) -> bool {
    let Some(ports) = rule["ports"].as_array() else {
        return true;
    };
    ports.iter().any(|p| {
        let protocol_ok = p["protocol"].as_str().unwrap_or("TCP") == "TCP";
        let port_ok = match &p["port"] {
            Value::Null => true,
            Value::Number(n) => n.as_u64() == Some(u64::from(port)),
            Value::String(name) => to.ports.get(name) == Some(&port),
            other => panic!("NetworkPolicy port {other}"),
        };
        protocol_ok && port_ok
    })
}

fn rule_peers_match(rule: &Value, from: &Pod, policy_ns: &str) -> bool {
    let Some(peers) = rule["from"].as_array() else {
        return true;
    };
    peers.iter().any(|peer| {
        assert!(peer["ipBlock"].is_null(), "ipBlock peers are not modelled");
        let namespace_ok = match &peer["namespaceSelector"] {
            // No namespaceSelector: the policy's own namespace.
            Value::Null => from.namespace == policy_ns,
            selector => selects(selector, &from.namespace_labels()),
        };
        let pod_ok = match &peer["podSelector"] {
            Value::Null => true,
            selector => selects(selector, &from.labels),
        };
        namespace_ok && pod_ok
    })
}
