//! Time, injected: expiry can be tested by moving a clock, not by sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::Timestamp;

/// A source of wall-clock time. Stores check deadlines against it, and the
/// [`Session`](crate::Session) handle computes deadlines from it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        // In u64 (a `u128` of milliseconds would be converted back).
        let millis = since_epoch
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(since_epoch.subsec_millis()));
        Timestamp::from_millis(millis)
    }
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
