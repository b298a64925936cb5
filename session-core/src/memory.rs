//! `MemoryStore`: the embedded default, for one process, tests and workers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::StoreError;
use crate::id::SessionKey;
use crate::record::{Record, Timestamp, Version};
use crate::store::{
    Change, CreateOutcome, DeleteOutcome, PrincipalChange, SaveOutcome, SessionStore, TouchOutcome,
};

/// Sweep expired records once per this many writes, so memory stays bounded
/// by live sessions without a background task.
const SWEEP_EVERY: u64 = 1024;

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
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    records: HashMap<SessionKey, Arc<Record>>,
    principals: HashMap<String, HashSet<SessionKey>>,
    writes: u64,
}

impl Shared {
    fn live(&self, key: &SessionKey, now: Timestamp) -> Option<&Arc<Record>> {
        self.records.get(key).filter(|r| !r.is_expired(now))
    }

    fn index(&mut self, key: &SessionKey, principal: Option<&String>) {
        if let Some(p) = principal {
            self.principals
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    fn unindex(&mut self, key: &SessionKey, principal: Option<&String>) {
        if let Some(p) = principal
            && let Some(keys) = self.principals.get_mut(p)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.principals.remove(p);
            }
        }
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Arc<Record>> {
        let record = self.records.remove(key)?;
        self.unindex(key, record.principal.as_ref());
        Some(record)
    }

    fn wrote(&mut self, now: Timestamp) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let expired: Vec<SessionKey> = self
                .records
                .iter()
                .filter(|(_, r)| r.is_expired(now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                self.remove(&key);
            }
        }
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records are held, live or not yet swept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether no records are held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A std Mutex, not tokio's: it is never held across an await, and the
    // critical sections are a few map operations. A poisoned lock only means
    // another thread panicked mid-operation; the maps are still consistent
    // enough to serve (each operation leaves them whole before unlocking).
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SessionStore for MemoryStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let mut shared = self.lock();
        match shared.records.get(key) {
            Some(record) if record.is_expired(now) => {
                shared.remove(key);
                Ok(None)
            }
            other => Ok(other.cloned()),
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let mut shared = self.lock();
        if shared.live(key, now).is_some() {
            return Ok(CreateOutcome::Exists);
        }
        shared.remove(key);
        shared.index(key, record.principal.as_ref());
        shared.records.insert(key.clone(), Arc::new(record.clone()));
        shared.wrote(now);
        Ok(CreateOutcome::Created)
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let mut shared = self.lock();
        let Some(current) = shared.live(key, now) else {
            return Ok(SaveOutcome::Gone);
        };
        if current.version != change.expected {
            return Ok(SaveOutcome::Conflict(Arc::clone(current)));
        }
        let next = change.apply_to(current);
        if change.principal != PrincipalChange::Keep {
            let old = current.principal.clone();
            shared.unindex(key, old.as_ref());
            shared.index(key, next.principal.as_ref());
        }
        let version = next.version;
        shared.records.insert(key.clone(), Arc::new(next));
        shared.wrote(now);
        Ok(SaveOutcome::Saved(version))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let mut shared = self.lock();
        match shared.records.get_mut(key) {
            Some(record) if !record.is_expired(now) => {
                let deadlines = record.deadlines.extended_to(Some(idle_deadline));
                if deadlines != record.deadlines {
                    Arc::make_mut(record).deadlines = deadlines;
                }
                Ok(TouchOutcome::Touched)
            }
            _ => Ok(TouchOutcome::Gone),
        }
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        let mut shared = self.lock();
        let live = shared.live(key, now).is_some();
        shared.remove(key);
        Ok(live)
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let mut shared = self.lock();
        match shared.live(key, now) {
            None => Ok(DeleteOutcome::Gone),
            Some(current) if current.version != expected => {
                Ok(DeleteOutcome::Conflict(Arc::clone(current)))
            }
            Some(_) => {
                shared.remove(key);
                Ok(DeleteOutcome::Deleted)
            }
        }
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let shared = self.lock();
        let mut keys: Vec<SessionKey> = shared
            .principals
            .get(principal)
            .into_iter()
            .flatten()
            .filter(|k| shared.live(k, now).is_some())
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        let mut shared = self.lock();
        let keys = shared.principals.remove(principal).unwrap_or_default();
        let mut revoked = 0;
        for key in keys {
            if shared.live(&key, now).is_some() {
                revoked += 1;
            }
            shared.records.remove(&key);
        }
        Ok(revoked)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
