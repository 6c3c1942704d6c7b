//! Real signals sent to this test process (its own binary, so no other test sees them).
//! One test function: the handlers are process-wide, and tests in one binary run in parallel.

use std::time::Duration;

use qwp_runtime::signals::{ShutdownSignal, ShutdownSignals, shutdown_token};

fn raise(signal: libc::c_int) {
    // SAFETY: raise only sends a signal to this process; a handler is installed for it.
    let rc = unsafe { libc::raise(signal) };
    assert_eq!(rc, 0, "raise({signal}) failed");
}

/// A bound on waiting for something the test just caused, so a bug fails instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sigterm_and_sigint_both_ask_for_shutdown() {
    let mut signals = ShutdownSignals::install().expect("install handlers");
    raise(libc::SIGTERM);
    let received = tokio::time::timeout(BOUND, signals.recv())
        .await
        .expect("SIGTERM delivered");
    assert_eq!(received, ShutdownSignal::Terminate);
    assert_eq!(received.to_string(), "SIGTERM");

    raise(libc::SIGINT);
    let received = tokio::time::timeout(BOUND, signals.recv())
        .await
        .expect("SIGINT delivered");
    assert_eq!(received, ShutdownSignal::Interrupt);
    assert_eq!(received.to_string(), "SIGINT");

    for signal in [libc::SIGTERM, libc::SIGINT] {
        let token = shutdown_token().expect("install handlers");
        raise(signal);
        tokio::time::timeout(BOUND, token.cancelled())
            .await
            .unwrap_or_else(|_| panic!("signal {signal} cancelled the token"));
    }
}
