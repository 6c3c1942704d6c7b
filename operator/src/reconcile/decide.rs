//! Decide: the replicas, from the spec, what was observed and the pool's history. Pure; a thin
//! wrapper around [`qwp_pool::decision::decide`], which the simulator calls too.

use std::time::Instant;

use qwp_pool::decision::{Decided, History, Observation, decide};

use super::ValidPool;
use super::observe::Observed;

/// The decision for this reconcile, and the history to keep once it is applied. A reused
/// reading is not a new recommendation (it would weigh twice in the stabilization windows);
/// a replica change always counts.
pub fn replicas(
    pool: &ValidPool<'_>,
    history: &History,
    observed: &Observed,
    now: Instant,
) -> Decided {
    let observation = Observation {
        depth: observed.reading.as_ref().ok().map(|r| r.depth),
        fresh: observed.fresh,
    };
    decide(&pool.policy, history, &observation, observed.current, now)
}
