use std::process::ExitCode;

use qwp_api_server::settings::Settings;
use qwp_api_server::{AppState, Listeners, serve};
use qwp_jobs::aws::AwsClients;
use qwp_runtime::signals;

#[tokio::main]
async fn main() -> ExitCode {
    keep_large_allocations_out_of_arenas();
    qwp_jobs::telemetry::init_logging();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!(error = %err, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let listeners = match Listeners::bind(&settings).await {
        Ok(listeners) => listeners,
        Err(err) => {
            tracing::error!(port = settings.port, admin_port = settings.admin_port,
                internal_port = settings.internal_port, error = %err, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let shutdown = match signals::shutdown_token() {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let address =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let clients = AwsClients::connect(&settings.config).await;
    if settings.tokens.is_empty() {
        tracing::warn!(
            "API_TOKENS is not set: the API is unauthenticated; keep it behind an \
             authenticating ingress"
        );
    }
    tracing::info!(
        address = %address(&listeners.public),
        admin_address = %address(&listeners.admin),
        internal_address = %address(&listeners.internal),
        input_bucket = %settings.config.s3_in_bucket,
        output_bucket = %settings.config.s3_out_bucket,
        max_file_mb = settings.config.max_file_mb,
        max_wait_seconds = settings.config.max_wait_seconds,
        upload_memory_mb = settings.upload_memory_bytes / (1024 * 1024),
        max_connections = settings.max_connections,
        authenticated = !settings.tokens.is_empty(),
        "qwp-api-server listening"
    );
    let state = AppState::new(settings, clients);
    match serve(listeners, state, shutdown.cancelled_owned()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::from(1)
        }
    }
}

/// Upload buffers (up to `MAX_FILE_MB` each) in their own mappings, returned to the OS as
/// soon as they are freed. By default glibc raises this threshold after the first large
/// block is freed and serves later ones from its per-thread arenas, where freed buffers
/// linger: 40 concurrent 8 MiB uploads then peaked at 137 MiB of RSS instead of 76 MiB
/// (docs/benchmarks.md), slack the memory budget cannot see.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations_out_of_arenas() {
    const THRESHOLD_BYTES: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets a parameter of the allocator, under its own lock.
    let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES) };
    if applied != 1 {
        eprintln!("mallopt(M_MMAP_THRESHOLD) was refused; large buffers may stay in arenas");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_out_of_arenas() {}
