//! Fences: what the invalidations of a session since some point allow a
//! load still in flight to cache, so that a load that read the backend
//! before an invalidation does not refill what it evicted.
//!
//! Kept per key, in shards under short-held locks, each for as long as a
//! load may take (the fence lifetime). A shard over its share of the
//! bound drops what expired; if that is not enough it drops everything,
//! after raising the caller's "cleared" mark to the newest sequence number
//! it drops, which fences every load that started before it: dropping a
//! fence may fence too much, never too little.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use offstate_core::{KeyHashing, SessionKey, Version};
use tokio::time::Instant;

use crate::entries::shard_of;

/// How many shards the fences are split into.
const SHARDS: usize = 16;

/// What the invalidations of one key since some point allow: a copy read
/// by a load that started before `seq` may be cached only at `at_least` or
/// later (`None`: not at all). One fence stands for several invalidations
/// by keeping the latest `seq` and the strictest version: that fences a few
/// loads more than needed, never fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fence {
    seq: u64,
    at_least: Option<Version>,
}

impl Fence {
    /// Loads that started before `seq` may cache only `at_least` or later.
    pub(crate) fn new(seq: u64, at_least: Option<Version>) -> Self {
        Self { seq, at_least }
    }

    fn merged(self, newer: Self) -> Self {
        Self {
            seq: self.seq.max(newer.seq),
            at_least: match (self.at_least, newer.at_least) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
        }
    }

    /// Whether it keeps a copy at `version`, read by a load that started
    /// at `started`, out of the cache.
    pub(crate) fn blocks(self, started: u64, version: Version) -> bool {
        self.seq > started && self.at_least.is_none_or(|at_least| version < at_least)
    }
}

struct Kept {
    fence: Fence,
    until: Instant,
}

/// The recent fences per key (see the module docs).
pub(crate) struct Fences {
    /// Bounded in number (`shard_max`): hashed by the keys' first bytes.
    shards: Box<[Mutex<HashMap<SessionKey, Kept, KeyHashing>>]>,
    ttl: Duration,
    shard_max: usize,
}

impl Fences {
    /// Fences kept for `ttl`, about `max` of them at most.
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ttl,
            shard_max: (max / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, HashMap<SessionKey, Kept, KeyHashing>> {
        self.shards[shard_of(key, SHARDS)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `fence` to what `key` has (merged, never weaker). Fences
    /// dropped for room raise `cleared` to their newest sequence number
    /// first, so that no check finds neither.
    pub(crate) fn add(&self, key: &SessionKey, fence: Fence, cleared: &AtomicU64) {
        let now = Instant::now();
        let until = now + self.ttl;
        let mut shard = self.shard(key);
        let merged = match shard.get(key) {
            Some(kept) if now < kept.until => kept.fence.merged(fence),
            _ => fence,
        };
        shard.insert(
            key.clone(),
            Kept {
                fence: merged,
                until,
            },
        );
        if shard.len() <= self.shard_max {
            return;
        }
        shard.retain(|_, kept| now < kept.until);
        if shard.len() <= self.shard_max {
            return;
        }
        if let Some(newest) = shard.values().map(|kept| kept.fence.seq).max() {
            cleared.fetch_max(newest, Ordering::SeqCst);
        }
        shard.clear();
    }

    /// The fence of `key`, if one is still kept.
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Fence> {
        let shard = self.shard(key);
        let kept = shard.get(key)?;
        (Instant::now() < kept.until).then_some(kept.fence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(seq: u64, at_least: Option<u64>) -> Fence {
        Fence::new(seq, at_least.map(Version::new))
    }

    fn key(n: u32) -> SessionKey {
        let text = format!("AAAAAAAA{n:08}{}", "A".repeat(27));
        SessionKey::from_stored(&text).expect("a key")
    }

    #[test]
    fn a_fence_keeps_out_only_older_copies_read_before_it() {
        let announced = fence(5, Some(7));
        assert!(announced.blocks(4, Version::new(6)));
        assert!(!announced.blocks(4, Version::new(7)));
        assert!(!announced.blocks(5, Version::new(6)), "read after it");
        assert!(fence(5, None).blocks(4, Version::new(99)));
    }

    #[test]
    fn merged_fences_are_never_weaker_than_either() {
        // A delete (no version) then a late echo of an older write: the
        // delete must still fence every copy.
        let merged = fence(5, None).merged(fence(6, Some(3)));
        assert_eq!(merged, fence(6, None));
        assert!(merged.blocks(4, Version::new(3)));
        assert_eq!(
            fence(5, Some(9)).merged(fence(6, Some(3))),
            fence(6, Some(9))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fences_merge_and_expire() {
        let fences = Fences::new(Duration::from_secs(10), 1000);
        let cleared = AtomicU64::new(0);
        fences.add(&key(1), fence(5, None), &cleared);
        fences.add(&key(1), fence(6, Some(3)), &cleared);
        assert_eq!(fences.get(&key(1)), Some(fence(6, None)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(fences.get(&key(1)), None, "expired");
        fences.add(&key(1), fence(7, Some(3)), &cleared);
        assert_eq!(
            cleared.load(Ordering::SeqCst),
            0,
            "nothing dropped for room"
        );
        assert_eq!(
            fences.get(&key(1)),
            Some(fence(7, Some(3))),
            "not merged with an expired one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fences_dropped_for_room_are_handed_back() {
        let fences = Fences::new(Duration::from_secs(10), SHARDS);
        let cleared = AtomicU64::new(0);
        for n in 0..200 {
            fences.add(&key(n), fence(u64::from(n) + 1, None), &cleared);
        }
        let dropped = cleared.load(Ordering::SeqCst);
        assert!(dropped > 0, "room was made");
        // Every fence is either still kept or covered by what was handed back.
        for n in 0..200 {
            let seq = u64::from(n) + 1;
            assert!(
                fences.get(&key(n)).is_some() || seq <= dropped,
                "fence {seq} lost"
            );
        }
    }
}
