//! qwp-worker: consumes job messages from SQS, runs a processor on each job's S3
//! input, stores the result document, and only then deletes the message.
//!
//! Data flow: [`consumer`] receives with free [`settings::Settings::concurrency`]
//! slots → [`job`] decodes and settles each message using [`storage`] (S3),
//! [`processor`] and [`queue`] (SQS) → [`metrics`] and [`admin`] report on it;
//! `qwp_runtime::signals` turns SIGTERM into the drain.

pub mod admin;
pub mod consumer;
#[cfg(feature = "face")]
pub mod face;
pub mod hint;
pub mod job;
pub mod metrics;
pub mod processor;
pub mod queue;
pub mod settings;
pub mod storage;

pub use consumer::Worker;
pub use job::JobObserver;
pub use settings::Settings;
pub use tokio_util::sync::CancellationToken;
