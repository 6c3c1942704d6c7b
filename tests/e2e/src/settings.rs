//! What the suite reads from the environment. Every default fits the local cluster
//! (`source hack/cluster/env.sh`); kind overrides a few (`make kind-e2e`).

use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The repository root (charts/, crds/).
    pub repo_root: PathBuf,
    /// Where failure dumps, the timeline CSV and PNG go (`E2E_OUT_DIR`, default tests/e2e/out).
    pub out_dir: PathBuf,
    /// LocalStack as pods reach it (`E2E_POD_AWS_ENDPOINT`, default http://$QWP_HOST_ADDR:4566).
    pub pod_aws_endpoint: String,
    /// The host address pods reach the test process at, for the outage proxy
    /// (`E2E_HOST_ADDR`, default $QWP_HOST_ADDR).
    pub host_addr: String,
    pub region: String,
    /// Image tag and registry prefix of the qwp images (`E2E_IMAGE_TAG`, `E2E_IMAGE_REGISTRY`).
    pub image_tag: String,
    pub image_registry: String,
    /// Namespace and release name of the operator install (`E2E_OPERATOR_NAMESPACE`).
    pub operator_namespace: String,
    pub release: String,
    /// Extra `--set` for the operator install, comma separated (`E2E_HELM_SET`).
    pub extra_helm_set: Option<String>,
    /// The chart installed (`E2E_CHART_DIR`, default charts/qwp of this checkout): another
    /// checkout's, to benchmark an older version with this suite's measurements.
    pub chart_dir: PathBuf,
}

impl Settings {
    /// Reads the environment once; panics with the variable to set when something is missing.
    pub fn get() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(Settings::from_env)
    }

    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the repository root exists");
        let host_addr = var("E2E_HOST_ADDR").or_else(|| var("QWP_HOST_ADDR"));
        let pod_aws_endpoint = var("E2E_POD_AWS_ENDPOINT")
            .or_else(|| host_addr.as_ref().map(|addr| format!("http://{addr}:4566")))
            .unwrap_or_else(|| {
                panic!(
                    "set E2E_POD_AWS_ENDPOINT (LocalStack as pods reach it) or QWP_HOST_ADDR \
                     (`source hack/cluster/env.sh` sets it); `make e2e` does both"
                )
            });
        Settings {
            out_dir: var("E2E_OUT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root.join("tests/e2e/out")),
            pod_aws_endpoint,
            host_addr: host_addr.unwrap_or_default(),
            region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            image_tag: var("E2E_IMAGE_TAG").unwrap_or_else(|| "dev".into()),
            image_registry: var("E2E_IMAGE_REGISTRY").unwrap_or_default(),
            operator_namespace: var("E2E_OPERATOR_NAMESPACE")
                .unwrap_or_else(|| "qwp-system".into()),
            release: var("E2E_RELEASE").unwrap_or_else(|| "qwp".into()),
            extra_helm_set: var("E2E_HELM_SET"),
            chart_dir: var("E2E_CHART_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root.join("charts/qwp")),
            repo_root,
        }
    }

    pub fn chart_dir(&self) -> PathBuf {
        self.chart_dir.clone()
    }

    pub fn image(&self, name: &str) -> String {
        format!("{}{name}:{}", self.image_registry, self.image_tag)
    }

    /// The installed operator's wake-up endpoint by name (its release's headless Service),
    /// for clusters with DNS.
    pub fn operator_wake_service(&self) -> String {
        format!(
            "{}-wake.{}.svc:{}",
            self.operator_deployment(),
            self.operator_namespace,
            qwp_pool::contract::DEFAULT_OPERATOR_ADMIN_PORT
        )
    }

    /// The operator Deployment's name as the chart spells it.
    pub fn operator_deployment(&self) -> String {
        if self.release.contains("qwp") {
            format!("{}-operator", self.release)
        } else {
            format!("{}-qwp-operator", self.release)
        }
    }
}
