//! qwp-operator: `run` (the default) starts the controller and the admin server
//! (`/healthz`, `/readyz`, `/metrics`); `crd` prints the CustomResourceDefinition.
//!
//! Settings (environment): `QWP_ADMIN_PORT` (8080), `QWP_WATCH_NAMESPACE` (all namespaces
//! when unset), `QWP_WORKER_ADMIN_PORT` (9090, where workers serve `/status`; injected into
//! them as `WORKER_ADMIN_PORT`),
//! `QWP_POD_STATUS_TIMEOUT_MS` (1000). Leader election: `QWP_LEADER_ELECTION` (true; false
//! for a single replica without Lease permissions), `QWP_LEASE_NAME` (qwp-operator),
//! `QWP_LEASE_NAMESPACE` (the namespace of the kube client: the pod's own in a cluster),
//! `QWP_POD_NAME` (this replica's identity in the Lease; default `HOSTNAME`).
//! `QWP_RESYNC_SECONDS` (60): an up-to-date Deployment is applied again this often, undoing
//! hand edits of its template. `QWP_ALLOWED_ENDPOINTS`: the queue endpoints pools may name, comma separated
//! (`https://sqs.*.amazonaws.com`; see [`qwp_operator::access`]).
//! Logs: `RUST_LOG`, `LOG_FORMAT=json`.
//!
//! The admin server also serves `/status`: this replica's identity, whether it leads, and the
//! Lease's holder.

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
use qwp_operator::access::EndpointAllowlist;
use qwp_operator::deletion_cost::HttpInFlightProbe;
use qwp_operator::leader::{self, DEFAULT_LEASE_NAME, Leadership, LeaseSettings};
use qwp_operator::metrics::Metrics;
use qwp_operator::queue::SqsQueueDepth;
use qwp_operator::{Context, controller, wake};
use qwp_pool::contract::{DEFAULT_ADMIN_PORT, DEFAULT_OPERATOR_ADMIN_PORT};
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
    leader_election: bool,
    lease_name: String,
    lease_namespace: Option<String>,
    identity: String,
    allowlist: EndpointAllowlist,
    resync: Duration,
}

impl Settings {
    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Settings {
            admin_port: vars.parse_in("QWP_ADMIN_PORT", DEFAULT_OPERATOR_ADMIN_PORT, 1..=65535)?,
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
            leader_election: vars.parse("QWP_LEADER_ELECTION", true)?,
            lease_name: vars.string("QWP_LEASE_NAME", DEFAULT_LEASE_NAME),
            lease_namespace: vars.optional("QWP_LEASE_NAMESPACE"),
            identity: vars
                .optional("QWP_POD_NAME")
                .or_else(|| vars.optional("HOSTNAME"))
                .unwrap_or_else(|| format!("qwp-operator-{}", std::process::id())),
            resync: Duration::from_secs(vars.parse_in("QWP_RESYNC_SECONDS", 60, 1..=86_400)?),
            allowlist: vars.parse_with(
                "QWP_ALLOWED_ENDPOINTS",
                EndpointAllowlist::default(),
                EndpointAllowlist::parse,
            )?,
        })
    }
}

#[derive(Clone)]
struct Admin {
    ready: Arc<AtomicBool>,
    client: kube::Client,
    identity: String,
    lease: Option<LeaseSettings>,
    leadership: Leadership,
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

    let lease = settings.leader_election.then(|| {
        LeaseSettings::new(
            &settings.lease_name,
            settings
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
            &settings.identity,
        )
    });
    let (leadership, elector) = match &lease {
        Some(lease) => {
            let (leadership, elector) = leader::elect(client.clone(), lease, metrics.clone())
                .await
                .map_err(|e| {
                    format!(
                        "cannot take part in leader election on Lease {}/{}: {e}",
                        lease.namespace, lease.name
                    )
                })?;
            (leadership, Some(elector))
        }
        None => {
            metrics.leader.set(1);
            (Leadership::always(), None)
        }
    };

    let admin = Admin {
        ready: ready.clone(),
        client: client.clone(),
        identity: settings.identity.clone(),
        lease: lease.clone(),
        leadership: leadership.clone(),
    };
    let (wake_sender, wakes) = wake::channel();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .merge(qwp_runtime::metrics::router(metrics.clone()))
        .with_state(admin)
        // Only the leader reconciles, so only the leader takes a wake-up; a standby says 503.
        .merge(wake::router(wake_sender, metrics.clone(), {
            let leadership = leadership.clone();
            Arc::new(move || leadership.is_leader())
        }));
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.admin_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on admin port {addr}: {e}"))?;
    info!(%addr, "admin server listening (/healthz, /readyz, /metrics, /status, wake-ups)");
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
        .with_worker_admin_port(settings.worker_admin_port)
        .with_leadership(leadership)
        .with_allowlist(settings.allowlist)
        .with_resync(settings.resync),
    );
    let shutdown = async move {
        stop.cancelled().await;
        info!("shutting down: finishing running reconciles");
    };
    ready.store(true, Ordering::SeqCst);
    info!(namespace = ?settings.watch_namespace, identity = %settings.identity, lease = ?lease, "controller started");
    controller::run(ctx, settings.watch_namespace, wakes, shutdown).await;
    ready.store(false, Ordering::SeqCst);
    // Only once no reconcile runs: a standby may start at once.
    if let Some(elector) = elector {
        elector.stop().await;
    }
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

async fn status(State(admin): State<Admin>) -> impl IntoResponse {
    axum::Json(
        leader::status(
            &admin.client,
            &admin.identity,
            admin.lease.as_ref(),
            &admin.leadership,
        )
        .await,
    )
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
