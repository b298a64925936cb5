//! Revocation without listing: one epoch counter per principal.
//!
//! Memcached cannot list keys, so "end all of alice's sessions" cannot find
//! them. Instead each principal has an epoch key,
//! `<prefix>epoch:<base64url(sha256(principal))>`, holding a decimal number.
//! A session records the epoch current when its principal was attached, and
//! is live only while its principal's epoch still has that value. Revoking
//! bumps the epoch with `incr`: every session recorded under the old value
//! is dead at once, wherever it is stored.
//!
//! - The epoch key starts at a random value (created with `add`, so racing
//!   logins agree on one), not at 0. If the key is lost (evicted, or its
//!   node replaced) it is recreated at another random value, so sessions
//!   recorded under a revoked epoch can never match again: losing an epoch
//!   key logs its principal out everywhere, it never brings a revoked
//!   session back. A missing epoch key therefore means "not live".
//! - Epoch keys have no exptime (memcached may still evict them under
//!   memory pressure, which fails closed as above). They cost about 100 bytes
//!   per principal that ever logged in.
//! - Checking costs one extra `get` per load of a session with a principal:
//!   the principal is inside the session blob, so the two reads cannot be
//!   one multi-get. Saves that attach a principal fetch the session and the
//!   new principal's epoch in one round.
//! - Revoked sessions are not deleted (their keys are unknown); they stay
//!   until their own exptime, unreadable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The epoch key of `principal` under `prefix`.
pub(crate) fn key(prefix: &str, principal: &str) -> String {
    let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(principal.as_bytes()));
    format!("{prefix}epoch:{hash}")
}

/// A fresh epoch for a principal whose key does not exist: random, below
/// 2^62 so that `incr` never wraps in practice.
pub(crate) fn initial() -> Result<u64, getrandom::Error> {
    Ok((getrandom::u64()? >> 2).max(1))
}

/// Reads an epoch value (`incr` pads shrunk numbers with spaces).
pub(crate) fn parse(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_length_and_distinct() {
        let a = key("offstate:", "alice");
        let b = key("offstate:", "bob");
        assert_ne!(a, b);
        assert_eq!(a.len(), "offstate:epoch:".len() + 43);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
        // A principal with spaces or newlines still gives a valid key.
        assert!(key("p:", "a b\r\n").bytes().all(|c| c.is_ascii_graphic()));
    }

    #[test]
    fn initial_values_differ_and_leave_headroom() {
        let (a, b) = (initial().unwrap(), initial().unwrap());
        assert_ne!(a, b);
        assert!((1..1 << 62).contains(&a));
    }

    #[test]
    fn values_parse_with_padding() {
        assert_eq!(parse(b"42"), Some(42));
        assert_eq!(parse(b"42  "), Some(42));
        assert_eq!(parse(b"x"), None);
        assert_eq!(parse(&[0xff]), None);
    }
}
