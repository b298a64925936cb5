//! Memcached's `exptime` from a record's deadline.
//!
//! Memcached reads an exptime of up to 30 days (2,592,000 s) as seconds from
//! now, anything larger as an absolute Unix time, and 0 as "never". It
//! counts in whole seconds on its own clock, which it only advances once a
//! second. So the exptime is derived from the deadline rounded *up* to a
//! whole second, against the real wall clock (the one the server runs on,
//! not an injected test clock), plus one second of slack for the server's
//! coarse clock: memcached may keep a record up to about two seconds past
//! its deadline, never drop it before. The library's own deadline check on
//! every read makes the record invisible on time regardless.

use offstate_core::Timestamp;

/// The largest exptime memcached reads as relative seconds.
pub(crate) const MAX_RELATIVE: u64 = 30 * 24 * 60 * 60;

/// Slack added for memcached's once-a-second clock.
const SLACK_SECS: u64 = 1;

/// The exptime for a record that ends at `expires_at` (none: never), with
/// the real time being `now`.
pub(crate) fn exptime(expires_at: Option<Timestamp>, now: Timestamp) -> u64 {
    let Some(at) = expires_at else {
        return 0;
    };
    let until = at.as_secs_ceil().saturating_add(SLACK_SECS);
    let now_secs = now.as_millis() / 1000;
    // A deadline already past still gets a short life rather than 0 (which
    // would mean forever) or a negative value.
    let relative = until.saturating_sub(now_secs).max(1);
    if relative <= MAX_RELATIVE {
        relative
    } else {
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_400;

    fn at(millis: u64) -> Option<Timestamp> {
        Some(Timestamp::from_millis(millis))
    }

    #[test]
    fn no_deadline_never_expires() {
        assert_eq!(exptime(None, Timestamp::from_millis(NOW)), 0);
    }

    #[test]
    fn short_deadlines_are_relative_and_rounded_up() {
        let now = Timestamp::from_millis(NOW);
        // 1.1 s ahead: ends in second ...002 (rounded up), +1 slack, from second ...000.
        assert_eq!(exptime(at(NOW + 1_100), now), 3);
        assert_eq!(exptime(at(NOW + 600), now), 2);
        // Never earlier than the deadline, whatever the sub-second phase.
        for offset in (0..5_000).step_by(37) {
            let e = exptime(at(NOW + offset), now);
            let server_expiry_secs = NOW / 1000 + e;
            assert!(server_expiry_secs * 1000 >= NOW + offset, "offset {offset}");
        }
    }

    #[test]
    fn past_deadlines_get_a_short_life_not_forever() {
        assert_eq!(exptime(at(NOW - 10_000), Timestamp::from_millis(NOW)), 1);
    }

    #[test]
    fn beyond_thirty_days_is_absolute() {
        let now = Timestamp::from_millis(NOW);
        let thirty_days_ms = MAX_RELATIVE * 1000;
        let within = exptime(at(NOW + thirty_days_ms - 5_000), now);
        assert!(within <= MAX_RELATIVE);
        let beyond = exptime(at(NOW + thirty_days_ms + 5_000), now);
        assert_eq!(beyond, (NOW + thirty_days_ms + 5_000).div_ceil(1000) + 1);
        assert!(beyond > MAX_RELATIVE);
    }
}
