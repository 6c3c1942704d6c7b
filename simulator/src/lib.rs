//! A discrete-time model of a queue-worker pool, driven by two autoscalers:
//! qwp's own decision function ([`policy::Qwp`] calls [`qwp_pool::decision::decide`], the
//! function the operator's reconciler calls, not a copy) and a
//! model of KEDA's `aws-sqs-queue` scaler feeding a HorizontalPodAutoscaler ([`policy::KedaHpa`]).
//! Nothing here asserts a winner: [`run`] returns numbers and timelines.

pub mod model;
pub mod policy;
pub mod report;
pub mod trace;

pub use model::{Outcome, Sample, run};
