//! The cached sessions: a map split into shards, each behind its own
//! short-held lock and holding at most its share of the byte budget.
//!
//! Why not a general-purpose cache: every write through the cache is a
//! compare-and-put ("never replace a newer version"), and every echo of an
//! announcement a compare-and-remove. Under a shard lock those are a hash
//! lookup each; moka's per-key compute cost more than the rest of a cached
//! write's session work together (about 30k instructions per add, counted
//! by `scripts/icount.sh cached-add`).
//!
//! Expiry and size work the same as before, without a background task:
//! an entry is served only before its `until` (tokio time, so paused-time
//! tests drive it), expired entries are swept from a shard as inserts
//! accumulate (amortised O(1) per insert) and by
//! [`Entries::sweep_expired`], and a shard over its budget first drops
//! what expired, then the least recently used, down to seven eighths of
//! its budget, so a full scan pays for itself over many inserts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use offstate_core::{KeyHashing, Record, SessionKey, Version};
use tokio::time::Instant;

use crate::stats::{Counters, Eviction};

/// Most shards a cache is split into.
const MAX_SHARDS: usize = 64;
/// Least budget per shard, so that a small cache is not split into shards
/// too small to hold one session each.
const MIN_SHARD_BYTES: u64 = 256 * 1024;

/// A cached session, as a hit hands it out.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) record: Arc<Record>,
    /// When this entry stops being served (tokio time).
    pub(crate) until: Instant,
}

impl Entry {
    pub(crate) fn new(record: Arc<Record>, ttl: Duration) -> Self {
        Self {
            record,
            until: Instant::now() + ttl,
        }
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now < self.until
    }

    /// Bytes this entry counts against the budget.
    fn weight(&self, key: &SessionKey) -> u64 {
        (key.as_str().len() + self.record.size()) as u64
    }
}

struct Slot {
    entry: Entry,
    weight: u64,
    /// The cache's clock at the last hit or insert, for LRU eviction.
    used: u64,
}

#[derive(Default)]
struct Shard {
    /// Keys of stored sessions only: hashed by their first bytes.
    map: HashMap<SessionKey, Slot, KeyHashing>,
    bytes: u64,
    /// Inserts since the last sweep of expired entries.
    inserts: usize,
}

impl Shard {
    fn remove(&mut self, key: &SessionKey) -> bool {
        match self.map.remove(key) {
            Some(slot) => {
                self.bytes -= slot.weight;
                true
            }
            None => false,
        }
    }

    fn put(&mut self, key: &SessionKey, slot: Slot) {
        self.bytes += slot.weight;
        if let Some(old) = self.map.insert(key.clone(), slot) {
            self.bytes -= old.weight;
        }
        self.inserts += 1;
    }

    /// Drops what expired; returns how many.
    fn sweep(&mut self, now: Instant) -> u64 {
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|_, slot| {
            let keep = slot.entry.is_fresh(now);
            if !keep {
                freed += slot.weight;
            }
            keep
        });
        self.bytes -= freed;
        self.inserts = 0;
        (before - self.map.len()) as u64
    }

    /// Drops the least recently used until at most `target` bytes are left.
    fn shrink_to(&mut self, target: u64) -> u64 {
        let mut by_age: Vec<(u64, SessionKey)> = self
            .map
            .iter()
            .map(|(key, slot)| (slot.used, key.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(used, _)| *used);
        let mut dropped = 0;
        for (_, key) in by_age {
            if self.bytes <= target {
                break;
            }
            self.remove(&key);
            dropped += 1;
        }
        dropped
    }
}

/// The cached sessions (see the module docs).
pub(crate) struct Entries {
    shards: Box<[Mutex<Shard>]>,
    /// Bytes each shard may hold.
    shard_budget: u64,
    /// Ticks on every hit and insert: the order for LRU eviction.
    clock: AtomicU64,
    counters: Arc<Counters>,
}

impl Entries {
    /// An empty cache of at most `max_bytes` (keys and records).
    pub(crate) fn new(max_bytes: u64, counters: Arc<Counters>) -> Self {
        // The largest power of two (a shard is picked with a mask) that
        // leaves each shard at least MIN_SHARD_BYTES.
        let wanted = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS as u64);
        let count = 1_usize << wanted.ilog2();
        Self {
            shards: (0..count).map(|_| Mutex::default()).collect(),
            shard_budget: max_bytes / count as u64,
            clock: AtomicU64::new(0),
            counters,
        }
    }

    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(key, self.shards.len())])
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry of `key` while it may be served, marked used. An expired
    /// one is freed here and not returned, so no caller builds on a copy
    /// past its staleness bound.
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Entry> {
        let used = self.tick();
        let mut shard = self.shard(key);
        let slot = shard.map.get_mut(key)?;
        if slot.entry.is_fresh(Instant::now()) {
            slot.used = used;
            return Some(slot.entry.clone());
        }
        shard.remove(key);
        drop(shard);
        self.counters.evicted(Eviction::Expired, 1);
        None
    }

    /// Caches `entry` under `key` unless the entry there is of a newer
    /// version: a slow load that read version 5 must not overwrite the 6 a
    /// local write cached meanwhile. Returns whether it was put.
    pub(crate) fn put_unless_newer(&self, key: &SessionKey, entry: Entry) -> bool {
        let weight = entry.weight(key);
        if weight > self.shard_budget {
            // Larger than a shard may hold: served from the backend.
            return false;
        }
        let used = self.tick();
        let version = entry.record.version;
        let mut shard = self.shard(key);
        if shard
            .map
            .get(key)
            .is_some_and(|slot| slot.entry.record.version > version)
        {
            return false;
        }
        shard.put(
            key,
            Slot {
                entry,
                weight,
                used,
            },
        );
        let mut expired = 0;
        let mut evicted = 0;
        // Sweep once inserts reach a quarter of the shard: amortised O(1).
        if shard.inserts > 64 + shard.map.len() / 4 {
            expired = shard.sweep(Instant::now());
        }
        if shard.bytes > self.shard_budget {
            expired += shard.sweep(Instant::now());
            evicted = shard.shrink_to(self.shard_budget / 8 * 7);
        }
        drop(shard);
        self.counters.evicted(Eviction::Expired, expired);
        self.counters.evicted(Eviction::Size, evicted);
        true
    }

    /// Removes the entry of `key`, if any; returns whether there was one.
    pub(crate) fn remove(&self, key: &SessionKey) -> bool {
        self.shard(key).remove(key)
    }

    /// Removes the entry of `key` if it is older than `version`.
    pub(crate) fn remove_older_than(&self, key: &SessionKey, version: Version) {
        let mut shard = self.shard(key);
        if shard
            .map
            .get(key)
            .is_some_and(|slot| slot.entry.record.version < version)
        {
            shard.remove(key);
        }
    }

    /// Whether the entry of `key` is at `version` or newer.
    pub(crate) fn holds_at_least(&self, key: &SessionKey, version: Version) -> bool {
        self.shard(key)
            .map
            .get(key)
            .is_some_and(|slot| slot.entry.record.version >= version)
    }

    /// Removes every session of `principal`.
    pub(crate) fn remove_principal(&self, principal: &str) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let mut freed = 0;
            shard.map.retain(|_, slot| {
                let keep = slot.entry.record.principal.as_deref() != Some(principal);
                if !keep {
                    freed += slot.weight;
                }
                keep
            });
            shard.bytes -= freed;
        }
    }

    /// Removes everything.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.map.clear();
            shard.bytes = 0;
        }
    }

    /// Frees every expired entry now.
    pub(crate) fn sweep_expired(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let expired = lock(shard).sweep(now);
            self.counters.evicted(Eviction::Expired, expired);
        }
    }

    /// Entries held (expired ones included until swept).
    pub(crate) fn entry_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| lock(shard).map.len() as u64)
            .sum()
    }

    /// Bytes held (keys and records).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.shards.iter().map(|shard| lock(shard).bytes).sum()
    }
}

/// Which of `shards` (a power of two) holds `key`. A key is a hash
/// already: eight of its characters pick the shard (the maps inside still
/// hash with a random seed). Not the first ones, which a store's
/// `KeyPrefix` may fix for a whole principal.
pub(crate) fn shard_of(key: &SessionKey, shards: usize) -> usize {
    let bytes = key.as_str().as_bytes();
    let window = bytes.get(8..16).unwrap_or(bytes);
    let mut head = [0_u8; 8];
    let n = window.len().min(8);
    head[..n].copy_from_slice(&window[..n]);
    let mixed = u64::from_le_bytes(head).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize & (shards - 1)
}

/// A shard's lock; a panic while it was held left the map consistent
/// (every change is one map call and its byte count), so poison is ignored.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use offstate_core::{Deadlines, Timestamp};

    use super::*;

    fn key(n: u32) -> SessionKey {
        let text = format!("AAAAAAAA{n:08}{}", "A".repeat(27));
        SessionKey::from_stored(&text).expect("a key")
    }

    fn record(version: u64, principal: Option<&str>, bytes: usize) -> Arc<Record> {
        let mut record = Record::new(Timestamp::from_millis(0), Deadlines::none());
        record.version = Version::new(version);
        record.principal = principal.map(str::to_owned);
        record.data.insert("v".into(), vec![b'x'; bytes]);
        Arc::new(record)
    }

    fn entries(max_bytes: u64) -> (Entries, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (Entries::new(max_bytes, Arc::clone(&counters)), counters)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_newer_version_is_never_replaced_by_an_older_one() {
        let (entries, _) = entries(1 << 20);
        assert!(entries.put_unless_newer(&key(1), Entry::new(record(6, None, 10), MINUTE)));
        assert!(!entries.put_unless_newer(&key(1), Entry::new(record(5, None, 10), MINUTE)));
        assert_eq!(
            entries.get(&key(1)).unwrap().record.version,
            Version::new(6)
        );
        assert!(entries.put_unless_newer(&key(1), Entry::new(record(6, None, 20), MINUTE)));
        assert_eq!(entries.entry_count(), 1);
    }

    #[tokio::test]
    async fn removal_by_version_keeps_what_is_as_new() {
        let (entries, _) = entries(1 << 20);
        entries.put_unless_newer(&key(1), Entry::new(record(7, None, 10), MINUTE));
        entries.remove_older_than(&key(1), Version::new(7));
        assert!(entries.holds_at_least(&key(1), Version::new(7)));
        entries.remove_older_than(&key(1), Version::new(8));
        assert!(entries.get(&key(1)).is_none());
        assert_eq!(entries.weighted_size(), 0);
    }

    #[tokio::test]
    async fn a_principal_goes_and_the_rest_stays() {
        let (entries, _) = entries(1 << 20);
        entries.put_unless_newer(&key(1), Entry::new(record(1, Some("ann"), 10), MINUTE));
        entries.put_unless_newer(&key(2), Entry::new(record(1, Some("bob"), 10), MINUTE));
        entries.put_unless_newer(&key(3), Entry::new(record(1, None, 10), MINUTE));
        entries.remove_principal("ann");
        assert!(entries.get(&key(1)).is_none());
        assert!(entries.get(&key(2)).is_some() && entries.get(&key(3)).is_some());
        entries.clear();
        assert_eq!((entries.entry_count(), entries.weighted_size()), (0, 0));
    }

    #[tokio::test]
    async fn the_budget_holds_and_the_least_recently_used_go_first() {
        let (entries, counters) = entries(20_000);
        entries.put_unless_newer(&key(0), Entry::new(record(1, None, 500), MINUTE));
        for n in 1..200 {
            // Key 0 is read between inserts, so it is never the oldest.
            assert!(entries.get(&key(0)).is_some(), "evicted at insert {n}");
            entries.put_unless_newer(&key(n), Entry::new(record(1, None, 500), MINUTE));
            assert!(entries.weighted_size() <= 20_000);
        }
        assert!(entries.get(&key(199)).is_some());
        assert!(entries.get(&key(1)).is_none(), "the oldest went");
        assert!(counters.snapshot().evictions > 0);
        assert!(!entries.put_unless_newer(&key(500), Entry::new(record(1, None, 30_000), MINUTE)));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_freed_by_a_sweep_and_by_inserts() {
        let (entries, counters) = entries(1 << 20);
        for n in 0..10 {
            entries.put_unless_newer(&key(n), Entry::new(record(1, None, 10), MINUTE));
        }
        tokio::time::advance(MINUTE).await;
        entries.sweep_expired();
        assert_eq!((entries.entry_count(), entries.weighted_size()), (0, 0));
        assert_eq!(counters.snapshot().evictions, 10);

        for n in 0..10 {
            entries.put_unless_newer(&key(n), Entry::new(record(1, None, 10), MINUTE));
        }
        tokio::time::advance(MINUTE).await;
        assert!(
            entries.get(&key(0)).is_none(),
            "an expired entry is not handed out"
        );
        assert_eq!(entries.entry_count(), 9, "and is freed");
        for n in 10..1000 {
            entries.put_unless_newer(&key(n), Entry::new(record(1, None, 10), MINUTE));
        }
        assert_eq!(entries.entry_count(), 990, "inserts swept the expired");
        assert!((0..10).all(|n| entries.get(&key(n)).is_none()));
    }
}
