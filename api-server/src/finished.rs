//! Finished results in memory. A result document never changes once stored (the worker
//! writes it conditionally, once), so a result seen by a waiter or a status read is kept
//! here and later reads of that job make no S3 call. Bounded by the bytes of the JSON
//! documents (`RESULT_CACHE_MB`), least recently used first out (moka's TinyLFU with a
//! weigher).

use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use qwp_jobs::{JobId, JobResult};

use crate::metrics::Metrics;

/// Per-entry bookkeeping that is not in the JSON (the key, moka's own nodes), so a cache of
/// tiny results still has a bound on entries.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// A finished result and the size it is weighed at.
#[derive(Clone)]
struct Entry {
    result: Arc<JobResult>,
    weight: u32,
}

pub struct FinishedResults {
    cache: Option<Cache<JobId, Entry>>,
    metrics: Arc<Metrics>,
}

impl FinishedResults {
    /// `capacity_bytes` 0 turns the cache off (every read goes to S3).
    pub fn new(capacity_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let cache = (capacity_bytes > 0).then(|| {
            let listener_metrics = metrics.clone();
            Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_id: &JobId, entry: &Entry| entry.weight)
                .eviction_listener(move |_id, entry: Entry, cause| {
                    listener_metrics
                        .result_cache_bytes
                        .dec_by(i64::from(entry.weight));
                    if cause == RemovalCause::Size {
                        listener_metrics.result_cache_evictions.inc();
                    }
                })
                .build()
        });
        FinishedResults { cache, metrics }
    }

    /// The cached result, counting a hit or a miss.
    pub fn get(&self, job_id: &JobId) -> Option<Arc<JobResult>> {
        let found = self.cache.as_ref()?.get(job_id).map(|e| e.result);
        match found {
            Some(_) => self.metrics.result_cache_hits.inc(),
            None => self.metrics.result_cache_misses.inc(),
        };
        found
    }

    /// Remembers a finished result (the same job id always has the same result, so a
    /// second insert replaces it with an equal one).
    pub fn insert(&self, job_id: JobId, result: Arc<JobResult>) {
        let Some(cache) = &self.cache else { return };
        if cache.contains_key(&job_id) {
            return;
        }
        let json_bytes = serde_json::to_vec(&*result).map_or(0, |v| v.len() as u64);
        let weight = u32::try_from(json_bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX);
        self.metrics.result_cache_bytes.inc_by(i64::from(weight));
        cache.insert(job_id, Entry { result, weight });
    }

    /// Runs moka's pending maintenance (evictions are otherwise applied lazily), so the
    /// byte gauge and the entry count are current. For tests and metrics scrapes.
    pub fn settle(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks();
        }
    }

    /// The bytes held, as moka weighs them (after [`settle`](Self::settle)).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weighted_size())
    }

    pub fn entries(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result_of(bytes: usize) -> (JobId, Arc<JobResult>) {
        let id = JobId::new();
        let value = json!({ "blob": "x".repeat(bytes) });
        (id, Arc::new(JobResult::done(id, value)))
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_counts_evictions() {
        let metrics = Arc::new(Metrics::default());
        let cache = FinishedResults::new(64 * 1024, metrics.clone());
        let mut ids = Vec::new();
        for _ in 0..100 {
            let (id, result) = result_of(4 * 1024);
            cache.insert(id, result);
            ids.push(id);
        }
        cache.settle();
        assert!(
            cache.weighted_bytes() <= 64 * 1024,
            "{}",
            cache.weighted_bytes()
        );
        assert!(cache.entries() < 100 && cache.entries() > 0);
        assert!(metrics.result_cache_evictions.get() > 0);
        assert_eq!(
            metrics.result_cache_bytes.get() as u64,
            cache.weighted_bytes()
        );
        // What is still there is the right result for its id.
        let present: Vec<_> = ids
            .iter()
            .filter_map(|id| cache.get(id).map(|r| (id, r)))
            .collect();
        assert!(!present.is_empty());
        for (id, result) in present {
            assert_eq!(result.job_id, *id);
        }
    }

    #[test]
    fn a_result_larger_than_the_cache_is_not_kept() {
        let metrics = Arc::new(Metrics::default());
        let cache = FinishedResults::new(16 * 1024, metrics.clone());
        let (id, result) = result_of(32 * 1024);
        cache.insert(id, result);
        cache.settle();
        assert!(cache.get(&id).is_none());
        assert_eq!(cache.weighted_bytes(), 0);
        assert_eq!(metrics.result_cache_bytes.get(), 0);
    }

    #[test]
    fn hits_and_misses_are_counted_and_zero_turns_it_off() {
        let metrics = Arc::new(Metrics::default());
        let cache = FinishedResults::new(1024 * 1024, metrics.clone());
        let (id, result) = result_of(10);
        assert!(cache.get(&id).is_none());
        cache.insert(id, result);
        assert_eq!(cache.get(&id).unwrap().job_id, id);
        assert_eq!(
            (
                metrics.result_cache_hits.get(),
                metrics.result_cache_misses.get()
            ),
            (1, 1)
        );
        let off = FinishedResults::new(0, Arc::new(Metrics::default()));
        let (id, result) = result_of(10);
        off.insert(id, result);
        assert!(off.get(&id).is_none());
    }
}
