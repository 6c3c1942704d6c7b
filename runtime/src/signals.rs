//! Shutdown signals: SIGTERM (sent by Kubernetes) and SIGINT (Ctrl-C in a terminal) both ask
//! the process to stop gracefully; what "gracefully" means is each binary's business.

use std::fmt;
use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Which shutdown signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    Terminate,
    Interrupt,
}

impl ShutdownSignal {
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
        }
    }
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Handlers for both signals. From [`ShutdownSignals::install`] on, the signals no longer
/// kill the process: they are delivered here.
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Must run inside a Tokio runtime.
    pub fn install() -> io::Result<Self> {
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next shutdown signal delivered after installation.
    pub async fn recv(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
        }
    }
}

/// Installs the handlers now and cancels the returned token on the first SIGTERM or SIGINT.
///
/// Call it before the binary takes work, so a signal at any later moment stops it cleanly;
/// failing to install is a startup error, not something to run without.
pub fn shutdown_token() -> io::Result<CancellationToken> {
    let mut signals = ShutdownSignals::install()?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let received = signals.recv().await;
        tracing::info!(signal = received.name(), "received shutdown signal");
        cancel.cancel();
    });
    Ok(token)
}
