//! Serving the public API and the admin port.
//!
//! The public port is served with hyper directly (HTTP/1.1) rather than `axum::serve`,
//! for the limits `axum::serve` does not offer: at most `MAX_CONNECTIONS` connections
//! (beyond that, new ones wait in the kernel's listen backlog), a read buffer of at most
//! [`READ_BUFFER_BYTES`] per connection, request headers within `HEADER_TIMEOUT_SECONDS`,
//! and a shutdown with an upper bound: after the signal no connection is accepted,
//! requests in flight get `SHUTDOWN_TIMEOUT_SECONDS`, then the connections still open are
//! closed, and job acceptances already talking to S3/SQS get one more
//! `STORE_TIMEOUT_SECONDS`. The admin port keeps answering (`/readyz`: draining) until
//! the public port is done.

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::pin;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::{AppState, admin, app, internal};

/// hyper's per-connection buffer cap (its default is about 400 KiB). Headers must fit.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    /// Completion hints from workers ([`crate::internal`]).
    pub internal: TcpListener,
}

impl Listeners {
    /// Binds `PORT`, `ADMIN_PORT` and `INTERNAL_PORT` on all interfaces (0: any free port).
    pub async fn bind(settings: &Settings) -> io::Result<Self> {
        Ok(Listeners {
            public: TcpListener::bind(("0.0.0.0", settings.port)).await?,
            admin: TcpListener::bind(("0.0.0.0", settings.admin_port)).await?,
            internal: TcpListener::bind(("0.0.0.0", settings.internal_port)).await?,
        })
    }
}

/// Serves until `signal` resolves, then shuts down within the bounds above and returns.
pub async fn serve(
    listeners: Listeners,
    state: AppState,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let internal_port = listeners.internal.local_addr()?.port();
    let reply_to = format!("{}:{internal_port}", state.settings.advertise_host);
    if state.reply_to.set(reply_to).is_err() {
        tracing::warn!("serve was called twice on one AppState; keeping the first reply address");
    }
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(
        axum::serve(listeners.admin, admin::router(state.clone()))
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future(),
    );
    let internal = tokio::spawn(
        axum::serve(listeners.internal, internal::router(state.clone()))
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future(),
    );
    serve_public(listeners.public, state, signal).await;
    admin_stop.cancel();
    internal.await.map_err(io::Error::other)??;
    admin.await.map_err(io::Error::other)?
}

/// One open connection: holds a `MAX_CONNECTIONS` slot and the gauge, even when aborted.
struct Open {
    metrics: Arc<Metrics>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

async fn serve_public(
    listener: TcpListener,
    state: AppState,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let settings = state.settings.clone();
    let service = TowerToHyperService::new(app(state.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(READ_BUFFER_BYTES);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut signal = pin!(signal);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut signal => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        state.metrics.connections_open.inc();
        let open = Open {
            metrics: state.metrics.clone(),
            _slot: slot,
        };
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    state.shutdown.cancel();
    tracing::info!(
        open_connections = graceful.count(),
        limit_seconds = settings.shutdown_timeout.as_secs(),
        "shutting down: no new connections, finishing requests in flight"
    );
    if tokio::time::timeout(settings.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = connections.len(),
            "SHUTDOWN_TIMEOUT_SECONDS reached: closing the connections still open"
        );
        connections.abort_all();
    }
    state.accepts.close();
    if tokio::time::timeout(settings.store_timeout, state.accepts.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = state.accepts.len(),
            "job acceptances still running at exit; a pending idempotency key is recovered \
             by the next request that uses it"
        );
    }
}

/// Per-connection failures (the peer gave up before we accepted) are routine; anything
/// else (out of file descriptors) gets a pause so the loop does not spin.
async fn accept_failed(err: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}
