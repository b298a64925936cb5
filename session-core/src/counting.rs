//! `CountingStore`: a wrapper that counts the calls made to a store.
//!
//! The middleware's "zero calls when untouched" promise, the cache's "a hit
//! makes no backend call" and the benchmarks' calls-per-request figures are
//! all checked with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StoreError;
use crate::id::{KeyPrefix, SessionKey};
use crate::record::{Record, Timestamp, Version};
use crate::store::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, SaveOutcome, SessionStore, TouchOutcome,
};

/// Calls made so far, by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CallCounts {
    /// `load` calls.
    pub load: u64,
    /// `create` calls.
    pub create: u64,
    /// `save` calls.
    pub save: u64,
    /// `touch` calls.
    pub touch: u64,
    /// `delete` and `delete_if_version` calls.
    pub delete: u64,
    /// `list_principal` and `revoke_principal` calls.
    pub principal: u64,
}

impl CallCounts {
    /// All calls together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.load + self.create + self.save + self.touch + self.delete + self.principal
    }

    /// Calls that write (create, save, touch, delete, revoke).
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.create + self.save + self.touch + self.delete
    }
}

#[derive(Debug, Default)]
struct Counters {
    load: AtomicU64,
    create: AtomicU64,
    save: AtomicU64,
    touch: AtomicU64,
    delete: AtomicU64,
    principal: AtomicU64,
}

/// Wraps a store and counts its calls. Clones share the counters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use offstate_core::{CountingStore, MemoryStore, SessionId, SessionStore, Timestamp};
///
/// let store = CountingStore::new(MemoryStore::new());
/// store.load(&SessionId::generate().key(), Timestamp::from_millis(0)).await.unwrap();
/// assert_eq!(store.counts().load, 1);
/// # }
/// ```
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: Arc<S>,
    counters: Arc<Counters>,
}

impl<S> Clone for CountingStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<S> CountingStore<S> {
    /// Wraps `inner`, with all counts at zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner: Arc::new(inner),
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    #[must_use]
    pub fn counts(&self) -> CallCounts {
        let c = &self.counters;
        CallCounts {
            load: c.load.load(Ordering::Relaxed),
            create: c.create.load(Ordering::Relaxed),
            save: c.save.load(Ordering::Relaxed),
            touch: c.touch.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            principal: c.principal.load(Ordering::Relaxed),
        }
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        let c = &self.counters;
        for counter in [
            &c.load,
            &c.create,
            &c.save,
            &c.touch,
            &c.delete,
            &c.principal,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<S: SessionStore> SessionStore for CountingStore<S> {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        bump(&self.counters.load);
        self.inner.load(key, now).await
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        bump(&self.counters.create);
        self.inner.create(key, record, now).await
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        bump(&self.counters.save);
        self.inner.save(key, change, now).await
    }

    /// Counted as a save, and forwarded: the count is of the path the
    /// store takes without the wrapper.
    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        bump(&self.counters.save);
        self.inner.save_applied(key, change, base, next, now).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        bump(&self.counters.touch);
        self.inner.touch(key, idle_deadline, now).await
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        bump(&self.counters.delete);
        self.inner.delete(key, now).await
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        bump(&self.counters.delete);
        self.inner.delete_if_version(key, expected, now).await
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        bump(&self.counters.principal);
        self.inner.list_principal(principal, now).await
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        bump(&self.counters.principal);
        self.inner.revoke_principal(principal, now).await
    }

    // Not counted: a health probe is not a session call, and a count of
    // loads that includes probes would skew the per-request figures.
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
