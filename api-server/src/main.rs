use std::process::ExitCode;

use qwp_api_server::settings::Settings;
use qwp_api_server::{AppState, serve};
use qwp_jobs::aws::AwsClients;
use qwp_runtime::signals;
use tokio::net::TcpListener;

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
    let listener = match TcpListener::bind(("0.0.0.0", settings.port)).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(port = settings.port, error = %err, "cannot listen");
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
    let clients = AwsClients::connect(&settings.config).await;
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        input_bucket = %settings.config.s3_in_bucket,
        output_bucket = %settings.config.s3_out_bucket,
        max_file_mb = settings.config.max_file_mb,
        max_wait_seconds = settings.config.max_wait_seconds,
        "qwp-api-server listening"
    );
    let state = AppState::new(settings, clients);
    match serve(listener, state, shutdown.cancelled_owned()).await {
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
