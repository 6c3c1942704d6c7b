//! The job model shared by the qwp API server and worker.
//!
//! Data flow: a client uploads a file → the API server stores it in S3 under
//! [`keys::input_key`] and sends [`message::JobMessage`] on SQS → a worker decodes
//! the message, processes the input and stores a [`result::JobResult`] under
//! [`keys::output_key`].

pub mod aws;
pub mod config;
pub mod filename;
pub mod hint;
pub mod id;
pub mod keys;
pub mod message;
pub mod result;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{Config, ConfigError};
pub use filename::{Filename, FilenameError};
pub use id::{JobId, JobIdError};
pub use message::{JobMessage, MessageError};
pub use result::{JobResult, ResultError};
