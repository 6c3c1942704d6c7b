//! The upper bound of a request (`REQUEST_TIMEOUT_SECONDS`, counted once its headers are
//! in; the headers themselves are bounded by `HEADER_TIMEOUT_SECONDS`).
//!
//! Every phase has its own bound (admission wait, `BODY_TIMEOUT_SECONDS`, one
//! `STORE_TIMEOUT_SECONDS` per S3/SQS call, `MAX_WAIT_SECONDS`), and a result wait is cut
//! to what is left of the request's time, so a wait ends in a clean 202. The middleware
//! is the backstop: a request still running at its deadline is answered 503. Acceptance
//! runs in its own task, so such an answer never cuts a job in half.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::AppState;
use crate::errors::ApiError;

/// Time kept back from a result wait to send the answer before the deadline.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// When the request must be answered; in the request extensions of every public route.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// `wait`, cut so that the answer still goes out before the deadline.
    pub fn cap(&self, wait: Duration) -> Duration {
        wait.min(
            self.0
                .saturating_duration_since(Instant::now())
                .saturating_sub(ANSWER_MARGIN),
        )
    }
}

pub async fn bound(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let limit = state.settings.request_timeout;
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + limit));
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                seconds = limit.as_secs(),
                "request hit REQUEST_TIMEOUT_SECONDS"
            );
            ApiError::RequestTimeout.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_are_cut_to_the_time_left() {
        let deadline = Deadline(Instant::now() + Duration::from_secs(10));
        assert_eq!(deadline.cap(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(
            deadline.cap(Duration::from_secs(30)),
            Duration::from_secs(9)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(deadline.cap(Duration::from_secs(30)), Duration::ZERO);
    }
}
