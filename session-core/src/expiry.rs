//! When sessions end, and when a read-only request should extend one.

use std::time::Duration;

use crate::record::{Deadlines, Record, Timestamp};

/// How long sessions live.
///
/// - `idle`: a sliding timeout; each write (and each touch) moves the idle
///   deadline to now + `idle`.
/// - `absolute`: a fixed lifetime from creation that nothing extends.
/// - `touch_threshold`: a read-only request extends the idle deadline only
///   once this fraction of the idle timeout has passed since it was last
///   extended. At 0.25 with a 30-minute timeout, a user who clicks every
///   few seconds costs one touch every 7.5 minutes, not one per request.
///
/// ```
/// use std::time::Duration;
/// use offstate_core::ExpiryPolicy;
///
/// let policy = ExpiryPolicy::default()
///     .with_idle(Some(Duration::from_secs(20 * 60)))
///     .with_absolute(Some(Duration::from_secs(8 * 3600)))
///     .with_touch_threshold(0.5);
/// assert_eq!(policy.idle(), Some(Duration::from_secs(1200)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpiryPolicy {
    idle: Option<Duration>,
    absolute: Option<Duration>,
    touch_threshold: f64,
}

impl Default for ExpiryPolicy {
    /// 30 minutes idle, 24 hours absolute, touch after a quarter of the idle
    /// timeout: the common web defaults (OWASP suggests 15 to 30 minutes idle).
    fn default() -> Self {
        Self {
            idle: Some(Duration::from_secs(30 * 60)),
            absolute: Some(Duration::from_secs(24 * 3600)),
            touch_threshold: 0.25,
        }
    }
}

impl ExpiryPolicy {
    /// No expiry at all: sessions live until deleted. Use with care.
    #[must_use]
    pub fn never() -> Self {
        Self {
            idle: None,
            absolute: None,
            touch_threshold: 0.25,
        }
    }

    /// Sets the sliding idle timeout (`None` turns it off).
    #[must_use]
    pub fn with_idle(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }

    /// Sets the absolute lifetime (`None` turns it off).
    #[must_use]
    pub fn with_absolute(mut self, absolute: Option<Duration>) -> Self {
        self.absolute = absolute;
        self
    }

    /// Sets the touch threshold, clamped to `0.0..=1.0`. At 0 every
    /// read-only request touches the session.
    #[must_use]
    pub fn with_touch_threshold(mut self, fraction: f64) -> Self {
        self.touch_threshold = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The idle timeout.
    #[must_use]
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// The absolute lifetime.
    #[must_use]
    pub fn absolute(&self) -> Option<Duration> {
        self.absolute
    }

    /// The touch threshold.
    #[must_use]
    pub fn touch_threshold(&self) -> f64 {
        self.touch_threshold
    }

    /// Deadlines for a session created at `now`.
    #[must_use]
    pub fn initial(&self, now: Timestamp) -> Deadlines {
        Deadlines {
            idle: self.idle.map(|d| now.saturating_add(d)),
            absolute: self.absolute.map(|d| now.saturating_add(d)),
        }
    }

    /// Deadlines after a write at `now`: the idle deadline slides, the
    /// absolute one stays where creation put it.
    #[must_use]
    pub fn renewed(&self, record: &Record, now: Timestamp) -> Deadlines {
        record
            .deadlines
            .extended_to(self.idle.map(|d| now.saturating_add(d)))
    }

    /// The new idle deadline if a read-only request at `now` should touch
    /// `record`, or `None` if it should not.
    #[must_use]
    pub fn touch_due(&self, record: &Record, now: Timestamp) -> Option<Timestamp> {
        let idle = self.idle?;
        let deadline = record.deadlines.idle?;
        let remaining = deadline.saturating_since(now);
        let elapsed = idle.saturating_sub(remaining);
        if elapsed.as_secs_f64() >= idle.as_secs_f64() * self.touch_threshold {
            let next = now.saturating_add(idle);
            // A touch never moves the deadline backwards.
            (next > deadline).then_some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_at(now: Timestamp, policy: &ExpiryPolicy) -> Record {
        Record::new(now, policy.initial(now))
    }

    #[test]
    fn touch_waits_for_the_threshold() {
        let policy = ExpiryPolicy::default()
            .with_idle(Some(Duration::from_secs(100)))
            .with_touch_threshold(0.25);
        let t0 = Timestamp::from_millis(1_000_000);
        let record = record_at(t0, &policy);
        assert_eq!(policy.touch_due(&record, t0), None);
        let early = t0.saturating_add(Duration::from_secs(24));
        assert_eq!(policy.touch_due(&record, early), None);
        let due = t0.saturating_add(Duration::from_secs(25));
        assert_eq!(
            policy.touch_due(&record, due),
            Some(due.saturating_add(Duration::from_secs(100)))
        );
    }

    #[test]
    fn zero_threshold_touches_every_time_time_moved() {
        let policy = ExpiryPolicy::default()
            .with_idle(Some(Duration::from_secs(10)))
            .with_touch_threshold(0.0);
        let t0 = Timestamp::from_millis(5_000);
        let record = record_at(t0, &policy);
        let later = t0.saturating_add(Duration::from_millis(1));
        assert!(policy.touch_due(&record, later).is_some());
    }

    #[test]
    fn writes_keep_the_absolute_deadline() {
        let policy = ExpiryPolicy::default();
        let t0 = Timestamp::from_millis(0);
        let record = record_at(t0, &policy);
        let later = t0.saturating_add(Duration::from_secs(600));
        let renewed = policy.renewed(&record, later);
        assert_eq!(renewed.absolute, record.deadlines.absolute);
        assert!(renewed.idle > record.deadlines.idle);
    }

    #[test]
    fn threshold_is_clamped() {
        assert_eq!(
            ExpiryPolicy::default()
                .with_touch_threshold(7.0)
                .touch_threshold(),
            1.0
        );
        assert_eq!(
            ExpiryPolicy::default()
                .with_touch_threshold(f64::NAN)
                .touch_threshold(),
            0.0
        );
    }
}
