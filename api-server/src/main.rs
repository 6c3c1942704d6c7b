use std::process::ExitCode;

use qwp_api_server::settings::Settings;
use qwp_api_server::{AppState, Listeners, serve};
use qwp_jobs::aws::AwsClients;
use qwp_runtime::signals;

#[tokio::main]
async fn main() -> ExitCode {
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
            tracing::error!(port = settings.port, admin_port = settings.admin_port, error = %err, "cannot listen");
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
