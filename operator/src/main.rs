//! qwp-operator: `run` (the default) starts the controller and the admin server
//! (`/healthz`, `/readyz`, `/metrics`); `crd` prints the CustomResourceDefinition.
//!
//! Settings (environment): `QWP_ADMIN_PORT` (8080), `QWP_WATCH_NAMESPACE` (all namespaces
//! when unset), `QWP_WORKER_ADMIN_PORT` (9090, where workers serve `/status`; injected into
//! them as `WORKER_ADMIN_PORT`),
//! `QWP_POD_STATUS_TIMEOUT_MS` (1000). Logs: `RUST_LOG`, `LOG_FORMAT=json`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams};
use qwp_jobs::config::{ConfigError, Vars};
use qwp_operator::deletion_cost::HttpInFlightProbe;
use qwp_operator::metrics::Metrics;
use qwp_operator::queue::SqsQueueDepth;
use qwp_operator::{Context, controller};
use qwp_pool::contract::DEFAULT_ADMIN_PORT;
use qwp_pool::crd::{QueueWorkerPool, crd_yaml};
use qwp_runtime::signals;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "Scales QueueWorkerPool Deployments from the depth of their SQS queue"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the QueueWorkerPool CustomResourceDefinition as YAML.
    Crd,
}

struct Settings {
    admin_port: u16,
    watch_namespace: Option<String>,
    worker_admin_port: u16,
    pod_status_timeout: Duration,
}

impl Settings {
    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Settings {
            admin_port: vars.parse_in("QWP_ADMIN_PORT", 8080, 1..=65535)?,
            watch_namespace: vars.optional("QWP_WATCH_NAMESPACE"),
            worker_admin_port: vars.parse_in(
                "QWP_WORKER_ADMIN_PORT",
                DEFAULT_ADMIN_PORT,
                1..=65535,
            )?,
            pod_status_timeout: Duration::from_millis(vars.parse_in(
                "QWP_POD_STATUS_TIMEOUT_MS",
                1000,
                10..=30_000,
            )?),
        })
    }
}

#[derive(Clone)]
struct Admin {
    ready: Arc<AtomicBool>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", crd_yaml());
        return ExitCode::SUCCESS;
    }
    qwp_jobs::telemetry::init_logging();
    qwp_operator::install_crypto_provider();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("qwp-operator: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_vars(&Vars::process()).map_err(|e| e.to_string())?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (kubeconfig or in-cluster config): {e}"))?;
    check_crd_installed(&client, settings.watch_namespace.as_deref()).await?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let stop =
        signals::shutdown_token().map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let admin = Admin {
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(qwp_runtime::metrics::router(metrics.clone()))
        .with_state(admin);
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.admin_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on admin port {addr}: {e}"))?;
    info!(%addr, "admin server listening (/healthz, /readyz, /metrics)");
    let admin_stop = stop.clone().cancelled_owned();
    let admin_server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(admin_stop)
            .await
    });

    let ctx = Arc::new(
        Context::new(
            client,
            Arc::new(SqsQueueDepth::new()),
            Arc::new(HttpInFlightProbe::new(
                settings.worker_admin_port,
                settings.pod_status_timeout,
            )),
            metrics,
        )
        .with_worker_admin_port(settings.worker_admin_port),
    );
    let shutdown = async move {
        stop.cancelled().await;
        info!("shutting down: finishing running reconciles");
    };
    ready.store(true, Ordering::SeqCst);
    info!(namespace = ?settings.watch_namespace, "controller started");
    controller::run(ctx, settings.watch_namespace, shutdown).await;
    ready.store(false, Ordering::SeqCst);
    let _ = admin_server.await;
    info!("stopped");
    Ok(())
}

/// Fails with an install hint when the QueueWorkerPool CRD is missing.
async fn check_crd_installed(client: &kube::Client, namespace: Option<&str>) -> Result<(), String> {
    let pools: Api<QueueWorkerPool> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match pools.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(
            "the QueueWorkerPool CRD (queueworkerpools.queueworker.io) is not installed; \
             install it with: kubectl apply -f crds/queueworkerpool.yaml"
                .to_string(),
        ),
        Err(e) => Err(format!("cannot list QueueWorkerPools: {e}")),
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
