use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use qwp_jobs::Config;
use qwp_jobs::aws::AwsClients;
use qwp_runtime::signals;
#[cfg(feature = "face")]
use qwp_worker::face::FaceRecognizer;
#[cfg(feature = "face")]
use qwp_worker::settings::ProcessorSettings;
use qwp_worker::{CancellationToken, Settings, Worker, admin};

#[tokio::main]
async fn main() -> ExitCode {
    qwp_jobs::telemetry::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "worker failed to start");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let settings = Settings::from_env()?;
    let clients = AwsClients::connect(&config).await;
    let queue_url = clients
        .request_queue_url(&config)
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
        .with_context(|| format!("looking up queue {}", config.sqs_req_queue_name))?;

    let requested = SocketAddr::from((Ipv4Addr::UNSPECIFIED, settings.admin_port));
    let listener = tokio::net::TcpListener::bind(requested)
        .await
        .with_context(|| format!("binding the admin port {requested}"))?;
    // The address bound: the port picked when WORKER_ADMIN_PORT is 0.
    let admin_addr = listener.local_addr().context("reading the admin address")?;
    // Installed before the first receive, so a SIGTERM at any moment drains cleanly.
    let shutdown = signals::shutdown_token().context("installing signal handlers")?;

    #[cfg(feature = "face")]
    let face = match &settings.processor {
        ProcessorSettings::Face(face) => {
            let recognizer = FaceRecognizer::start(face, &clients.s3, &config.s3_in_bucket).await?;
            if !face.refresh.is_zero() {
                recognizer
                    .clone()
                    .spawn_refresher(face.refresh, shutdown.clone());
            }
            Some(recognizer)
        }
        _ => None,
    };
    let worker = Worker::new(&config, settings, &clients, queue_url)?;
    #[cfg(feature = "face")]
    let worker = match face {
        Some(face) => worker.with_face(face),
        None => worker,
    };
    let metrics = worker.metrics();
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(listener, metrics, {
        let stop = admin_stop.clone();
        async move { stop.cancelled().await }
    }));
    tracing::info!(%admin_addr, "admin port listening");

    worker.run(shutdown).await;
    admin_stop.cancel();
    let _ = admin.await;
    Ok(())
}
