//! The internal port (`INTERNAL_PORT`): completion hints from workers. Not in the public
//! Service and not the admin port; the chart's NetworkPolicy admits worker pods only. A
//! hint names a job and nothing else, and only wakes this replica's waiter for that job
//! (which confirms by reading S3), so the route needs no authentication: whoever can
//! reach it can at most cause one S3 read per hint.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use qwp_jobs::JobId;
use qwp_jobs::hint::RESULT_HINT_ROUTE;

use crate::{AppState, errors};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(RESULT_HINT_ROUTE, post(result_hint))
        .fallback(errors::no_route)
        .with_state(state)
}

/// 204 whether or not a request here waits for the job: the sender learns nothing.
async fn result_hint(State(state): State<AppState>, Path(raw): Path<String>) -> StatusCode {
    match raw.parse::<JobId>() {
        Ok(job_id) => {
            state.waiter.hint(&job_id);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
