//! Decide: the replicas, from the spec, what was observed and the pool's history. Pure; a thin
//! wrapper around [`crate::decision`], which the simulator drives too.

use std::time::Instant;

use super::ValidPool;
use super::observe::Observed;
use crate::decision::{Decision, History, decide};

/// The decision for this reconcile.
pub fn replicas(
    pool: &ValidPool<'_>,
    history: &History,
    observed: &Observed,
    now: Instant,
) -> Decision {
    let depth = observed.reading.as_ref().ok().map(|r| r.depth);
    decide(&pool.policy, history, depth.as_ref(), observed.current, now)
}

/// Records an applied decision in the history. A reused reading is not a new recommendation
/// (it would weigh twice in the stabilization windows); a replica change always counts.
pub fn remember(
    pool: &ValidPool<'_>,
    history: &mut History,
    observed: &Observed,
    decision: &Decision,
    now: Instant,
) {
    if observed.fresh {
        history.record(&pool.policy, now, decision, observed.current);
    } else {
        history.record_change(now, observed.current, decision.replicas);
    }
}
