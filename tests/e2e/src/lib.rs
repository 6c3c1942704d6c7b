//! The end-to-end suite's support code: the settings it reads, the temporary-namespace
//! harness, the chart install, pool and API server set-up, log collection, the removal watch,
//! the fault proxy and the burst timeline. The tests are in `tests/e2e.rs` (cluster) and
//! `tests/chart.rs` (no cluster, part of `make unit`).

pub mod api_server;
pub mod cmd;
pub mod harness;
pub mod install;
pub mod jobs;
pub mod logs;
pub mod pool;
pub mod proxy;
pub mod removals;
pub mod settings;
pub mod timeline;
pub mod wait;

pub use harness::{TestEnv, with_temp_ns};
pub use settings::Settings;
