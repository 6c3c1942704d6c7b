//! One temporary namespace per test (`qwp-e2e-<random>`), the logs of every pod in it
//! collected while the test runs, and on failure a dump of pods, events, the pool, the
//! operator's and the workers' logs into `tests/e2e/out/<test>/` (also printed). The
//! namespace is deleted afterwards either way (set `E2E_KEEP_NAMESPACE=1` to keep a failed
//! test's namespace for inspection).

use std::future::Future;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::cmd;
use crate::logs::LogCollector;
use crate::settings::Settings;

/// What a test gets: a client, its namespace and the logs of its pods.
#[derive(Clone)]
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub test: String,
    pub logs: LogCollector,
}

impl TestEnv {
    /// `tests/e2e/out/<test>/`, created on first use.
    pub fn out_dir(&self) -> PathBuf {
        let dir = Settings::get().out_dir.join(&self.test);
        std::fs::create_dir_all(&dir).expect("create the test's output directory");
        dir
    }
}

pub async fn client() -> Client {
    // kube's client needs a process-wide rustls provider; with both ring and aws-lc-rs linked
    // (kube, AWS SDK) none is picked automatically. Err: one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default().await.unwrap_or_else(|e| {
        panic!("no Kubernetes client ({e}); set KUBECONFIG (`source hack/cluster/env.sh`) or run `make e2e`")
    })
}

/// Runs `test` in a fresh namespace; dumps the cluster state if it panics, deletes the
/// namespace, then re-raises the panic so the test fails with its own message.
pub async fn with_temp_ns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = client().await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let ns = format!("qwp-e2e-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"qwp-e2e/test": test.replace('_', "-").chars().take(63).collect::<String>()}},
    }))
    .expect("namespace object");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {ns}: {e}"));
    eprintln!("[e2e] {test}: namespace {ns}");

    let out = Settings::get().out_dir.join(test);
    let _ = std::fs::remove_dir_all(&out);
    let logs = LogCollector::start(client.clone(), &ns, out.join("pods"));
    let env = TestEnv {
        client: client.clone(),
        ns: ns.clone(),
        test: test.to_string(),
        logs: logs.clone(),
    };
    let outcome = tokio::spawn(body(env)).await;
    logs.stop();

    let failed = outcome.is_err();
    if failed {
        dump(test, &ns).await;
    }
    let keep = failed && std::env::var("E2E_KEEP_NAMESPACE").is_ok_and(|v| v == "1");
    if keep {
        eprintln!("[e2e] {test}: keeping namespace {ns} (E2E_KEEP_NAMESPACE=1)");
    } else if let Err(e) = namespaces.delete(&ns, &DeleteParams::background()).await {
        eprintln!("[e2e] {test}: could not delete namespace {ns}: {e}");
    }
    if let Err(err) = outcome {
        match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(err) => panic!("test task failed: {err}"),
        }
    }
}

/// Pods, events, the pool and Deployments of the namespace, the operator's logs and the
/// collected pod logs, into `out/<test>/dump.txt` and stderr.
pub async fn dump(test: &str, ns: &str) {
    let settings = Settings::get();
    let dir = settings.out_dir.join(test);
    let _ = std::fs::create_dir_all(&dir);
    let operator = format!("deploy/{}", settings.operator_deployment());
    let commands: Vec<(String, Vec<String>)> = vec![
        (
            "kubectl".into(),
            args(&[
                "-n",
                ns,
                "get",
                "pods,deployments,queueworkerpools",
                "-o",
                "wide",
            ]),
        ),
        (
            "kubectl".into(),
            args(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]),
        ),
        (
            "kubectl".into(),
            args(&["-n", ns, "get", "queueworkerpools", "-o", "yaml"]),
        ),
        ("kubectl".into(), args(&["-n", ns, "describe", "pods"])),
        (
            "kubectl".into(),
            args(&[
                "-n",
                &settings.operator_namespace,
                "get",
                "pods",
                "-o",
                "wide",
            ]),
        ),
        (
            "kubectl".into(),
            args(&[
                "-n",
                &settings.operator_namespace,
                "logs",
                &operator,
                "--tail=400",
            ]),
        ),
    ];
    let mut text = String::new();
    for (program, argv) in commands {
        let program: &'static str = if program == "kubectl" {
            "kubectl"
        } else {
            "helm"
        };
        let out = cmd::run_async(program, argv.clone()).await;
        text.push_str(&format!(
            "==== {program} {}\n{}{}\n",
            argv.join(" "),
            out.stdout,
            out.stderr
        ));
    }
    // Pods still there: their logs up to now, read afresh (the collector stopped following
    // them when the test ended); pods gone: the lines collected while they ran.
    let current = cmd::run_async("kubectl", args(&["-n", ns, "get", "pods", "-o", "name"])).await;
    let current: Vec<String> = current
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pod/"))
        .map(str::to_string)
        .collect();
    for pod in &current {
        let argv = args(&["-n", ns, "logs", pod, "--all-containers", "--tail=60"]);
        let out = cmd::run_async("kubectl", argv).await;
        text.push_str(&format!(
            "==== last lines of pod {pod}\n{}{}",
            out.stdout, out.stderr
        ));
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("pods")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let pod = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            if pod.is_some_and(|pod| current.contains(&pod)) {
                continue;
            }
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = content.lines().rev().take(60).collect();
            text.push_str(&format!("==== last lines of {}\n", path.display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let path = dir.join("dump.txt");
    let _ = std::fs::write(&path, &text);
    eprintln!(
        "[e2e] {test} FAILED; state of namespace {ns} (also in {}):\n{text}",
        path.display()
    );
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
