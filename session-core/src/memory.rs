//! `MemoryStore`: the embedded default, for one process, tests and workers.
//!
//! Why this file is long: the shards, the expiry index, the purge and the
//! principal index share private state and one lock order; the unit tests
//! of that state are at the end.
//!
//! Built to hold millions of sessions without a pause:
//!
//! - **Shards.** Records live in [`SHARDS`] maps, each behind its own lock,
//!   chosen by the session key (already a uniform hash), so requests for
//!   different sessions rarely wait for each other and no map grows so large
//!   that one resize stalls everybody.
//! - **An expiry index per shard**, ordered by deadline. Expired records are
//!   freed from its front, so the cost is proportional to what expires, never
//!   a scan of what is live. A background thread frees them in short
//!   batches, also when there is no traffic at all: at most [`PURGE_BATCH`]
//!   are taken out per lock, and their memory is given back after the lock
//!   is released, so a write waits for at most one batch's removal from the
//!   maps, never for the allocator. Writes free nothing themselves (freeing
//!   is what made writes slow while a million sessions expired), unless the
//!   thread could not be started: then each write frees up to
//!   [`SWEEP_PER_WRITE`] records of its shard.
//! - **The principal index** has a lock of its own, taken only when a
//!   session gains, loses or is revoked by a principal, always before a
//!   shard's lock (one lock order, so no deadlock), which makes a revoke and
//!   a login on another thread never leave a revoked principal behind.
//!
//! **The allocator.** Freeing is the slow part of expiry: glibc's `malloc`
//! merges freed chunks with their neighbours, and gives memory back to the
//! system as it goes. When writes freed expired records themselves, a
//! million sessions expiring together made some writes take milliseconds
//! of CPU in `free` (with glibc's fastbins on or off: up to 14 writes over
//! 1 ms in a run); now only the purge thread frees, outside every lock, and
//! in four runs with each setting one write took over 1 ms of CPU while
//! they expired (1.08 ms, fastbins on; bench/results/memory-scale.md).
//! What glibc does not give back stays resident: a process that holds
//! millions of sessions in memory does better with a global allocator that
//! returns memory (jemalloc, mimalloc).
//!
//! Stores keep no clock: the background purge's "now" is the latest `now`
//! a call gave the store, moved on by the real time that has passed since.
//! With the system clock that is the present; with a manual clock it never
//! runs ahead of the time the tests have set by more than the real time
//! they take.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::id::{KeyHashing, SessionKey};
use crate::record::{Record, Timestamp, Version};
use crate::store::{
    Change, CreateOutcome, DeleteOutcome, PrincipalChange, SaveOutcome, SessionStore, TouchOutcome,
};

/// How many independently locked maps hold the records: enough that at a
/// million sessions no single map is large enough for its resize to stall
/// the writes waiting for it.
const SHARDS: usize = 128;

/// How many expired records a write frees in its shard, at most, when
/// there is no background purge.
const SWEEP_PER_WRITE: usize = 8;

/// How many expired records the background purge frees per lock taken.
const PURGE_BATCH: usize = 256;

/// How often the background purge runs.
const PURGE_EVERY: Duration = Duration::from_millis(500);

/// Sessions in this process's memory. Clones share the same sessions.
///
/// It honours the whole [`SessionStore`] contract, so it is the reference the
/// conformance suite is checked against. It does not survive a restart and
/// is not shared between instances: use a backend for that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use offstate_core::{Deadlines, MemoryStore, Record, SessionId, SessionStore, Timestamp};
///
/// let store = MemoryStore::new();
/// let key = SessionId::generate().key();
/// let now = Timestamp::from_millis(0);
/// let record = Record::new(now, Deadlines::none());
/// store.create(&key, &record, now).await.unwrap();
/// assert!(store.load(&key, now).await.unwrap().is_some());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    shards: Box<[Mutex<Shard>]>,
    principals: Mutex<HashMap<String, HashSet<SessionKey>>>,
    clock: PurgeClock,
    /// Whether the background purge runs (set at the first write).
    purger: OnceLock<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            principals: Mutex::default(),
            clock: PurgeClock::new(),
            purger: OnceLock::new(),
        }
    }
}

/// One shard: its records and their deadlines in order.
#[derive(Debug, Default)]
struct Shard {
    records: HashMap<SessionKey, Arc<Record>, KeyHashing>,
    expiries: BTreeSet<(Timestamp, SessionKey)>,
}

impl Shard {
    fn live(&self, key: &SessionKey, now: Timestamp) -> Option<&Arc<Record>> {
        self.records.get(key).filter(|r| !r.is_expired(now))
    }

    /// Puts `record` under `key`, keeping the expiry index in step.
    fn put(&mut self, key: &SessionKey, record: Arc<Record>) {
        let at = record.deadlines.expires_at();
        if let Some(old) = self.records.insert(key.clone(), record) {
            if old.deadlines.expires_at() == at {
                return;
            }
            if let Some(old_at) = old.deadlines.expires_at() {
                self.expiries.remove(&(old_at, key.clone()));
            }
        }
        if let Some(at) = at {
            self.expiries.insert((at, key.clone()));
        }
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Arc<Record>> {
        let record = self.records.remove(key)?;
        if let Some(at) = record.deadlines.expires_at() {
            self.expiries.remove(&(at, key.clone()));
        }
        Some(record)
    }

    /// Takes out up to `most` records expired at `now`, earliest first,
    /// and returns them: the caller frees them (and unindexes their
    /// principals) after releasing the shard's lock.
    fn sweep(&mut self, now: Timestamp, most: usize) -> Vec<(SessionKey, Arc<Record>)> {
        let mut swept = Vec::new();
        for _ in 0..most {
            match self.expiries.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.expiries.pop_first() else {
                break;
            };
            if let Some(record) = self.records.remove(&key) {
                swept.push((key, record));
            }
        }
        swept
    }
}

/// The purge's reading of time: the latest `now` the store was given, plus
/// the real time since.
#[derive(Debug)]
struct PurgeClock {
    start: Instant,
    /// Latest `now` seen, in ms.
    latest: AtomicU64,
    /// When it was seen, in ms since `start`.
    seen: AtomicU64,
}

impl PurgeClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            latest: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    fn saw(&self, now: Timestamp) {
        let millis = now.as_millis();
        // Relaxed loads first: most calls see no newer time than the last.
        if millis > self.latest.load(Ordering::Relaxed) {
            self.latest.fetch_max(millis, Ordering::Relaxed);
            self.seen.store(self.elapsed(), Ordering::Relaxed);
        }
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now(&self) -> Option<Timestamp> {
        let latest = self.latest.load(Ordering::Relaxed);
        if latest == 0 {
            return None;
        }
        let since = self
            .elapsed()
            .saturating_sub(self.seen.load(Ordering::Relaxed));
        Some(Timestamp::from_millis(latest.saturating_add(since)))
    }
}

impl Shared {
    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, Shard> {
        let index = shard_of(key);
        lock(&self.shards[index])
    }

    fn principals(&self) -> MutexGuard<'_, HashMap<String, HashSet<SessionKey>>> {
        lock(&self.principals)
    }

    /// A write happened at `now`: make sure the background purge runs, or,
    /// without one, take out a few expired records of the shard (for the
    /// caller to free after the lock).
    fn wrote(
        self: &Arc<Self>,
        shard: &mut Shard,
        now: Timestamp,
    ) -> Vec<(SessionKey, Arc<Record>)> {
        self.clock.saw(now);
        let purging = *self
            .purger
            .get_or_init(|| start_purger(Arc::downgrade(self)));
        if purging {
            Vec::new()
        } else {
            shard.sweep(now, SWEEP_PER_WRITE)
        }
    }

    /// Frees records taken out of their shard, and removes the index
    /// entries of those with a principal, unless the key is live under the
    /// same principal again (keys are random: only a test reuses one).
    /// Takes the index lock, then each shard's: the one lock order.
    fn unindex_freed(&self, freed: Vec<(SessionKey, Arc<Record>)>, now: Timestamp) {
        if freed.iter().all(|(_, record)| record.principal.is_none()) {
            return;
        }
        let mut principals = self.principals();
        for (key, record) in &freed {
            let Some(principal) = &record.principal else {
                continue;
            };
            let back = self
                .shard(key)
                .live(key, now)
                .is_some_and(|r| r.principal.as_ref() == Some(principal));
            if back {
                continue;
            }
            if let Some(keys) = principals.get_mut(principal) {
                keys.remove(key);
                if keys.is_empty() {
                    principals.remove(principal);
                }
            }
        }
        // The index lock is released before `freed`, the records, go.
        drop(principals);
    }

    /// One pass of the background purge over every shard.
    fn purge(&self) {
        let Some(now) = self.clock.now() else {
            return;
        };
        for shard in &*self.shards {
            loop {
                // Taken out under the lock, freed after it.
                let swept = lock(shard).sweep(now, PURGE_BATCH);
                let more = swept.len() == PURGE_BATCH;
                self.unindex_freed(swept, now);
                if !more {
                    break;
                }
            }
            // Give back the table of a shard that has emptied out (after a
            // burst of sessions has expired), but not on every small dip.
            let mut shard = lock(shard);
            if shard.records.capacity() > 4 * shard.records.len() + 1024 {
                shard.records.shrink_to_fit();
            }
        }
    }
}

/// The background purge: a thread per store that lives as long as the
/// store does (it holds only a weak reference) and wakes every
/// [`PURGE_EVERY`]. Whether it started.
fn start_purger(shared: Weak<Shared>) -> bool {
    let spawned = std::thread::Builder::new()
        .name("offstate-memory-purge".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PURGE_EVERY);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.purge();
            }
        });
    match spawned {
        Ok(_) => true,
        Err(error) => {
            // Writes free expired records instead; idle memory is kept.
            tracing::warn!(%error, "no thread for the memory store's purge");
            false
        }
    }
}

fn shard_of(key: &SessionKey) -> usize {
    // The key is a hash already: its last bytes are as good as any.
    let bytes = key.as_bytes();
    let tail = bytes.iter().rev().take(4).fold(0_usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(*b))
    });
    tail % SHARDS
}

// std Mutexes, not tokio's: never held across an await, and the critical
// sections are a few map operations. A poisoned lock only means another
// thread panicked mid-operation; each operation leaves the maps whole
// before unlocking, so they are still served.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records are held, live or not yet freed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|s| lock(s).records.len())
            .sum()
    }

    /// Whether no records are held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees every record expired at `now` at once, as the background purge
    /// does a little at a time. For tests and for a process that wants
    /// memory back at a moment of its choosing.
    pub fn purge_expired(&self, now: Timestamp) {
        self.shared.clock.saw(now);
        for shard in &*self.shared.shards {
            let swept = lock(shard).sweep(now, usize::MAX);
            self.shared.unindex_freed(swept, now);
        }
    }

    /// Indexes `key` under `principal`. Called with the index lock held.
    fn index(principals: &mut HashMap<String, HashSet<SessionKey>>, key: &SessionKey, p: &str) {
        principals
            .entry(p.to_owned())
            .or_default()
            .insert(key.clone());
    }

    fn unindex(principals: &mut HashMap<String, HashSet<SessionKey>>, key: &SessionKey, p: &str) {
        if let Some(keys) = principals.get_mut(p) {
            keys.remove(key);
            if keys.is_empty() {
                principals.remove(p);
            }
        }
    }

    /// Removes `key` and its index entry; whether a live record was there.
    fn remove_live(&self, key: &SessionKey, now: Timestamp) -> bool {
        let removed = self.shared.shard(key).remove(key);
        let Some(record) = removed else {
            return false;
        };
        let live = !record.is_expired(now);
        if record.principal.is_some() {
            self.shared.unindex_freed(vec![(key.clone(), record)], now);
        }
        live
    }
}

impl MemoryStore {
    /// A conditional save. With `built` (the record the writer read, and
    /// the one it built from it), the writer's record is kept as it is when
    /// the live record is the one it read and the built one has what
    /// applying the change would give it: no second copy of the data.
    fn save_now(
        &self,
        key: &SessionKey,
        change: &Change,
        built: Option<(&Arc<Record>, &Arc<Record>)>,
        now: Timestamp,
    ) -> SaveOutcome {
        // A principal change takes the index lock first (the one order).
        let mut principals =
            (change.principal != PrincipalChange::Keep).then(|| self.shared.principals());
        let (version, freed) = {
            let mut shard = self.shared.shard(key);
            let Some(current) = shard.live(key, now) else {
                return SaveOutcome::Gone;
            };
            if current.version != change.expected {
                return SaveOutcome::Conflict(Arc::clone(current));
            }
            let next = match built {
                Some((base, next)) if Arc::ptr_eq(base, current) && applies(change, base, next) => {
                    Arc::clone(next)
                }
                _ => Arc::new(change.apply_to(current)),
            };
            if let Some(index) = principals.as_deref_mut() {
                if let Some(old) = &current.principal {
                    Self::unindex(index, key, old);
                }
                if let Some(new) = &next.principal {
                    Self::index(index, key, new);
                }
            }
            let version = next.version;
            shard.put(key, next);
            (version, self.shared.wrote(&mut shard, now))
        };
        drop(principals);
        self.shared.unindex_freed(freed, now);
        SaveOutcome::Saved(version)
    }
}

/// Whether `next` has the version, deadlines and principal that applying
/// `change` to `base` gives (the data is the writer's word: it built `next`
/// from `base`).
fn applies(change: &Change, base: &Record, next: &Record) -> bool {
    let principal = match &change.principal {
        PrincipalChange::Set(p) => Some(p.as_str()),
        PrincipalChange::Clear => None,
        _ => base.principal.as_deref(),
    };
    next.version == change.expected.next()
        && next.deadlines == base.deadlines.extended_to(change.deadlines.idle)
        && next.principal.as_deref() == principal
}

impl SessionStore for MemoryStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        // Reads free nothing (an expired record is simply not returned): a
        // read takes one shard lock and clones one Arc.
        Ok(self.shared.shard(key).live(key, now).cloned())
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let mut principals = record.principal.as_ref().map(|_| self.shared.principals());
        let freed = {
            let mut shard = self.shared.shard(key);
            if shard.live(key, now).is_some() {
                return Ok(CreateOutcome::Exists);
            }
            // An expired record under the same key (only tests reuse keys)
            // leaves the index with the records this write frees.
            let old = shard.remove(key);
            if let (Some(index), Some(p)) = (principals.as_deref_mut(), &record.principal) {
                Self::index(index, key, p);
            }
            shard.put(key, Arc::new(record.clone()));
            let mut freed = self.shared.wrote(&mut shard, now);
            freed.extend(old.map(|record| (key.clone(), record)));
            freed
        };
        drop(principals);
        self.shared.unindex_freed(freed, now);
        Ok(CreateOutcome::Created)
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_now(key, change, None, now))
    }

    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_now(key, change, Some((base, next)), now))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let freed = {
            let mut shard = self.shared.shard(key);
            let Some(current) = shard.live(key, now) else {
                return Ok(TouchOutcome::Gone);
            };
            let deadlines = current.deadlines.extended_to(Some(idle_deadline));
            if deadlines == current.deadlines {
                return Ok(TouchOutcome::Touched);
            }
            let mut next = Record::clone(current);
            next.deadlines = deadlines;
            shard.put(key, Arc::new(next));
            self.shared.wrote(&mut shard, now)
        };
        self.shared.unindex_freed(freed, now);
        Ok(TouchOutcome::Touched)
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        Ok(self.remove_live(key, now))
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let removed = {
            let mut shard = self.shared.shard(key);
            match shard.live(key, now) {
                None => return Ok(DeleteOutcome::Gone),
                Some(current) if current.version != expected => {
                    return Ok(DeleteOutcome::Conflict(Arc::clone(current)));
                }
                Some(_) => shard.remove(key),
            }
        };
        if let Some(record) = removed.filter(|r| r.principal.is_some()) {
            self.shared.unindex_freed(vec![(key.clone(), record)], now);
        }
        Ok(DeleteOutcome::Deleted)
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let principals = self.shared.principals();
        let mut keys: Vec<SessionKey> = principals
            .get(principal)
            .into_iter()
            .flatten()
            .filter(|k| self.shared.shard(k).live(k, now).is_some())
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        // The index lock stays held while the sessions go: a login that
        // would attach the principal waits for it, and lands after.
        let mut principals = self.shared.principals();
        let keys = principals.remove(principal).unwrap_or_default();
        let mut revoked = 0;
        for key in keys {
            let mut shard = self.shared.shard(&key);
            let theirs = shard
                .records
                .get(&key)
                .is_some_and(|r| r.principal.as_deref() == Some(principal));
            if theirs
                && let Some(record) = shard.remove(&key)
                && !record.is_expired(now)
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Deadlines;

    fn record(now: Timestamp, idle: Duration) -> Record {
        Record::new(now, Deadlines::idle_at(now.saturating_add(idle)))
    }

    /// A store whose writes see `purging` as the state of the background
    /// purge, with none started: what the writes do is all that frees.
    fn store_with_purge(purging: bool) -> MemoryStore {
        let store = MemoryStore::new();
        store.shared.purger.set(purging).unwrap();
        store
    }

    /// 2,000 sessions that have expired by the time 50 more are created;
    /// how many records the store holds after those 50 writes.
    async fn held_after_writes_past_expiry(store: &MemoryStore) -> usize {
        let t0 = Timestamp::from_millis(1_000);
        for _ in 0..2_000 {
            let key = crate::SessionId::generate().key();
            store
                .create(&key, &record(t0, Duration::from_secs(1)), t0)
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 2_000);
        let later = t0.saturating_add(Duration::from_secs(2));
        for _ in 0..50 {
            let key = crate::SessionId::generate().key();
            store
                .create(&key, &record(later, Duration::from_secs(60)), later)
                .await
                .unwrap();
        }
        let held = store.len();
        store.purge_expired(later);
        assert_eq!(store.len(), 50);
        held
    }

    #[tokio::test]
    async fn with_the_background_purge_writes_free_nothing() {
        let held = held_after_writes_past_expiry(&store_with_purge(true)).await;
        assert_eq!(held, 2_050);
    }

    #[tokio::test]
    async fn without_the_background_purge_writes_free_expired_records_a_few_at_a_time() {
        let held = held_after_writes_past_expiry(&store_with_purge(false)).await;
        assert!(held < 2_000, "writes freed nothing: {held}");
        assert!(
            held >= 2_050 - 50 * SWEEP_PER_WRITE,
            "a write freed more than its share: {held}"
        );
    }

    #[tokio::test]
    async fn one_purge_pass_frees_every_expired_session_however_many() {
        // More than a batch in every shard, none with a principal: a pass
        // that stopped after the first batch of each shard left most.
        // The sessions outlive the fill by far, whatever it takes in real
        // time (the background purge's clock runs on from the last time a
        // write saw): none expires before the clock is moved past them.
        let store = MemoryStore::new();
        let t0 = Timestamp::from_millis(1_000);
        let n = SHARDS * PURGE_BATCH * 3;
        for _ in 0..n {
            let key = crate::SessionId::generate().key();
            store
                .create(&key, &record(t0, Duration::from_secs(3600)), t0)
                .await
                .unwrap();
        }
        assert_eq!(store.len(), n);
        let later = t0.saturating_add(Duration::from_secs(7200));
        store.shared.clock.saw(later);
        store.shared.purge();
        assert_eq!(store.len(), 0);
    }

    /// A store with one session created at `t0`, as loaded (the base of a
    /// change), and a change of it with the record that change builds.
    async fn built_change(
        t0: Timestamp,
    ) -> (MemoryStore, SessionKey, Arc<Record>, Change, Arc<Record>) {
        let store = MemoryStore::new();
        let key = crate::SessionId::generate().key();
        store
            .create(&key, &record(t0, Duration::from_secs(60)), t0)
            .await
            .unwrap();
        let base = store.load(&key, t0).await.unwrap().unwrap();
        let mut change = Change::new(base.version, base.deadlines);
        change.set.insert("a".into(), b"1".to_vec());
        let next = Arc::new(change.apply_to(&base));
        (store, key, base, change, next)
    }

    #[tokio::test]
    async fn a_save_with_the_record_built_keeps_it_when_the_live_record_is_its_base() {
        let t0 = Timestamp::from_millis(1_000);
        let (store, key, base, change, next) = built_change(t0).await;
        let t1 = t0.saturating_add(Duration::from_secs(1));
        let saved = store.save_applied(&key, &change, &base, &next, t1).await;
        assert_eq!(saved.unwrap(), SaveOutcome::Saved(next.version));
        let stored = store.load(&key, t1).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&stored, &next), "the change was applied again");
    }

    #[tokio::test]
    async fn a_save_with_the_record_built_from_a_record_since_touched_keeps_the_touch() {
        // Why: a touch changes the deadline, not the version. A record
        // built from the untouched one would move the deadline back.
        let t0 = Timestamp::from_millis(1_000);
        let (store, key, base, change, next) = built_change(t0).await;
        let later = t0.saturating_add(Duration::from_secs(600));
        store.touch(&key, later, t0).await.unwrap();
        let saved = store.save_applied(&key, &change, &base, &next, t0).await;
        assert_eq!(saved.unwrap(), SaveOutcome::Saved(next.version));
        let stored = store.load(&key, t0).await.unwrap().unwrap();
        assert_eq!(stored.deadlines.idle, Some(later));
        assert_eq!(stored.data.get("a").map(Vec::as_slice), Some(&b"1"[..]));
    }

    #[tokio::test]
    async fn freed_sessions_leave_the_principal_index() {
        let store = MemoryStore::new();
        let t0 = Timestamp::from_millis(1_000);
        let key = crate::SessionId::generate().key();
        let mut r = record(t0, Duration::from_secs(1));
        r.principal = Some("alice".into());
        store.create(&key, &r, t0).await.unwrap();
        store.purge_expired(t0.saturating_add(Duration::from_secs(5)));
        assert!(store.shared.principals().is_empty());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn expired_sessions_are_freed_without_traffic() {
        let store = MemoryStore::new();
        let now = Timestamp::now();
        for _ in 0..100 {
            let key = crate::SessionId::generate().key();
            store
                .create(&key, &record(now, Duration::from_millis(50)), now)
                .await
                .unwrap();
        }
        // No more calls: only the background purge can free them. It runs
        // every half second; allow it ten times that.
        let deadline = Instant::now() + PURGE_EVERY * 10;
        while !store.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} records never freed",
                store.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_purge_clock_moves_on_from_the_latest_now() {
        let clock = PurgeClock::new();
        assert_eq!(clock.now(), None);
        clock.saw(Timestamp::from_millis(5_000));
        clock.saw(Timestamp::from_millis(4_000));
        let now = clock.now().unwrap().as_millis();
        assert!((5_000..6_000).contains(&now), "{now}");
    }
}
