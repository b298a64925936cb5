//! The state one `CachedStore` shares with its clones and its listener:
//! the entries, the fences that keep loads in flight from refilling what
//! was invalidated, the mode (coherent or bounded), and the announcing of
//! this instance's writes to its peers.
//!
//! Time here is tokio time (`tokio::time::Instant`): an entry is served
//! only before its `until`, checked on every hit, so paused-time tests
//! drive staleness exactly.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use offstate_core::{CachedCopy, Invalidation, Record, SessionKey, StoreError, Timestamp, Version};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::echo::Echoes;
use crate::entries::{Entries, Entry};
use crate::fences::{Fence, Fences};
use crate::inbox::Inbox;
use crate::stats::{Counter, Counters};
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(crate) type Publisher =
    Arc<dyn Fn(Invalidation) -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;
/// How many times a load yields for pending invalidations to be handled
/// before it reads the backend instead of its cache.
const DRAIN_TURNS: u32 = 16;

/// The channel's `in_transit`.
pub(crate) type InTransit = Arc<dyn Fn(&CachedCopy<'_>) -> bool + Send + Sync>;

/// How many unsent invalidations an instance keeps to send again once a
/// publish succeeds; past it, the oldest are dropped (peers still have the
/// coherent TTL as their last net).
const UNSENT_MAX: usize = 1024;

pub(crate) struct Shared {
    pub(crate) cache: Entries,
    /// The last invalidations seen per key, so a load that started before
    /// them does not fill the cache with what it read.
    pub(crate) recent: Fences,
    /// The same fence for whole principals (revoke-all).
    pub(crate) recent_principals: moka::sync::Cache<String, u64>,
    pub(crate) seq: AtomicU64,
    /// Sequence number of the last time the whole cache was emptied, so a
    /// load that started before it does not refill the cache.
    pub(crate) cleared: AtomicU64,
    /// Evictions done (bumped once each has taken effect), so a hit can
    /// tell whether one finished while it checked what is pending.
    pub(crate) evictions: AtomicU64,
    /// True while the invalidation channel reports itself live.
    pub(crate) subscribed: AtomicBool,
    /// True after a publish of this instance failed, until one succeeds.
    pub(crate) publish_failing: AtomicBool,
    /// Until then, this instance caches under the staleness bound only: a
    /// write whose outcome was unknown may still land unannounced.
    pub(crate) unsure_until: Mutex<Option<Instant>>,
    pub(crate) staleness: Duration,
    pub(crate) coherent_ttl: Duration,
    pub(crate) counters: Arc<Counters>,
    /// `None` without a channel, and when the store announces its writes.
    pub(crate) publisher: Option<Publisher>,
    /// Invalidations whose publish failed, sent again before the next one.
    pub(crate) unsent: Mutex<VecDeque<Invalidation>>,
    /// True while a background task sends what is queued.
    pub(crate) retrying: AtomicBool,
    /// The channel's events not yet handled by the listener (`None`
    /// without a channel).
    pub(crate) inbox: Option<Arc<Inbox>>,
    /// Whether the channel holds a message about a session not yet in the
    /// inbox.
    pub(crate) in_transit: Option<InTransit>,
    /// When this instance's own announced writes returned, to time their
    /// announcements' way back.
    pub(crate) echoes: Echoes,
    pub(crate) task: Mutex<Option<AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Shared {
    /// Whether entries cached now may live for the coherent TTL: the
    /// channel is live, this instance's publishes get through, and no
    /// write of unknown outcome may still land.
    pub(crate) fn is_coherent(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
            && !self.publish_failing.load(Ordering::SeqCst)
            && !self.is_unsure()
    }

    /// Whether the cached `entry` of `key`, read after `evictions` was
    /// read, may be served: nothing pending concerns it (see
    /// [`Shared::pending_for`]), after letting the listener handle what
    /// does for a few turns, and no eviction that finished meanwhile
    /// removed it.
    ///
    /// Why the second part: an invalidation handled between reading the
    /// entry and checking what is pending is seen by neither. Every
    /// eviction bumps `evictions` once it has taken effect, so if the count
    /// is unchanged none finished; if it moved, the entry is read again and
    /// served only if it is still the same record.
    pub(crate) async fn may_serve(&self, key: &SessionKey, entry: &Entry, evictions: u64) -> bool {
        let record = &entry.record;
        let copy = CachedCopy::new(key, record.principal.as_deref(), record.version);
        if self.pending_for(&copy) && !self.drained_for(&copy).await {
            return false;
        }
        if self.evictions.load(Ordering::SeqCst) == evictions {
            return true;
        }
        self.cache
            .get(key)
            .is_some_and(|now| Arc::ptr_eq(&now.record, record))
    }

    /// Whether something that concerns `copy` (see
    /// [`Invalidation::concerns`]), or that cannot be told, has reached
    /// this process and not been handled yet: on its way in the channel
    /// (on the subscriber's socket, say), in the inbox, or being handled.
    /// The channel goes first: each stage marks a message before the one
    /// before lets go.
    pub(crate) fn pending_for(&self, copy: &CachedCopy<'_>) -> bool {
        let Some(inbox) = &self.inbox else {
            return false;
        };
        if self
            .in_transit
            .as_ref()
            .is_some_and(|in_transit| in_transit(copy))
        {
            return true;
        }
        inbox.holds(|event| crate::inbox::concerns(event, copy))
    }

    /// Lets the listener handle what is pending about `copy`, for a few
    /// turns of the scheduler: true once nothing is. Only a message about
    /// this very session (or one that cannot be read) makes a hit wait.
    async fn drained_for(&self, copy: &CachedCopy<'_>) -> bool {
        for _ in 0..DRAIN_TURNS {
            tokio::task::yield_now().await;
            if !self.pending_for(copy) {
                return true;
            }
        }
        false
    }

    /// Whether the channel has delivered events this instance has not
    /// finished handling.
    pub(crate) fn has_pending(&self) -> bool {
        self.inbox
            .as_ref()
            .is_some_and(|inbox| inbox.holds(|_| true))
    }

    fn is_unsure(&self) -> bool {
        let unsure = self
            .unsure_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unsure.is_some_and(|until| Instant::now() < until)
    }

    /// Evicts `key` and fences off loads that started before now.
    pub(crate) fn forget(&self, key: &SessionKey) {
        self.forget_before(key, None);
    }

    /// Evicts the cached copy of `key` if it is older than `version`
    /// (every copy, with `None`), and fences off loads still in flight
    /// likewise. An announcement that a session is now at version 7 makes
    /// copies of 6 stale, not the 7 this instance's own write has just
    /// cached: its echo often arrives before the write's caller has cached
    /// the result, and evicting or fencing that would turn the next read
    /// into a miss.
    pub(crate) fn forget_before(&self, key: &SessionKey, version: Option<Version>) {
        if let Some(version) = version {
            // The usual echo of this instance's own write, handled after
            // the write cached its result: nothing older is left to evict,
            // and a slower load cannot replace a newer entry.
            if self.cache.holds_at_least(key, version) {
                return;
            }
        }
        let fence = Fence::new(self.seq.fetch_add(1, Ordering::SeqCst) + 1, version);
        self.recent.add(key, fence, &self.cleared);
        match version {
            None => {
                self.cache.remove(key);
            }
            Some(version) => self.cache.remove_older_than(key, version),
        }
        self.evictions.fetch_add(1, Ordering::SeqCst);
    }

    /// Evicts every cached session of `principal`, and fences off loads of
    /// them that are still in flight.
    pub(crate) fn forget_principal(&self, principal: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.recent_principals.insert(principal.to_owned(), seq);
        self.cache.remove_principal(principal);
        self.evictions.fetch_add(1, Ordering::SeqCst);
    }

    /// Evicts what `message` names, on this instance.
    pub(crate) fn forget_message(&self, message: &Invalidation) {
        match message {
            Invalidation::Key { key, .. } => self.forget(key),
            Invalidation::Principal(principal) => self.forget_principal(principal),
            _ => self.clear(),
        }
    }

    /// Empties the cache and fences off every load that started before now
    /// (`invalidate_all` alone keeps entries inserted after it, such as a
    /// load in flight finishing with the coherent TTL just after a fall-back).
    pub(crate) fn clear(&self) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.fetch_max(seq, Ordering::SeqCst);
        self.cache.clear();
        self.evictions.fetch_add(1, Ordering::SeqCst);
    }

    /// How long an entry for `record` may be served from now.
    fn ttl_for(&self, record: &Record, now: Timestamp) -> Duration {
        let bound = if self.is_coherent() {
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
    fn fenced(&self, key: &SessionKey, record: &Record, started: u64) -> bool {
        // Every fence and clear takes its number from `seq`: if it has not
        // moved, nothing happened since `started`.
        if self.seq.load(Ordering::SeqCst) == started {
            return false;
        }
        let principal = record.principal.as_deref();
        self.cleared.load(Ordering::SeqCst) > started
            || self
                .recent
                .get(key)
                .is_some_and(|fence| fence.blocks(started, record.version))
            || principal.is_some_and(|p| {
                self.recent_principals
                    .get(p)
                    .is_some_and(|seq| seq > started)
            })
    }

    /// Caches `record` under `key`, unless an invalidation since `started`
    /// fences it off.
    pub(crate) fn remember(
        &self,
        key: &SessionKey,
        record: Arc<Record>,
        started: u64,
        now: Timestamp,
    ) {
        if self.fenced(key, &record, started) {
            return;
        }
        let ttl = self.ttl_for(&record, now);
        if ttl.is_zero() {
            return;
        }
        // Never replaces a newer version (see `Entries::put_unless_newer`).
        let entry = Entry::new(Arc::clone(&record), ttl);
        if !self.cache.put_unless_newer(key, entry) {
            return;
        }
        // An invalidation may have landed between the check and the insert,
        // its eviction running before the insert: check again. (Fences are
        // set before their eviction runs, so one of the two sees the other.)
        if self.fenced(key, &record, started) {
            self.cache.remove(key);
            self.evictions.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Drops to bounded staleness: entries cached under the coherent TTL
    /// go, and new ones get the staleness bound.
    pub(crate) fn fall_back(&self, why: &'static str) {
        self.counters.bump(Counter::Fallback);
        tracing::warn!(why, "session cache falls back to bounded staleness");
        self.clear();
    }

    /// A write whose outcome is unknown (its answer was lost): it may have
    /// been applied, and on a store that does not announce its writes it
    /// may even land after the invalidation sent for it. For the coherent
    /// TTL from now this instance caches under the staleness bound only.
    pub(crate) fn unsure(&self) {
        self.counters.bump(Counter::UnknownOutcome);
        if self.publisher.is_none() {
            // Either no channel (always bounded) or a store whose writes
            // announce themselves when they land: nothing more to do.
            return;
        }
        let until = Instant::now() + self.coherent_ttl;
        let mut unsure = self
            .unsure_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *unsure = Some(unsure.map_or(until, |at| at.max(until)));
        drop(unsure);
        tracing::warn!(
            "a session write's outcome is unknown; the cache runs on bounded staleness for the coherent TTL"
        );
    }

    /// This instance's write announced `message` and returns now: remembered
    /// to time the message's way back through the subscription.
    pub(crate) fn returned(&self, message: Invalidation) {
        if self.inbox.is_some() {
            self.echoes.returned(message);
        }
    }

    /// Tells peers about this instance's write, as part of the write: the
    /// caller answers its client only after this returns, so no client
    /// hears "done" before the message is on its way to every peer.
    ///
    /// Nothing is sent when the store announces its writes itself. A
    /// failed publish is kept and sent again before the next one, and
    /// until a publish succeeds this instance runs on bounded staleness
    /// (counted in `publish_failures` and `fallbacks`). Meanwhile writes do
    /// not wait for the channel: their messages queue behind the lost one
    /// and go out in the background, so a dead channel costs one publish
    /// timeout, not one per write.
    pub(crate) async fn announce(self: &Arc<Self>, message: Invalidation) {
        if self.publisher.is_none() {
            return;
        }
        if !self.publish_failing.load(Ordering::SeqCst) {
            self.send(Some(message)).await;
            return;
        }
        self.queue(std::iter::once(message));
        if !self.retrying.swap(true, Ordering::SeqCst) {
            let shared = Arc::clone(self);
            let retry = async move {
                loop {
                    shared.send(None).await;
                    let done = shared.publish_failing.load(Ordering::SeqCst)
                        || shared
                            .unsent
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_empty();
                    if done {
                        break;
                    }
                }
                shared.retrying.store(false, Ordering::SeqCst);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(retry);
                }
                Err(_) => self.retrying.store(false, Ordering::SeqCst),
            }
        }
    }

    /// Keeps messages to send later, dropping the oldest past the cap.
    fn queue(&self, messages: impl IntoIterator<Item = Invalidation>) {
        let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
        for message in messages {
            if unsent.len() == UNSENT_MAX {
                unsent.pop_front();
            }
            unsent.push_back(message);
        }
    }

    /// Sends what is waiting to be sent, if anything (on reconnect).
    pub(crate) async fn flush_unsent(&self) {
        self.send(None).await;
    }

    async fn send(&self, message: Option<Invalidation>) {
        let Some(publish) = &self.publisher else {
            return;
        };
        let mut batch: Vec<Invalidation> = self
            .unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        batch.extend(message);
        if batch.is_empty() {
            return;
        }
        let mut pending = batch.into_iter();
        while let Some(message) = pending.next() {
            if let Err(error) = publish(message.clone()).await {
                tracing::warn!(%error, "could not publish a session invalidation");
                self.counters.bump(Counter::PublishFailure);
                self.queue(std::iter::once(message).chain(pending));
                if !self.publish_failing.swap(true, Ordering::SeqCst) {
                    self.fall_back("this instance's invalidations do not get through");
                }
                return;
            }
        }
        if self.publish_failing.swap(false, Ordering::SeqCst) {
            tracing::info!("session invalidations get through again");
        }
    }
}
