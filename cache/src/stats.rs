//! Counters: what the cache did, as a stats snapshot and through `metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A snapshot of the cache's counters since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Loads answered from memory.
    pub hits: u64,
    /// Loads that went to the backend.
    pub misses: u64,
    /// Entries dropped for size or because their time was up.
    pub evictions: u64,
    /// Invalidation messages received from the channel and handled (the
    /// eviction they asked for is done).
    pub invalidations_received: u64,
    /// Saves the backend answered with a conflict.
    pub conflicts: u64,
    /// Times the cache fell back to bounded staleness: the channel dropped,
    /// or this instance's invalidations stopped getting through.
    pub fallbacks: u64,
    /// Invalidations this instance could not publish (each is sent again
    /// before the next one; until one gets through, the instance runs on
    /// bounded staleness).
    pub publish_failures: u64,
    /// Writes whose outcome was unknown (their answer was lost): the
    /// session was forgotten, and without a store that announces its own
    /// writes the instance ran on bounded staleness for the coherent TTL.
    pub unknown_outcomes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    conflicts: AtomicU64,
    fallbacks: AtomicU64,
    publish_failures: AtomicU64,
    unknown_outcomes: AtomicU64,
    /// When the current fallback began, while the cache is on it.
    fallback_since: Mutex<Option<Instant>>,
}

/// Why the cache dropped an entry by itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Eviction {
    /// Its time was up.
    Expired,
    /// Room was needed within the byte budget.
    Size,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Invalidation,
    Conflict,
    Fallback,
    PublishFailure,
    UnknownOutcome,
    /// The channel is back: the cache is coherent again.
    Recovered,
}

impl Counters {
    pub(crate) fn bump(&self, counter: Counter) {
        let (cell, name) = match counter {
            Counter::Recovered => return self.recovered(),
            Counter::Hit => (&self.hits, "offstate_cache_hits_total"),
            Counter::Miss => (&self.misses, "offstate_cache_misses_total"),
            Counter::Invalidation => (
                &self.invalidations,
                "offstate_cache_invalidations_received_total",
            ),
            Counter::Conflict => (&self.conflicts, "offstate_cache_conflicts_total"),
            Counter::Fallback => (&self.fallbacks, "offstate_cache_fallbacks_total"),
            Counter::PublishFailure => (
                &self.publish_failures,
                "offstate_cache_publish_failures_total",
            ),
            Counter::UnknownOutcome => (
                &self.unknown_outcomes,
                "offstate_cache_unknown_outcomes_total",
            ),
        };
        cell.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name).increment(1);
        if let Counter::Fallback = counter {
            self.since().get_or_insert_with(Instant::now);
            metrics::gauge!("offstate_cache_fallback_active").set(1.0);
        }
    }

    /// `count` entries the cache dropped by itself, for `cause`.
    pub(crate) fn evicted(&self, cause: Eviction, count: u64) {
        if count == 0 {
            return;
        }
        self.evictions.fetch_add(count, Ordering::Relaxed);
        let cause = match cause {
            Eviction::Expired => "expired",
            Eviction::Size => "size",
        };
        metrics::counter!("offstate_cache_evictions_total", "cause" => cause).increment(count);
    }

    /// The end of a fallback: how long it lasted.
    fn recovered(&self) {
        if let Some(since) = self.since().take() {
            metrics::histogram!("offstate_cache_fallback_duration_seconds")
                .record(since.elapsed().as_secs_f64());
        }
        metrics::gauge!("offstate_cache_fallback_active").set(0.0);
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.fallback_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidations_received: self.invalidations.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            unknown_outcomes: self.unknown_outcomes.load(Ordering::Relaxed),
        }
    }
}
