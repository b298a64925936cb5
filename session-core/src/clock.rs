//! Time, injected: expiry can be tested by moving a clock, not by sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::record::Timestamp;

/// A source of wall-clock time. Stores check deadlines against it, and the
/// [`Session`](crate::Session) handle computes deadlines from it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock, in milliseconds.
///
/// On Linux it reads the kernel's coarse wall clock, which moves once a
/// tick (every 1 to 4 ms) and is read in a few nanoseconds, where the
/// precise one takes about 20 (measured on the bench machine, a VM; every
/// request reads the clock once or twice). Deadlines are milliseconds,
/// sessions live for minutes, and a tick is well inside the skew between
/// the clocks of a fleet's instances, which every deadline already
/// tolerates. Elsewhere it reads [`SystemTime`](std::time::SystemTime).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(wall_millis())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn wall_millis() -> u64 {
    use rustix::time::{ClockId, clock_gettime};

    let now = clock_gettime(ClockId::RealtimeCoarse);
    // Before 1970 (a broken clock) reads as the epoch.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn wall_millis() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};

    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    // In u64 (a `u128` of milliseconds would be converted back).
    since_epoch
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(since_epoch.subsec_millis()))
}

/// A clock that only moves when told to. Shared by cloning.
///
/// It starts at the real current time, so that a backend whose server-side
/// TTL runs on real time keeps every record at least as long as the
/// library's own deadline check does.
///
/// ```
/// use std::time::Duration;
/// use offstate_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now().as_millis() - before.as_millis(), 60_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock set to the real current time.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(SystemClock.now().as_millis())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// The clock every store and handle uses unless told otherwise.
#[must_use]
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn the_system_clock_reads_the_wall_clock_to_within_a_few_ticks() {
        for _ in 0..100 {
            let precise = |t: SystemTime| {
                u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
            };
            let before = precise(SystemTime::now());
            let read = SystemClock.now().as_millis();
            let after = precise(SystemTime::now());
            // A coarse clock lags by up to a tick (at most 10 ms at the
            // lowest tick rate); it never runs ahead.
            assert!(read <= after, "{read} > {after}");
            assert!(read + 10 >= before, "{read} lags {before} by over 10 ms");
        }
    }
}
