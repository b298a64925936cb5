//! An experiment, not a product: `RedisStore` with its `load` sent on a
//! *shared* multiplexed connection instead of an exclusively checked-out
//! one. offstate-redis's pool hands each call a connection for the whole
//! call, so concurrent requests never share one and Redis sees one command
//! per read; fred (under tower-sessions) pipelines concurrent commands on
//! each of its connections. This variant measures what the read path
//! would gain if offstate-redis shared its connections the same way
//! (`PooledConnection::shared`, then return the connection to the pool
//! before awaiting the reply). Writes are untouched.

use offstate_core::{
    Capabilities, Change, Clock, CreateOutcome, Record, SaveOutcome, SessionKey, SessionStore,
    StoreError, Timestamp, TouchOutcome, system_clock,
};
use offstate_redis::redis::{self, Value};
use offstate_redis::{DEFAULT_KEY_PREFIX, RedisStore};
use std::sync::Arc;

/// `RedisStore` whose loads share pooled connections (see the module docs).
#[derive(Clone)]
pub struct SharedLoadStore {
    inner: RedisStore,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SharedLoadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLoadStore").finish_non_exhaustive()
    }
}

impl SharedLoadStore {
    /// Wraps `inner`, built with the default key prefix and system clock.
    #[must_use]
    pub fn new(inner: RedisStore) -> Self {
        Self {
            inner,
            clock: system_clock(),
        }
    }
}

impl SessionStore for SharedLoadStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<Record>, StoreError> {
        let now = self.clock.now();
        let conn = self.inner.connection();
        let mut shared = {
            let pooled = conn.get().await?;
            pooled.shared()
        };
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(format!("{DEFAULT_KEY_PREFIX}s:{{{}}}", key.as_str()));
        let reply: Value = conn
            .bounded(async {
                cmd.query_async(&mut shared)
                    .await
                    .map_err(|e| conn.error(e))
            })
            .await?;
        let record = offstate_redis::decode_reply(reply).map_err(StoreError::corrupt)?;
        Ok(record.filter(|r| !r.is_expired(now)))
    }

    async fn create(&self, key: &SessionKey, record: &Record) -> Result<CreateOutcome, StoreError> {
        self.inner.create(key, record).await
    }

    async fn save(&self, key: &SessionKey, change: &Change) -> Result<SaveOutcome, StoreError> {
        self.inner.save(key, change).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        self.inner.touch(key, idle_deadline).await
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }

    async fn list_principal(&self, principal: &str) -> Result<Vec<SessionKey>, StoreError> {
        self.inner.list_principal(principal).await
    }

    async fn revoke_principal(&self, principal: &str) -> Result<usize, StoreError> {
        self.inner.revoke_principal(principal).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
