//! qwp-runtime: the pieces every qwp binary (api-server, worker, operator) runs on, so each
//! is written once.
//!
//! - [`signals`]: SIGTERM (Kubernetes) and SIGINT (a terminal) as a cancellation token.
//! - [`metrics`]: the `/metrics` endpoint for a prometheus-client registry.
//! - [`aws_error`]: what a failed S3/SQS call means (missing, transient, unexpected) and
//!   what to log about it.

pub mod aws_error;
pub mod metrics;
pub mod signals;

pub use tokio_util::sync::CancellationToken;
