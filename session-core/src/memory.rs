//! `MemoryStore`: the embedded default, for one process, tests and workers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::{Clock, system_clock};
use crate::error::StoreError;
use crate::id::SessionKey;
use crate::record::{Record, Timestamp};
use crate::store::{
    Change, CreateOutcome, PrincipalChange, SaveOutcome, SessionStore, TouchOutcome,
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
/// use offstate_core::{MemoryStore, Record, SessionId, SessionStore, Timestamp, Deadlines};
///
/// let store = MemoryStore::new();
/// let key = SessionId::generate().key();
/// let record = Record::new(Timestamp::from_millis(0), Deadlines::default());
/// store.create(&key, &record).await.unwrap();
/// assert!(store.load(&key).await.unwrap().is_some());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Shared {
    records: HashMap<SessionKey, Record>,
    principals: HashMap<String, HashSet<SessionKey>>,
    writes: u64,
}

impl Shared {
    fn live(&self, key: &SessionKey, now: Timestamp) -> Option<&Record> {
        self.records.get(key).filter(|r| !r.is_expired(now))
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

    fn remove(&mut self, key: &SessionKey) -> Option<Record> {
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

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared::default())),
            clock: system_clock(),
        }
    }

    /// The same sessions, with deadlines checked against `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
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
    async fn load(&self, key: &SessionKey) -> Result<Option<Record>, StoreError> {
        let now = self.clock.now();
        let mut shared = self.lock();
        match shared.records.get(key) {
            Some(record) if record.is_expired(now) => {
                shared.remove(key);
                Ok(None)
            }
            other => Ok(other.cloned()),
        }
    }

    async fn create(&self, key: &SessionKey, record: &Record) -> Result<CreateOutcome, StoreError> {
        let now = self.clock.now();
        let mut shared = self.lock();
        if shared.live(key, now).is_some() {
            return Ok(CreateOutcome::Exists);
        }
        shared.remove(key);
        if let Some(p) = &record.principal {
            shared
                .principals
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
        shared.records.insert(key.clone(), record.clone());
        shared.wrote(now);
        Ok(CreateOutcome::Created)
    }

    async fn save(&self, key: &SessionKey, change: &Change) -> Result<SaveOutcome, StoreError> {
        let now = self.clock.now();
        let mut shared = self.lock();
        let Some(current) = shared.live(key, now) else {
            return Ok(SaveOutcome::Gone);
        };
        if current.version != change.expected {
            return Ok(SaveOutcome::Conflict(Box::new(current.clone())));
        }
        let next = change.apply_to(current);
        let old_principal = current.principal.clone();
        if change.principal != PrincipalChange::Keep {
            shared.unindex(key, old_principal.as_ref());
            if let Some(p) = &next.principal {
                shared
                    .principals
                    .entry(p.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        let version = next.version;
        shared.records.insert(key.clone(), next);
        shared.wrote(now);
        Ok(SaveOutcome::Saved(version))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let now = self.clock.now();
        let mut shared = self.lock();
        match shared.records.get_mut(key) {
            Some(record) if !record.is_expired(now) => {
                record.deadlines.idle = Some(idle_deadline);
                Ok(TouchOutcome::Touched)
            }
            _ => Ok(TouchOutcome::Gone),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut shared = self.lock();
        let live = shared.live(key, now).is_some();
        shared.remove(key);
        Ok(live)
    }

    async fn list_principal(&self, principal: &str) -> Result<Vec<SessionKey>, StoreError> {
        let now = self.clock.now();
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

    async fn revoke_principal(&self, principal: &str) -> Result<usize, StoreError> {
        let now = self.clock.now();
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
}
