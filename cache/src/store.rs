//! `CachedStore`: a `SessionStore` that serves hot sessions from memory.
//!
//! Rules that keep it safe without sticky routing:
//! - the cache is never ahead of the store: every write goes to the
//!   backend first, and only a successful write updates the cache;
//! - a conflict, a `Gone`, or an error evicts the entry;
//! - an entry lives at most until the session's own deadline and at most
//!   the staleness bound of the current mode;
//! - a load that raced with an invalidation does not fill the cache.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use offstate_core::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, Invalidation, InvalidationChannel, Record,
    SaveOutcome, SessionKey, SessionStore, StoreError, Timestamp, TouchOutcome, Version,
};
use tokio::task::AbortHandle;

use crate::coherence;
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

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Publisher =
    Arc<dyn Fn(Invalidation) -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) record: Arc<Record>,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<SessionKey, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &SessionKey, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &SessionKey,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) struct Shared {
    pub(crate) cache: moka::future::Cache<SessionKey, Entry>,
    /// Sequence number of the last invalidation seen per key, so a load
    /// that started before it does not fill the cache with what it read.
    recent: moka::sync::Cache<SessionKey, u64>,
    /// The same fence for whole principals (revoke-all).
    pub(crate) recent_principals: moka::sync::Cache<String, u64>,
    pub(crate) seq: AtomicU64,
    /// Sequence number of the last time the whole cache was emptied, so a
    /// load that started before it does not refill the cache.
    cleared: AtomicU64,
    /// True while the invalidation channel is live.
    pub(crate) coherent: AtomicBool,
    staleness: Duration,
    coherent_ttl: Duration,
    pub(crate) counters: Arc<Counters>,
    publisher: Option<Publisher>,
    task: std::sync::Mutex<Option<AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

impl Shared {
    /// Evicts `key` and fences off loads that started before now.
    pub(crate) async fn forget(&self, key: &SessionKey) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.recent.insert(key.clone(), seq);
        self.cache.invalidate(key).await;
    }

    /// Empties the cache and fences off every load that started before now
    /// (`invalidate_all` alone keeps entries inserted after it, such as a
    /// load in flight finishing with the coherent TTL just after a fall-back).
    pub(crate) fn clear(&self) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.fetch_max(seq, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    fn ttl_for(&self, record: &Record, now: Timestamp) -> Duration {
        let bound = if self.coherent.load(Ordering::SeqCst) {
            self.coherent_ttl
        } else {
            self.staleness
        };
        match record.deadlines.expires_at() {
            Some(at) => bound.min(at.saturating_since(now)),
            None => bound,
        }
    }

    /// Whether something invalidated `key` (or its principal, or the whole
    /// cache) after sequence number `started`.
    fn fenced(&self, key: &SessionKey, principal: Option<&str>, started: u64) -> bool {
        self.cleared.load(Ordering::SeqCst) > started
            || self.recent.get(key).is_some_and(|seq| seq > started)
            || principal.is_some_and(|p| {
                self.recent_principals
                    .get(p)
                    .is_some_and(|seq| seq > started)
            })
    }

    async fn remember(&self, key: &SessionKey, record: Arc<Record>, started: u64, now: Timestamp) {
        let principal = record.principal.clone();
        if self.fenced(key, principal.as_deref(), started) {
            return;
        }
        let ttl = self.ttl_for(&record, now);
        if ttl.is_zero() {
            return;
        }
        let entry = Entry { record, ttl };
        self.cache.insert(key.clone(), entry).await;
        // An invalidation may have landed between the check and the insert,
        // its eviction running before the insert: check again. (Fences are
        // set before their eviction runs, so one of the two sees the other.)
        if self.fenced(key, principal.as_deref(), started) {
            self.cache.invalidate(key).await;
        }
    }

    /// Tells peers, off the request path: a slow or paused channel server
    /// must not slow every write down to the channel's timeout. Peers get
    /// the message as soon as it is published either way; two messages of
    /// one session that overtake each other are harmless, since a peer
    /// keeps an entry only when it is at or past the announced version.
    fn publish(&self, message: Invalidation) {
        let Some(publish) = &self.publisher else {
            return;
        };
        let sending = publish(message);
        let report = async move {
            if let Err(error) = sending.await {
                // Peers keep what they cached until the coherent TTL at
                // most; a channel that is really down also reaches them as
                // a disconnect, which drops them to bounded staleness.
                tracing::warn!(%error, "could not publish a session invalidation");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(report);
            }
            Err(_) => tracing::error!(
                "CachedStore used outside a tokio runtime: invalidation not published"
            ),
        }
    }
}

/// A local cache in front of any [`SessionStore`], itself a store.
///
/// Two modes, chosen by whether a channel is given:
///
/// 1. **Coherent** ([`CachedStoreBuilder::with_channel`]): every save,
///    delete and revoke publishes an [`Invalidation`]; every instance evicts
///    on receipt. A change on instance A is seen by B as soon as the
///    message arrives (about one network hop). If the channel drops, the
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
            .field("coherent", &self.shared.coherent.load(Ordering::Relaxed))
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
        let publisher: Publisher = Arc::new(move |message: Invalidation| {
            let channel = Arc::clone(&channel);
            Box::pin(async move { channel.publish(&message).await })
        });
        self.channel = Some((publisher, events));
        self
    }

    /// Builds the cache. With a channel, this spawns the task that listens
    /// to it, so it must run inside a tokio runtime; outside one, the cache
    /// stays in bounded mode and logs why.
    pub fn build(self) -> CachedStore<S> {
        let counters = Arc::new(Counters::default());
        let evictions = Arc::clone(&counters);
        let cache = moka::future::Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|key: &SessionKey, entry: &Entry| {
                let bytes = key.as_str().len() + entry.record.size();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause: RemovalCause| {
                if cause.was_evicted() {
                    evictions.evicted(cause);
                }
            })
            .build();
        // Fences only need to outlive the loads they guard against.
        let fence_ttl = self.coherent_ttl.max(self.staleness) + Duration::from_secs(5);
        let recent = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(fence_ttl)
            .build();
        let recent_principals = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(fence_ttl)
            .build();
        let (publisher, events) = match self.channel {
            Some((publisher, events)) => (Some(publisher), Some(events)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            cache,
            recent,
            recent_principals,
            seq: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            coherent: AtomicBool::new(false),
            staleness: self.staleness,
            coherent_ttl: self.coherent_ttl,
            counters,
            publisher,
            task: std::sync::Mutex::new(None),
        });
        if let Some(events) = events {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let task = runtime.spawn(coherence::listen(Arc::downgrade(&shared), events));
                    if let Ok(mut slot) = shared.task.lock() {
                        *slot = Some(task.abort_handle());
                    }
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

    /// Whether the cache currently runs coherent (channel live) rather than
    /// on bounded staleness.
    #[must_use]
    pub fn is_coherent(&self) -> bool {
        self.shared.coherent.load(Ordering::SeqCst)
    }

    /// The store behind the cache.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Cached entries (approximate until pending maintenance runs).
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.shared.cache.entry_count()
    }

    /// Bytes of cached records (approximate until pending maintenance runs).
    #[must_use]
    pub fn weighted_size(&self) -> u64 {
        self.shared.cache.weighted_size()
    }

    /// Runs the cache's pending maintenance (evictions, counts) now.
    pub async fn run_pending_tasks(&self) {
        self.shared.cache.run_pending_tasks().await;
    }
}

impl<S: SessionStore> SessionStore for CachedStore<S> {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let shared = &self.shared;
        if let Some(entry) = shared.cache.get(key).await {
            if !entry.record.is_expired(now) {
                shared.counters.bump(Counter::Hit);
                return Ok(Some(entry.record));
            }
            shared.cache.invalidate(key).await;
        }
        shared.counters.bump(Counter::Miss);
        let started = shared.seq.load(Ordering::SeqCst);
        match self.inner.load(key, now).await {
            Ok(Some(record)) => {
                shared
                    .remember(key, Arc::clone(&record), started, now)
                    .await;
                Ok(Some(record))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                shared.forget(key).await;
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
        if let Ok(CreateOutcome::Created) = outcome {
            shared
                .remember(key, Arc::new(record.clone()), started, now)
                .await;
        }
        outcome
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let shared = &self.shared;
        let started = shared.seq.load(Ordering::SeqCst);
        let cached = shared.cache.get(key).await;
        let outcome = self.inner.save(key, change, now).await;
        match &outcome {
            Ok(SaveOutcome::Saved(version)) => {
                match cached.filter(|e| e.record.version == change.expected) {
                    Some(entry) => {
                        let mut next = change.apply_to(&entry.record);
                        next.version = *version;
                        shared.remember(key, Arc::new(next), started, now).await;
                    }
                    None => shared.forget(key).await,
                }
                shared.publish(Invalidation::Key {
                    key: key.clone(),
                    version: Some(*version),
                });
            }
            Ok(SaveOutcome::Conflict(_)) => {
                shared.counters.bump(Counter::Conflict);
                shared.forget(key).await;
            }
            _ => shared.forget(key).await,
        }
        outcome
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let shared = &self.shared;
        let started = shared.seq.load(Ordering::SeqCst);
        let cached = shared.cache.get(key).await;
        let outcome = self.inner.touch(key, idle_deadline, now).await;
        match (&outcome, cached) {
            (Ok(TouchOutcome::Touched), Some(entry)) => {
                let mut record = (*entry.record).clone();
                record.deadlines = record.deadlines.extended_to(Some(idle_deadline));
                shared.remember(key, Arc::new(record), started, now).await;
            }
            (Ok(TouchOutcome::Touched), None) => {}
            _ => shared.forget(key).await,
        }
        outcome
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        let shared = &self.shared;
        shared.forget(key).await;
        let outcome = self.inner.delete(key, now).await;
        shared.forget(key).await;
        shared.publish(Invalidation::Key {
            key: key.clone(),
            version: None,
        });
        outcome
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let shared = &self.shared;
        shared.forget(key).await;
        let outcome = self.inner.delete_if_version(key, expected, now).await;
        shared.forget(key).await;
        if let Ok(DeleteOutcome::Deleted) | Err(_) = outcome {
            shared.publish(Invalidation::Key {
                key: key.clone(),
                version: None,
            });
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
        let outcome = self.inner.revoke_principal(principal, now).await;
        coherence::forget_principal(shared, principal).await;
        shared.publish(Invalidation::Principal(principal.to_owned()));
        outcome
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
