//! The `SessionStore` contract: each call on the session's name, then,
//! while legacy names are on, on its name from before the short hash tags
//! (see the `keys` module), when the first found no session.
//!
//! A session lives under exactly one of its two names: every session
//! created since the upgrade gets the short-tag name, and a legacy one
//! keeps its old name until it ends. So trying the legacy name only after
//! the short-tag name found nothing is exact, never a race between two
//! copies: a write that finds the session under one name is final.

use std::sync::Arc;

use offstate_core::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, KeyPrefix, Record, SaveOutcome, SessionKey,
    SessionStore, StoreError, Timestamp, TouchOutcome, Version,
};

use crate::keys::KeySpace;
use crate::store::RedisStore;

impl RedisStore {
    /// Whether sessions and principal indexes are also looked for under
    /// their names in offstate 0.1, before the short hash tags (on by
    /// default).
    ///
    /// Sessions are stored under `<prefix>s:{<2>}<41>` (the first two
    /// characters of the session key as the cluster hash tag), and a login
    /// draws the new ID so that its key starts with its principal's tag:
    /// on Redis Cluster a principal's sessions then share one slot with
    /// its index (see the crate docs, "Failover"). Sessions written by
    /// earlier versions live under `<prefix>s:{<key>}`, indexed under
    /// `<prefix>principal:{<sha256>}`; with legacy names on they keep
    /// working (nobody is logged out by the upgrade), and revoke-all and
    /// listings also read the old index.
    ///
    /// **Cost while on**: nothing for a call that finds its session under
    /// the new name. A call that does not (a load of an unknown or ended
    /// session, a touch, save or delete of one that has ended, and every
    /// call on a legacy session) costs one more round trip; revoke-all and
    /// listings read one more index (one round trip, and one more script
    /// per entry of an ended or legacy session).
    ///
    /// **When to turn it off**: once every session written before the
    /// upgrade has ended, i.e. when the absolute lifetime
    /// ([`ExpiryPolicy`](offstate_core::ExpiryPolicy)) has passed since
    /// the last instance of the old version stopped writing. Without an
    /// absolute lifetime a legacy session kept alive by its user never
    /// ends: turning legacy names off then logs it out (once). A new
    /// deployment can turn it off from the start.
    #[must_use]
    pub fn with_legacy_names(mut self, on: bool) -> Self {
        self.set_legacy(on);
        self
    }
}

/// The second try of a call: whether `found` says the session was not
/// under the first name.
trait Missed {
    fn missed(&self) -> bool;
}

impl Missed for Option<Arc<Record>> {
    fn missed(&self) -> bool {
        self.is_none()
    }
}

impl Missed for SaveOutcome {
    fn missed(&self) -> bool {
        matches!(self, Self::Gone)
    }
}

impl Missed for TouchOutcome {
    fn missed(&self) -> bool {
        matches!(self, Self::Gone)
    }
}

impl Missed for DeleteOutcome {
    fn missed(&self) -> bool {
        matches!(self, Self::Gone)
    }
}

impl Missed for bool {
    fn missed(&self) -> bool {
        !self
    }
}

impl RedisStore {
    /// Whether a call that found `found` under the session's name tries
    /// its legacy name too.
    fn try_legacy(&self, found: &impl Missed) -> bool {
        self.legacy() && found.missed()
    }

    /// A save under the session's name, then under its legacy name.
    async fn save_either(
        &self,
        key: &SessionKey,
        change: &Change,
        applied: Option<(&Record, &Record)>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let found = self
            .save_at(&self.keys().session(key), key, change, applied, now)
            .await?;
        if !self.try_legacy(&found) {
            return Ok(found);
        }
        Box::pin(self.save_at(&self.keys().legacy_session(key), key, change, applied, now)).await
    }
}

impl SessionStore for RedisStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let found = self.load_at(&self.keys().session(key), now).await?;
        if !self.try_legacy(&found) {
            return Ok(found);
        }
        self.load_at(&self.keys().legacy_session(key), now).await
    }

    /// Always under the new name: a fresh key has no legacy session.
    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_at(&self.keys().session(key), key, record, now)
            .await
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_either(key, change, None, now).await
    }

    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_either(key, change, Some((base, next)), now).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let found = self
            .touch_at(&self.keys().session(key), key, idle_deadline, now)
            .await?;
        if !self.try_legacy(&found) {
            return Ok(found);
        }
        self.touch_at(&self.keys().legacy_session(key), key, idle_deadline, now)
            .await
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        let found = self.delete_at(&self.keys().session(key), key, now).await?;
        if !self.try_legacy(&found) {
            return Ok(found);
        }
        self.delete_at(&self.keys().legacy_session(key), key, now)
            .await
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let found = self
            .delete_if_version_at(&self.keys().session(key), key, expected, now)
            .await?;
        if !self.try_legacy(&found) {
            return Ok(found);
        }
        self.delete_if_version_at(&self.keys().legacy_session(key), key, expected, now)
            .await
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        self.list_indexed(principal, now).await
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        let revoked = self.revoke_indexed(principal, now).await?;
        self.after_announced_end().await;
        Ok(revoked)
    }

    /// The principal's index's hash tag: the login draws an ID whose key
    /// starts with it, so the session shares the index's cluster slot.
    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        KeySpace::placement(principal)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full().with_announces_writes(self.announcement_channel().is_some())
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// The configured node's `host:port`; for a cluster, the first seed's
    /// (the calls go to whichever node owns the key).
    fn server_address(&self) -> Option<&str> {
        self.address()
    }
}
