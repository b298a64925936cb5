//! `CachedStore`: a `SessionStore` that serves hot sessions from memory.
//!
//! Rules that keep it safe without sticky routing:
//! - the cache is never ahead of the store: every write goes to the
//!   backend first, and only a successful write updates the cache;
//! - a conflict, a `Gone`, or an error evicts the entry; a delete or a
//!   revoke evicts before the backend call and again after it;
//! - every write that changes or ends a session is announced before the
//!   call returns: by the store itself when it announces its writes, else
//!   by the cache (see `Shared::announce`);
//! - a write whose outcome is unknown puts this instance on the staleness
//!   bound for the coherent TTL and is announced again one bound later;
//! - an entry lives at most until the session's own deadline and at most
//!   the staleness bound of the current mode;
//! - a load that raced with an invalidation does not fill the cache, and
//!   never replaces a newer version.
//!
//! Why this file is long: each `SessionStore` method's cache bookkeeping
//! (remember, forget, announce, fence) sits beside the backend call it
//! wraps, so that every rule above can be checked against one `impl`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use offstate_core::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, Invalidation, InvalidationChannel,
    KeyPrefix, Record, SaveOutcome, SessionKey, SessionStore, StoreError, Timestamp, TouchOutcome,
    Version,
};

use crate::coherence;
use crate::echo::Echoes;
use crate::entries::Entries;
use crate::fences::Fences;
use crate::inbox::Inbox;
use crate::shared::{InTransit, Publisher, Shared};
use crate::stats::{CacheStats, Counter, Counters};

/// Default staleness bound when no invalidation channel is live: 1 second.
///
/// It is the longest a change or logout made on one instance can go
/// unnoticed by another. One second is shorter than a person takes to
/// switch tabs after logging out, yet long enough to absorb the burst of
/// parallel requests one page load makes, which is where a session cache
/// pays off.
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(1);

/// Default cap on an entry's life while the channel is live: a safety net
/// for an invalidation lost without the channel noticing.
pub const DEFAULT_COHERENT_TTL: Duration = Duration::from_secs(30);

/// Default memory budget: 64 MiB of session records.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A local cache in front of any [`SessionStore`], itself a store.
///
/// Two modes, chosen by whether a channel is given:
///
/// 1. **Coherent** ([`CachedStoreBuilder::with_channel`]): every save,
///    delete and revoke is announced as an [`Invalidation`], by the store
///    itself when it [announces its writes](Capabilities::announces_writes),
///    else by the cache before the call returns; every instance evicts on
///    receipt. If the channel drops, or this instance's publishes fail, the
///    cache empties itself and runs in bounded mode until it is back,
///    counting a fallback and logging it.
/// 2. **Bounded staleness** (no channel): an entry is served for at most
///    the staleness bound ([`DEFAULT_STALENESS`]). A logout on instance A
///    may go unnoticed by B for up to that bound; after it, B asks the
///    backend and sees the session gone.
///
/// The crate docs spell out what a logout on one instance means for the
/// others in each mode.
///
/// In both modes writes are never lost: they are conditional on the version,
/// so a write based on a stale cached record meets a conflict, and the
/// [`Session`](offstate_core::Session) handle merges and retries.
pub struct CachedStore<S> {
    inner: Arc<S>,
    shared: Arc<Shared>,
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("coherent", &self.shared.is_coherent())
            .field("entries", &self.shared.cache.entry_count())
            .field("stats", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// Builds a [`CachedStore`].
#[must_use]
pub struct CachedStoreBuilder<S> {
    inner: S,
    max_bytes: u64,
    staleness: Duration,
    coherent_ttl: Duration,
    channel: Option<(
        Publisher,
        tokio::sync::mpsc::Receiver<offstate_core::ChannelEvent>,
        InTransit,
    )>,
}

impl<S> fmt::Debug for CachedStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("max_bytes", &self.max_bytes)
            .field("staleness", &self.staleness)
            .field("coherent_ttl", &self.coherent_ttl)
            .field("channel", &self.channel.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> CachedStoreBuilder<S> {
    /// Sets the memory budget in bytes of cached records.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets the staleness bound for bounded mode (and for fallback).
    pub fn with_staleness(mut self, bound: Duration) -> Self {
        self.staleness = bound;
        self
    }

    /// Sets the cap on an entry's life while the channel is live.
    pub fn with_coherent_ttl(mut self, ttl: Duration) -> Self {
        self.coherent_ttl = ttl;
        self
    }

    /// Makes the cache coherent across instances through `channel`.
    pub fn with_channel<C: InvalidationChannel>(mut self, channel: C) -> Self {
        let events = channel.subscribe();
        let channel = Arc::new(channel);
        let watched = Arc::clone(&channel);
        let in_transit: InTransit = Arc::new(move |copy| watched.in_transit(copy));
        let publisher: Publisher = Arc::new(move |message: Invalidation| {
            let channel = Arc::clone(&channel);
            Box::pin(async move { channel.publish(&message).await })
        });
        self.channel = Some((publisher, events, in_transit));
        self
    }

    /// Builds the cache. With a channel, this spawns the task that listens
    /// to it, so it must run inside a tokio runtime; outside one, the cache
    /// stays in bounded mode and logs why.
    pub fn build(self) -> CachedStore<S> {
        let counters = Arc::new(Counters::default());
        let cache = Entries::new(self.max_bytes, Arc::clone(&counters));
        // Fences only need to outlive the loads they guard against.
        let fence_ttl = self.coherent_ttl.max(self.staleness) + Duration::from_secs(5);
        let recent = Fences::new(fence_ttl, 100_000);
        let recent_principals = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(fence_ttl)
            .build();
        let (publisher, events, in_transit) = match self.channel {
            Some((publisher, events, in_transit)) => {
                (Some(publisher), Some(events), Some(in_transit))
            }
            None => (None, None, None),
        };
        let inbox = events.map(|events| Arc::new(Inbox::new(events)));
        // A store that announces its own writes, atomically with them, needs
        // no second announcement from the cache.
        let publisher = publisher.filter(|_| !self.inner.capabilities().announces_writes);
        let shared = Arc::new(Shared {
            cache,
            recent,
            recent_principals,
            seq: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            publish_failing: AtomicBool::new(false),
            unsure_until: Mutex::new(None),
            staleness: self.staleness,
            coherent_ttl: self.coherent_ttl,
            counters,
            publisher,
            unsent: Mutex::new(VecDeque::new()),
            retrying: AtomicBool::new(false),
            inbox: inbox.clone(),
            in_transit,
            echoes: Echoes::default(),
            task: Mutex::new(None),
        });
        if let Some(inbox) = inbox {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let task = runtime.spawn(coherence::listen(Arc::downgrade(&shared), inbox));
                    *shared.task.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(task.abort_handle());
                }
                Err(_) => tracing::error!(
                    "CachedStore built outside a tokio runtime: no invalidation listener, bounded staleness only"
                ),
            }
        }
        CachedStore {
            inner: Arc::new(self.inner),
            shared,
        }
    }
}

impl<S: SessionStore> CachedStore<S> {
    /// Starts building a cache in front of `inner`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use offstate_cache::CachedStore;
    /// use offstate_core::{LocalChannel, MemoryStore};
    ///
    /// let cached = CachedStore::builder(MemoryStore::new())
    ///     .with_max_bytes(16 * 1024 * 1024)
    ///     .with_staleness(Duration::from_millis(500))
    ///     .with_channel(LocalChannel::new())
    ///     .build();
    /// assert_eq!(cached.stats().hits, 0);
    /// # }
    /// ```
    pub fn builder(inner: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            inner,
            max_bytes: DEFAULT_MAX_BYTES,
            staleness: DEFAULT_STALENESS,
            coherent_ttl: DEFAULT_COHERENT_TTL,
            channel: None,
        }
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.shared.counters.snapshot()
    }

    /// Whether the cache currently runs coherent rather than on bounded
    /// staleness: the channel is live, this instance's invalidations get
    /// through, and no write of unknown outcome may still land unannounced.
    #[must_use]
    pub fn is_coherent(&self) -> bool {
        self.shared.is_coherent()
    }

    /// Whether the channel has delivered events this instance has not
    /// finished handling yet. A load skips the cache while one of them, or
    /// a message still in the channel, is about its session (see
    /// [`InvalidationChannel::in_transit`]).
    #[must_use]
    pub fn has_pending_invalidations(&self) -> bool {
        self.shared.has_pending()
    }

    /// Whether the store behind the cache announces its own writes (then
    /// the cache publishes nothing; see the crate docs).
    #[must_use]
    pub fn store_announces_writes(&self) -> bool {
        self.inner.capabilities().announces_writes
    }

    /// The store behind the cache.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Cached entries (expired ones included until freed).
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.shared.cache.entry_count()
    }

    /// Bytes of cached keys and records.
    #[must_use]
    pub fn weighted_size(&self) -> u64 {
        self.shared.cache.weighted_size()
    }

    /// Frees expired entries now, instead of as later inserts come (counts
    /// and sizes are exact at all times).
    pub async fn run_pending_tasks(&self) {
        self.shared.cache.sweep_expired();
    }
}

impl<S> CachedStore<S> {
    /// After a write whose outcome is unknown, on a store that does not
    /// announce its writes: the write may land after the invalidation sent
    /// for it, and a peer may reload the old version in between. A second
    /// invalidation, one staleness bound later, catches a write that lands
    /// within that time; this instance itself caches under the staleness
    /// bound meanwhile.
    fn announce_again_later(&self, message: Invalidation) {
        if self.shared.publisher.is_none() {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let delay = self.shared.staleness;
        let again = async move {
            tokio::time::sleep(delay).await;
            if let Some(shared) = shared.upgrade() {
                shared.forget_message(&message);
                shared.announce(message).await;
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(again);
        }
    }
}

impl<S: SessionStore> SessionStore for CachedStore<S> {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let shared = &self.shared;
        // An invalidation that reached this process but is not handled yet
        // may be about this session: then the backend answers, not memory.
        // Read first, so that an eviction finishing after the entry was
        // read is noticed (see `Shared::may_serve`).
        let evictions = shared.evictions.load(Ordering::SeqCst);
        // `get` hands out only entries within their cache lifetime.
        if let Some(entry) = shared.cache.get(key) {
            if entry.record.is_expired(now) {
                shared.cache.remove(key);
            } else if shared.may_serve(key, &entry, evictions).await {
                shared.counters.bump(Counter::Hit);
                return Ok(Some(entry.record));
            }
        }
        shared.counters.bump(Counter::Miss);
        let started = shared.seq.load(Ordering::SeqCst);
        match self.inner.load(key, now).await {
            Ok(Some(record)) => {
                shared.remember(key, Arc::clone(&record), started, now);
                Ok(Some(record))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                shared.forget(key);
                Err(error)
            }
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let shared = &self.shared;
        let started = shared.seq.load(Ordering::SeqCst);
        let outcome = self.inner.create(key, record, now).await;
        match outcome {
            Ok(CreateOutcome::Created) => {
                shared.remember(key, Arc::new(record.clone()), started, now);
            }
            Ok(_) => {}
            // A new key: no peer has it cached, so nothing to announce.
            Err(_) => shared.forget(key),
        }
        outcome
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_with(key, change, None, now).await
    }

    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_with(key, change, Some((base, next)), now).await
    }
    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let shared = &self.shared;
        let started = shared.seq.load(Ordering::SeqCst);
        let cached = shared.cache.get(key);
        let outcome = self.inner.touch(key, idle_deadline, now).await;
        // A touch only moves the idle deadline later: a peer's copy with
        // the earlier deadline errs on the safe side, so nothing is
        // announced.
        match (&outcome, cached) {
            (Ok(TouchOutcome::Touched), Some(entry)) => {
                let mut record = (*entry.record).clone();
                record.deadlines = record.deadlines.extended_to(Some(idle_deadline));
                shared.remember(key, Arc::new(record), started, now);
            }
            (Ok(TouchOutcome::Touched), None) => {}
            _ => shared.forget(key),
        }
        outcome
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        let shared = &self.shared;
        shared.forget(key);
        let outcome = self.inner.delete(key, now).await;
        // Again: a load that started during the delete may have read the
        // record before it went.
        shared.forget(key);
        let message = Invalidation::Key {
            key: key.clone(),
            version: None,
        };
        if outcome.is_err() {
            shared.unsure();
            self.announce_again_later(message.clone());
        }
        shared.announce(message.clone()).await;
        if outcome.is_ok() {
            shared.returned(message);
        }
        outcome
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let shared = &self.shared;
        shared.forget(key);
        let outcome = self.inner.delete_if_version(key, expected, now).await;
        shared.forget(key);
        if outcome.is_err() {
            shared.unsure();
            self.announce_again_later(Invalidation::Key {
                key: key.clone(),
                version: None,
            });
        }
        if let Ok(DeleteOutcome::Deleted) | Err(_) = outcome {
            let message = Invalidation::Key {
                key: key.clone(),
                version: None,
            };
            shared.announce(message.clone()).await;
            if outcome.is_ok() {
                shared.returned(message);
            }
        }
        outcome
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        self.inner.list_principal(principal, now).await
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        let shared = &self.shared;
        // Before the backend call: while the revoke runs, this instance
        // serves none of the principal's sessions from memory.
        shared.forget_principal(principal);
        let outcome = self.inner.revoke_principal(principal, now).await;
        // And after it: a load that read a session before the revoke
        // reached it must not be served from now on.
        shared.forget_principal(principal);
        let message = Invalidation::Principal(principal.to_owned());
        if outcome.is_err() {
            shared.unsure();
            self.announce_again_later(message.clone());
        }
        shared.announce(message.clone()).await;
        if outcome.is_ok() {
            shared.returned(message);
        }
        outcome
    }

    // The backend's answer, never the cache's: a health probe must not be
    // served from memory while the store is down.
    async fn ping(&self, now: Timestamp) -> Result<(), StoreError> {
        self.inner.ping(now).await
    }

    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        self.inner.key_prefix(principal)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn server_address(&self) -> Option<&str> {
        self.inner.server_address()
    }
}

impl<S: SessionStore> CachedStore<S> {
    /// A save through the backend; with `applied` (the record the writer
    /// read and the one it built), the backend may take the built record
    /// (`save_applied`) and the cache keeps it as it is.
    async fn save_with(
        &self,
        key: &SessionKey,
        change: &Change,
        applied: Option<(&Arc<Record>, &Arc<Record>)>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let shared = &self.shared;
        let started = shared.seq.load(Ordering::SeqCst);
        let cached = shared.cache.get(key);
        let outcome = match applied {
            Some((base, next)) => self.inner.save_applied(key, change, base, next, now).await,
            None => self.inner.save(key, change, now).await,
        };
        match &outcome {
            Ok(SaveOutcome::Saved(version)) => {
                match cached.filter(|e| e.record.version == change.expected) {
                    // The writer's record is the one this save made, but
                    // for the idle deadline: the cached one may be later
                    // (a touch), and deadlines never move backwards.
                    Some(entry) => {
                        let next = match applied {
                            Some((_, next))
                                if next.version == *version
                                    && next.deadlines
                                        == entry
                                            .record
                                            .deadlines
                                            .extended_to(change.deadlines.idle) =>
                            {
                                Arc::clone(next)
                            }
                            _ => {
                                let mut next = change.apply_to(&entry.record);
                                next.version = *version;
                                Arc::new(next)
                            }
                        };
                        shared.remember(key, next, started, now);
                    }
                    None => shared.forget(key),
                }
                let message = Invalidation::Key {
                    key: key.clone(),
                    version: Some(*version),
                };
                shared.announce(message.clone()).await;
                shared.returned(message);
            }
            Ok(SaveOutcome::Conflict(_)) => {
                // The caller replays on the record the backend sent with the
                // conflict; the next load asks the backend too.
                shared.counters.bump(Counter::Conflict);
                shared.forget(key);
            }
            Ok(_) => shared.forget(key),
            Err(_) => {
                // Applied or not: nobody knows. Peers must not keep the old
                // version, and neither may this instance.
                shared.forget(key);
                shared.unsure();
                let message = Invalidation::Key {
                    key: key.clone(),
                    version: None,
                };
                self.announce_again_later(message.clone());
                shared.announce(message).await;
            }
        }
        outcome
    }
}
