//! qwp-pool: what a QueueWorkerPool is, how it scales, and what the operator and the worker
//! agree on. Types and pure functions only (no Kubernetes client, AWS SDK or async runtime), so
//! the operator, the worker, the simulator and the e2e suite share them without linking each
//! other.
//!
//! - [`crd`]: the `QueueWorkerPool` custom resource (`queueworker.io/v1alpha1`); the checked-in
//!   CRD (`crds/`, `charts/qwp/crds/`) is generated from these types by `crdgen`.
//! - [`decision`]: the scaling decision, one pure function [`decision::decide`] of (policy,
//!   history, observed queue depth, current replicas, now), called by the operator's reconciler
//!   and by the simulator alike.
//! - [`deployment`]: the Deployment a pool becomes (pure; the operator applies it).
//! - [`contract`]: the operator ↔ worker contract: the environment the operator injects into
//!   worker containers (one builder, one parser), the worker's `/status` document, the admin
//!   port and the drain budget behind the pod's grace period.
//! - [`env`]: reading settings from environment variables, with errors that name the variable.

pub mod contract;
pub mod crd;
pub mod decision;
pub mod deployment;
pub mod env;

pub use crd::{QueueWorkerPool, QueueWorkerPoolSpec, QueueWorkerPoolStatus};
