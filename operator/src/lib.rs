//! qwp-operator: scales QueueWorkerPool Deployments from the depth of their SQS queue.
//!
//! Data flow of one reconcile (see [`controller`]): observe (queue depth, Deployment, pods)
//! → [`decision::decide`] (pure) → build the Deployment ([`deployment`]) and status
//! ([`status`]) (pure) → apply both with server-side apply. Only the two ends touch the network.

pub mod controller;
pub mod crd;
pub mod decision;
pub mod deletion_cost;
pub mod deployment;
pub mod metrics;
pub mod queue;
pub mod status;

#[cfg(test)]
mod fixtures;

pub use controller::{Context, error_policy, reconcile, run};
pub use crd::{QueueWorkerPool, QueueWorkerPoolSpec, QueueWorkerPoolStatus};

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
}

impl Error {
    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::DeploymentNotOwned(_) => "deployment_not_owned",
            Error::DeploymentApply { .. } => "deployment_apply",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
