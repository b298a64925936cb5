//! [`MemcachedStore`]: the [`SessionStore`] contract on memcached's `gets`,
//! `add`, `cas`, `delete` and `incr`.
//!
//! Memcached has no partial update and no conditional write but `cas`, so
//! every write is read-check-write: `gets` returns the blob and its CAS
//! token, the store checks the record (live by the injected clock, not
//! revoked, the expected version), and `cas` writes the new blob only if
//! nobody wrote in between. A lost `cas` race is re-read, never blindly
//! retried.

use std::sync::Arc;

use offstate_core::{
    Capabilities, Change, Clock, CreateOutcome, Deadlines, DeleteOutcome, PrincipalChange, Record,
    SaveOutcome, SessionKey, SessionStore, StoreError, SystemClock, Timestamp, TouchOutcome,
    Version,
};

use crate::cluster::{Cluster, WriteError};
use crate::config::{ConfigError, MemcachedConfig};
use crate::pool::PoolLimits;
use crate::protocol::{StoreCommand, StoreReply};
use crate::{encoding, epoch, expiry};

/// How many times a write re-reads after losing a `cas` race to a write that
/// did not change the version (a touch), before giving up.
const MAX_RACES: usize = 16;

/// What memcached adds to a value to make an item (header, CAS, key, CRLF):
/// an upper bound, so a record the store accepts fits the server's `-I`.
const ITEM_OVERHEAD: usize = 96;

/// Sessions in a memcached or ElastiCache Memcached cluster, one blob per
/// session. Clones share the connection pools.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use offstate_core::Sessions;
/// use offstate_memcached::{MemcachedConfig, MemcachedStore};
///
/// let store = MemcachedStore::new(MemcachedConfig::new(["127.0.0.1:11211"]))?;
/// let sessions = Sessions::new(store);
/// let session = sessions.new_session();
/// session.insert("lang", "en").await?;
/// session.save().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemcachedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: Cluster,
    config: MemcachedConfig,
}

/// A session as read, with its CAS token.
struct Current {
    record: Record,
    epoch: Option<u64>,
    cas: u64,
}

/// What `gets` found under a session key.
enum Read {
    /// Nothing.
    Missing,
    /// A record that has expired by the store's clock or was revoked; its
    /// CAS token lets a create replace exactly it.
    Dead(u64),
    /// A live record.
    Live(Current),
}

impl MemcachedStore {
    /// A store over the configured nodes. Nothing is
    /// connected until the first operation.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid (see
    /// [`MemcachedConfig::validate`]).
    pub fn new(config: MemcachedConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let limits = PoolLimits {
            connect_timeout: config.connect_timeout(),
            command_timeout: config.command_timeout(),
            max_connections: config.pool_size(),
            // Nothing we wrote is larger; refuse to buffer more than twice it.
            max_value: config.max_item_bytes().saturating_mul(2),
        };
        let cluster = Cluster::new(config.nodes(), limits);
        Ok(Self {
            inner: Arc::new(Inner { cluster, config }),
        })
    }

    /// The configuration the store runs with.
    #[must_use]
    pub fn config(&self) -> &MemcachedConfig {
        &self.inner.config
    }

    /// The memcached key a session is stored under: prefix and session key.
    #[must_use]
    pub fn store_key(&self, key: &SessionKey) -> String {
        format!("{}{}", self.inner.config.key_prefix(), key.as_str())
    }

    /// The memcached key holding `principal`'s revocation epoch.
    #[must_use]
    pub fn epoch_key(&self, principal: &str) -> String {
        epoch::key(self.inner.config.key_prefix(), principal)
    }

    /// The address of the node that holds `key`'s session (for operations
    /// and tests: which sessions does losing a node affect?).
    #[must_use]
    pub fn node_for(&self, key: &SessionKey) -> &str {
        self.cluster().node_addr(&self.store_key(key))
    }

    fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Reads a session and decides whether it is live. With `also`, fetches
    /// that principal's epoch in the same round and returns it (`Some(None)`:
    /// no epoch key).
    async fn read(
        &self,
        item: &str,
        also: Option<&str>,
        now: Timestamp,
    ) -> Result<(Read, Option<Option<u64>>), StoreError> {
        let (value, also_epoch) = match also {
            Some(principal) => {
                let (value, epoch) = self
                    .cluster()
                    .get_two(item, &self.epoch_key(principal))
                    .await?;
                (value, Some(epoch.and_then(|e| epoch::parse(&e.data))))
            }
            None => (self.cluster().get(item).await?, None),
        };
        let Some(value) = value else {
            return Ok((Read::Missing, also_epoch));
        };
        let envelope = encoding::decode(&value.data).map_err(StoreError::corrupt)?;
        let record = envelope.record;
        if record.is_expired(now) {
            return Ok((Read::Dead(value.cas), also_epoch));
        }
        if let Some(principal) = &record.principal {
            let current = match (also, also_epoch) {
                (Some(p), Some(known)) if p == principal => known,
                _ => self.current_epoch(principal).await?,
            };
            if current.is_none() || current != envelope.epoch {
                return Ok((Read::Dead(value.cas), also_epoch));
            }
        }
        let current = Current {
            record,
            epoch: envelope.epoch,
            cas: value.cas,
        };
        Ok((Read::Live(current), also_epoch))
    }

    async fn current_epoch(&self, principal: &str) -> Result<Option<u64>, StoreError> {
        let value = self.cluster().get(&self.epoch_key(principal)).await?;
        Ok(value.and_then(|v| epoch::parse(&v.data)))
    }

    /// The principal's epoch, creating its key (at a random value) if absent.
    async fn ensure_epoch(&self, principal: &str) -> Result<u64, StoreError> {
        let key = self.epoch_key(principal);
        for _ in 0..MAX_RACES {
            if let Some(value) = self.cluster().get(&key).await? {
                return epoch::parse(&value.data).ok_or_else(|| {
                    StoreError::corrupt(format!("epoch key {key} does not hold a number"))
                });
            }
            let fresh = epoch::initial().map_err(StoreError::backend)?;
            let text = fresh.to_string();
            match self
                .write(StoreCommand::Add, &key, 0, text.as_bytes())
                .await?
            {
                StoreReply::Stored => return Ok(fresh),
                // Another login added it first: read theirs.
                _ => continue,
            }
        }
        Err(contention("principal epoch key"))
    }

    /// Encodes a record and checks it fits the item size limit.
    fn blob(&self, item: &str, record: &Record, epoch: Option<u64>) -> Result<Vec<u8>, StoreError> {
        let blob = encoding::encode(record, epoch);
        let size = blob.len() + item.len() + ITEM_OVERHEAD;
        let limit = self.inner.config.max_item_bytes();
        if size > limit {
            return Err(StoreError::TooLarge { size, limit });
        }
        Ok(blob)
    }

    /// `add` or `cas`, with the server's "too large" as a typed error.
    async fn write(
        &self,
        command: StoreCommand,
        item: &str,
        exptime: u64,
        data: &[u8],
    ) -> Result<StoreReply, StoreError> {
        match self.cluster().store(command, item, exptime, data).await {
            Ok(reply) => Ok(reply),
            Err(WriteError::TooLarge(error)) => {
                tracing::warn!(%error, size = data.len(), "memcached refused a session as too large; is max_item_bytes above the server's -I?");
                Err(StoreError::TooLarge {
                    size: data.len() + item.len() + ITEM_OVERHEAD,
                    limit: self.inner.config.max_item_bytes(),
                })
            }
            Err(WriteError::Store(error)) => Err(error),
        }
    }

    /// Writes `record` over the version with `cas` token.
    async fn replace(
        &self,
        item: &str,
        record: &Record,
        epoch: Option<u64>,
        cas: u64,
    ) -> Result<StoreReply, StoreError> {
        let blob = self.blob(item, record, epoch)?;
        let exptime = expiry::exptime(record.deadlines.expires_at(), SystemClock.now());
        self.write(StoreCommand::Cas(cas), item, exptime, &blob)
            .await
    }
}

fn contention(what: &str) -> StoreError {
    StoreError::backend(format!(
        "{what} kept changing under concurrent writes ({MAX_RACES} attempts)"
    ))
}

impl SessionStore for MemcachedStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        match self.read(&self.store_key(key), None, now).await?.0 {
            Read::Live(current) => Ok(Some(Arc::new(current.record))),
            Read::Missing | Read::Dead(_) => Ok(None),
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let item = self.store_key(key);
        let epoch = match &record.principal {
            Some(principal) => Some(self.ensure_epoch(principal).await?),
            None => None,
        };
        let blob = self.blob(&item, record, epoch)?;
        let exptime = expiry::exptime(record.deadlines.expires_at(), SystemClock.now());
        for _ in 0..MAX_RACES {
            match self.write(StoreCommand::Add, &item, exptime, &blob).await? {
                StoreReply::Stored => return Ok(CreateOutcome::Created),
                StoreReply::NotStored => {}
                other => {
                    return Err(StoreError::backend(format!(
                        "unexpected reply {other:?} to add"
                    )));
                }
            }
            // Something is there. A live record stays; one that has ended by
            // our clock (memcached has not dropped it yet) may be replaced,
            // but only that exact version. One we cannot read is never
            // overwritten: it may come from a newer deployment.
            match self.read(&item, None, now).await {
                Ok((Read::Live(_), _)) | Err(StoreError::Corrupt(_)) => {
                    return Ok(CreateOutcome::Exists);
                }
                Ok((Read::Dead(cas), _)) => {
                    match self
                        .write(StoreCommand::Cas(cas), &item, exptime, &blob)
                        .await?
                    {
                        StoreReply::Stored => return Ok(CreateOutcome::Created),
                        _ => continue,
                    }
                }
                Ok((Read::Missing, _)) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(contention("session key"))
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let item = self.store_key(key);
        let attach = match &change.principal {
            PrincipalChange::Set(principal) => Some(principal.as_str()),
            _ => None,
        };
        for _ in 0..MAX_RACES {
            let (read, attach_epoch) = self.read(&item, attach, now).await?;
            let current = match read {
                Read::Live(current) => current,
                Read::Missing | Read::Dead(_) => return Ok(SaveOutcome::Gone),
            };
            if current.record.version != change.expected {
                return Ok(SaveOutcome::Conflict(Arc::new(current.record)));
            }
            let next = change.apply_to(&current.record);
            let next_epoch = match (&change.principal, attach) {
                (PrincipalChange::Set(_), Some(principal)) => match attach_epoch.flatten() {
                    Some(epoch) => Some(epoch),
                    None => Some(self.ensure_epoch(principal).await?),
                },
                (PrincipalChange::Clear, _) => None,
                _ => current.epoch,
            };
            match self.replace(&item, &next, next_epoch, current.cas).await? {
                StoreReply::Stored => return Ok(SaveOutcome::Saved(next.version)),
                // Someone wrote in between: re-read. A new version gives a
                // conflict with it; a touch (same version) gets another try.
                StoreReply::Exists => continue,
                StoreReply::NotFound | StoreReply::NotStored => return Ok(SaveOutcome::Gone),
            }
        }
        Err(contention("session"))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        // Memcached's own `touch` only moves the item's exptime; the idle
        // deadline lives inside the blob (reads check it), so a touch is a
        // `gets` and a `cas` of the same record with the new deadline.
        let item = self.store_key(key);
        for _ in 0..MAX_RACES {
            let current = match self.read(&item, None, now).await?.0 {
                Read::Live(current) => current,
                Read::Missing | Read::Dead(_) => return Ok(TouchOutcome::Gone),
            };
            let mut next = current.record;
            let deadlines = next.deadlines.extended_to(Some(idle_deadline));
            if deadlines == next.deadlines {
                // A later (or no) idle deadline is stored: nothing to move.
                return Ok(TouchOutcome::Touched);
            }
            next.deadlines = deadlines;
            match self
                .replace(&item, &next, current.epoch, current.cas)
                .await?
            {
                StoreReply::Stored => return Ok(TouchOutcome::Touched),
                StoreReply::Exists => continue,
                StoreReply::NotFound | StoreReply::NotStored => return Ok(TouchOutcome::Gone),
            }
        }
        Err(contention("session"))
    }

    async fn delete(&self, key: &SessionKey, _now: Timestamp) -> Result<bool, StoreError> {
        self.cluster().delete(&self.store_key(key)).await
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        // memcached's `delete` takes no CAS token, so the conditional step
        // is a `cas` of a tombstone (a record that ended at the epoch) over
        // exactly the version read; the plain delete after it only frees
        // the memory early.
        let item = self.store_key(key);
        for _ in 0..MAX_RACES {
            let current = match self.read(&item, None, now).await?.0 {
                Read::Live(current) => current,
                Read::Missing | Read::Dead(_) => return Ok(DeleteOutcome::Gone),
            };
            if current.record.version != expected {
                return Ok(DeleteOutcome::Conflict(Arc::new(current.record)));
            }
            let tombstone = Record::new(
                current.record.created_at,
                Deadlines::idle_at(Timestamp::from_millis(0)),
            );
            match self.replace(&item, &tombstone, None, current.cas).await? {
                StoreReply::Stored => {
                    if let Err(error) = self.cluster().delete(&item).await {
                        tracing::debug!(%error, "tombstone written; freeing it early failed");
                    }
                    return Ok(DeleteOutcome::Deleted);
                }
                StoreReply::Exists => continue,
                StoreReply::NotFound | StoreReply::NotStored => return Ok(DeleteOutcome::Gone),
            }
        }
        Err(contention("session"))
    }

    async fn list_principal(
        &self,
        _principal: &str,
        _now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        Err(StoreError::Unsupported(
            "listing a principal's sessions (memcached cannot list keys)",
        ))
    }

    async fn revoke_principal(
        &self,
        principal: &str,
        _now: Timestamp,
    ) -> Result<usize, StoreError> {
        // No epoch key means no session of this principal is live (a missing
        // key fails closed), so there is nothing to bump.
        self.cluster().incr(&self.epoch_key(principal), 1).await?;
        Ok(0)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full().with_list_principal(false)
    }

    fn name(&self) -> &'static str {
        "memcached"
    }

    /// The node, when there is one; several have no single address.
    fn server_address(&self) -> Option<&str> {
        match self.inner.config.nodes() {
            [node] => Some(node),
            _ => None,
        }
    }
}
