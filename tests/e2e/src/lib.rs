//! The end-to-end suite's support code: the settings it reads, the temporary-namespace
//! harness, the chart install, pool and API server set-up, log collection, the removal watch,
//! the fault proxy, the burst timeline, and the chart as `helm template` renders it. The tests
//! are in `tests/e2e.rs` (cluster), `tests/chart.rs` and `tests/dashboard.rs` (no cluster,
//! part of `make unit`).

pub mod api_server;
pub mod chart;
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
