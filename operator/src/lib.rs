//! qwp-operator: scales QueueWorkerPool Deployments from the depth of their SQS queue.
//!
//! Data flow of one reconcile (see [`reconcile`]): validate the spec (pure) → observe the
//! Deployment and the queue depth → [`qwp_pool::decision::decide`] (pure) → apply the
//! Deployment ([`qwp_pool::deployment`], server-side apply) → report Events, status
//! ([`status`]) and metrics. Only observe, apply and report touch the network. [`controller`]
//! runs the reconciles and decides when a failed one runs again; of several replicas only the
//! [`leader`] (the holder of a Lease) reconciles. The resource types, the
//! decision, the Deployment and the contract with the workers live in [`qwp_pool`].

pub mod access;
pub mod controller;
pub mod deletion_cost;
pub mod leader;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod status;
pub mod wake;

#[cfg(test)]
mod fixtures;

pub use controller::{error_policy, run};
pub use qwp_pool::crd::{QueueWorkerPool, QueueWorkerPoolSpec, QueueWorkerPoolStatus};
pub use reconcile::{Context, reconcile};

/// Selects rustls' ring provider for the process. Call before building a kube `Client`: with
/// both `ring` (kube) and `aws-lc-rs` (AWS SDK) compiled in, rustls cannot pick one itself and
/// the client would panic.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "qwp-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("pool {0} has no namespace (QueueWorkerPool is namespaced)")]
    MissingNamespace(String),
    #[error(
        "Deployment {0} exists but belongs to someone else; rename the pool or delete the Deployment"
    )]
    DeploymentNotOwned(String),
    #[error("applying Deployment {name} failed: {source}")]
    DeploymentApply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] reconcile::validate::SpecError),
    #[error("refused: {0}")]
    Refused(#[from] access::Refusal),
}

impl Error {
    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::DeploymentNotOwned(_) => "deployment_not_owned",
            Error::DeploymentApply { .. } => "deployment_apply",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Refused(_) => "refused",
        }
    }

    /// Whether retrying cannot help: only a change of the pool (or the removal of the
    /// Deployment in its way) can, so the pool waits for one instead of backing off. The
    /// others (API server unreachable, conflicts, a rejected apply) may pass by themselves.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::MissingNamespace(_) | Error::DeploymentNotOwned(_) | Error::InvalidSpec(_) => {
                true
            }
            Error::Refused(refusal) => refusal.is_permanent(),
            Error::Kube(_) | Error::DeploymentApply { .. } => false,
        }
    }

    /// The reason of the Warning Event and of the `Ready=False` condition that report it.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::MissingNamespace(_) => "MissingNamespace",
            Error::DeploymentNotOwned(_) => "DeploymentNotOwned",
            Error::DeploymentApply { .. } => "DeploymentApplyFailed",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Refused(refusal) => refusal.reason(),
        }
    }

    /// Whether the pool's status says so (`Ready=False` with [`Error::reason`]): everything
    /// but an API server that cannot be reached or answers an error of its own, where writing
    /// the status would most likely fail too.
    pub fn is_reported(&self) -> bool {
        !matches!(self, Error::Kube(_))
    }
}

impl From<qwp_pool::deployment::MissingNamespace> for Error {
    fn from(error: qwp_pool::deployment::MissingNamespace) -> Self {
        Error::MissingNamespace(error.0)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
