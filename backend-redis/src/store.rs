//! `RedisStore`: the `SessionStore` contract on one Redis string per
//! session (see `codec`), read with a plain `GET`, with every write a
//! single atomic Lua script.
//!
//! Why this file is long: each store call is one script run, with its
//! arguments, its reply and the principal index's bookkeeping around it;
//! the save has two (the common one, then the general one when the
//! common one cannot decide), and they share the reply handling.

use std::sync::Arc;

use offstate_core::{
    Change, CreateOutcome, DeleteOutcome, Invalidation, PrincipalChange, Record, SaveOutcome,
    SessionKey, StoreError, Timestamp, TouchOutcome, Version,
};
use redis::Value;

use crate::codec;
use crate::config::RedisConfig;
use crate::connection::RedisConnection;
use crate::error::{ConnectError, UnexpectedReply};
use crate::keys::{KeySpace, Name, TAG_LEN};
use crate::replies::{array, corrupt_here, decode_stored, ends_at, int, text};
use crate::scripts::Scripts;

/// Sessions in Redis or ElastiCache (standalone or cluster mode). Clones
/// share the connection pool.
///
/// See the [crate documentation](crate) for the data model, the principal
/// index and what ElastiCache needs.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use offstate_core::Sessions;
/// use offstate_redis::{RedisConfig, RedisStore};
///
/// let store = RedisStore::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let sessions = Sessions::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    keys: Arc<KeySpace>,
    scripts: Arc<Scripts>,
    /// The channel every write announces itself on ("" for none).
    announcements: Arc<str>,
    /// `host:port` of the configured node or first seed, for traces.
    address: Option<Arc<str>>,
    /// Whether sessions and indexes are also looked for under their names
    /// from before the short hash tags (see `with_legacy_names`).
    legacy: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("keys", &self.keys)
            .field("announcements", &self.announcements)
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with `config` (see [`RedisConnection::connect`]).
    ///
    /// # Errors
    ///
    /// [`ConnectError`] for an unusable configuration, or when cluster mode
    /// detection found no server.
    pub async fn connect(config: RedisConfig) -> Result<Self, ConnectError> {
        let conn = RedisConnection::connect(&config).await?;
        Self::from_connection(conn, &config)
    }

    /// A store over an existing connection pool, with the key prefix of
    /// `config`.
    ///
    /// # Errors
    ///
    /// [`ConnectError::KeyPrefix`] when the key prefix contains `{` or `}`.
    pub fn from_connection(
        conn: RedisConnection,
        config: &RedisConfig,
    ) -> Result<Self, ConnectError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(ConnectError::KeyPrefix {
                prefix: config.key_prefix.clone(),
            });
        }
        Ok(Self {
            conn,
            keys: Arc::new(KeySpace::new(&config.key_prefix)),
            scripts: Arc::new(Scripts::new()),
            announcements: Arc::from(""),
            address: config.server_address().map(Arc::from),
            legacy: true,
        })
    }

    /// Makes every write that changes or ends a session (save, touch,
    /// delete, delete-if-version, and each session a revoke deletes) also
    /// announce it on the Redis pub/sub channel `channel`, inside the same
    /// script as the write, in the wire form of
    /// [`Invalidation`](offstate_core::Invalidation) that
    /// [`RedisInvalidationChannel`](crate::RedisInvalidationChannel)
    /// subscribers decode. [`capabilities`](offstate_core::SessionStore::capabilities)
    /// then says `announces_writes`, and a cache in front of this store
    /// publishes nothing itself: a cached write is one round trip.
    ///
    /// Use the name of the channel the caches subscribe to
    /// ([`RedisInvalidationChannel::channel_name`](crate::RedisInvalidationChannel::channel_name),
    /// by default `<key prefix>invalidations`). An empty name turns
    /// announcements off.
    ///
    /// # Why atomic, and what it costs
    ///
    /// Redis runs a script as one step and queues a `PUBLISH`ed message to
    /// every subscriber of the node in that step, before the writer's reply
    /// is sent: no peer subscribed to a healthy channel can miss a write or
    /// hear of it only after the writer's client was answered (a peer may
    /// still have the message in its socket buffer, unread). On Redis
    /// Cluster a `PUBLISH` is forwarded over the cluster bus to every node,
    /// so a subscriber on any node hears it; the cost is one bus message
    /// per node per write, which on a large cluster (tens of nodes) adds up
    /// to noticeable bus traffic and CPU on every node. Sharded pub/sub
    /// (`SPUBLISH`, Redis 7) stays on the shard that owns the channel's
    /// slot and would be cheaper, but a script may only `SPUBLISH` to a
    /// channel in its own key's slot, so every instance would have to
    /// subscribe to one channel per slot (16,384) on every shard and follow
    /// resharding; offstate uses classic `PUBLISH` for one channel that
    /// every instance can subscribe to on any node.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use offstate_redis::{RedisConfig, RedisInvalidationChannel, RedisStore};
    ///
    /// let config = RedisConfig::new("redis://127.0.0.1:6379");
    /// let channel = RedisInvalidationChannel::connect(&config).await?;
    /// let store = RedisStore::connect(config)
    ///     .await?
    ///     .with_announcements(channel.channel_name());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_announcements(mut self, channel: impl Into<String>) -> Self {
        self.announcements = Arc::from(channel.into());
        self
    }

    /// The channel writes are announced on, if any.
    #[must_use]
    pub fn announcement_channel(&self) -> Option<&str> {
        (!self.announcements.is_empty()).then_some(&*self.announcements)
    }

    pub(crate) fn announcements(&self) -> &str {
        &self.announcements
    }

    /// After a write that ended a session and announced it: answer only
    /// once the message is on every subscriber's socket (see
    /// `RedisConnection::flush_replies`), so a peer asked after this
    /// answer never serves the session. One more round trip, on logouts
    /// and logins only.
    pub(crate) async fn after_announced_end(&self) {
        if !self.announcements.is_empty() {
            self.conn.flush_replies().await;
        }
    }

    /// Whether one script may write both `session` and `index`: always on
    /// a standalone Redis (every key is on the one server), and on a
    /// cluster when they share a hash slot (a session placed with its
    /// principal; see the `keys` module).
    pub(crate) fn together(&self, session: &Name, index: &Name) -> bool {
        !self.conn.is_cluster() || session.same_slot(index)
    }

    /// Whether the scripts on `session` may update the index its hash
    /// remembers (`ix`). On a cluster a hash holds `ix` only when it was
    /// written together with that index, in its slot; hashes under legacy
    /// names never did, and are left to the separate index commands.
    fn fold_arg(&self, session: &Name) -> &'static str {
        if !self.conn.is_cluster() || session.tag().len() == TAG_LEN {
            "1"
        } else {
            "0"
        }
    }

    pub(crate) fn legacy(&self) -> bool {
        self.legacy
    }

    pub(crate) fn set_legacy(&mut self, on: bool) {
        self.legacy = on;
    }

    pub(crate) fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// The connection pool, to share with other Redis users (the cache layer).
    #[must_use]
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The Redis key of a stored session (for operators and tests).
    #[must_use]
    pub fn store_key(&self, key: &SessionKey) -> String {
        self.keys.session(key).name
    }

    /// The Redis key of a principal's index (for operators and tests).
    #[must_use]
    pub fn principal_key(&self, principal: &str) -> String {
        self.keys.principal(principal).name
    }

    pub(crate) fn keys(&self) -> &KeySpace {
        &self.keys
    }

    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    pub(crate) fn conn(&self) -> &RedisConnection {
        &self.conn
    }
}

/// `PEXPIREAT` argument for a deadline; empty for none (`PERSIST`).
fn expire_arg(at: Option<Timestamp>) -> String {
    at.map(|t| t.as_millis().to_string()).unwrap_or_default()
}

/// The index score of a session ending at `at`.
pub(crate) fn score(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "+inf".to_owned(), |t| t.as_millis().to_string())
}

/// Each call on one name of the session; `SessionStore` (in `names`)
/// picks the name.
impl RedisStore {
    pub(crate) async fn load_at(
        &self,
        name: &Name,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(&name.name);
        let record = self
            .conn
            .bounded(|mut conn| async move {
                match get.query_async::<Value>(&mut conn).await {
                    Ok(value) => codec::decode_packed(value).map_err(StoreError::corrupt),
                    // A hash: a session stored by an earlier offstate (or
                    // something else at the key, which then fails below).
                    Err(error) if error.code() == Some("WRONGTYPE") => {
                        let hash: Value = redis::cmd("HGETALL")
                            .arg(&name.name)
                            .query_async(&mut conn)
                            .await
                            .map_err(|e| self.conn.error(e))?;
                        codec::decode_hash(hash).map_err(StoreError::corrupt)
                    }
                    Err(error) => Err(self.conn.error(error)),
                }
            })
            .await?;
        Ok(record.filter(|r| !r.is_expired(now)).map(Arc::new))
    }

    pub(crate) async fn create_at(
        &self,
        name: &Name,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let expires = record.deadlines.expires_at();
        self.conn
            .bounded(|mut conn| async move {
                let mut call = self.scripts.create.prepare_invoke();
                call.key(&name.name);
                let mut ix = None;
                if let Some(principal) = &record.principal {
                    let index = self.keys.principal(principal);
                    if self.together(name, &index) {
                        // One server or slot: the script adds the entry.
                        call.key(&index.name);
                        ix = Some(index.name);
                    } else {
                        // Index first: a session never exists unindexed, so
                        // a revoke never misses it. A create that then finds
                        // the key taken leaves a harmless entry (listings
                        // verify each member).
                        self.index_add(&mut conn, principal, key, expires, now)
                            .await?;
                    }
                }
                call.arg(now.as_millis())
                    .arg(expire_arg(expires))
                    .arg(key.as_str())
                    .arg(codec::pack(record, ix.as_deref()));
                let created: i64 = call
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))?;
                Ok(if created == 1 {
                    CreateOutcome::Created
                } else {
                    CreateOutcome::Exists
                })
            })
            .await
    }

    /// A save under `name`. `applied` is the record the writer read and
    /// the one it built from it, when it has them (`save_applied`).
    pub(crate) async fn save_at(
        &self,
        name: &Name,
        key: &SessionKey,
        change: &Change,
        applied: Option<(&Record, &Record)>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        if let Some((base, next)) = applied
            && let Some(outcome) = self.save_built(name, key, change, base, next, now).await?
        {
            return Ok(outcome);
        }
        // Boxed: the common save's future stays under a kilobyte (the
        // handle boxes it again, and allocations past about 1 KB leave
        // the allocator's fast per-thread caches).
        Box::pin(self.save_general(name, key, change, applied.map(|(_, next)| next), now)).await
    }

    /// The general save ([`SAVE`](crate::scripts)): any change, any
    /// principal; with `next`, the whole string the writer built.
    async fn save_general(
        &self,
        name: &Name,
        key: &SessionKey,
        change: &Change,
        next: Option<&Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let expires = change.deadlines.expires_at();
        let (outcome, old_principal, ends, folded) = self
            .conn
            .bounded(|mut conn| async move {
                let mut call = self.scripts.save.prepare_invoke();
                call.key(&name.name);
                let (op, principal) = match &change.principal {
                    PrincipalChange::Set(p) => {
                        let index = self.keys.principal(p);
                        if self.together(name, &index) {
                            call.key(&index.name);
                        } else {
                            // Index first, as for create.
                            self.index_add(&mut conn, p, key, expires, now).await?;
                        }
                        ("s", p.as_str())
                    }
                    PrincipalChange::Clear => ("c", ""),
                    _ => ("k", ""),
                };
                // A writer that read this version sends the idle deadline of
                // the record it built: the later of the read and the asked
                // one. The stored one is at least the read one (a touch
                // only raises it), so the script's "later of stored and
                // given" is the same as with the asked one.
                let idle = next.map_or(change.deadlines.idle, |next| next.deadlines.idle);
                call.arg(now.as_millis())
                    .arg(change.expected.get())
                    .arg(change.expected.next().get())
                    .arg(&*self.announcements)
                    .arg(expire_arg(idle))
                    .arg(key.as_str())
                    .arg(op)
                    .arg(principal)
                    .arg(self.fold_arg(name));
                match next {
                    // The writer read this version: its data is the stored
                    // data, so it sends the whole string it built; the
                    // script stores it as it is in the common case and
                    // otherwise takes only its data (never parsing it).
                    Some(next) => {
                        call.arg("w").arg(codec::pack(next, None));
                    }
                    None => {
                        call.arg("p").arg(codec::pack_data(change.set.iter()));
                        for k in change.set.keys().chain(&change.remove) {
                            call.arg(k.as_str());
                        }
                    }
                }
                let reply: Value = call
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))?;
                let mut reply = array(reply, "save")?.into_iter();
                let code = int(reply.next().as_ref());
                match code {
                    Some(0) => Ok((SaveOutcome::Gone, String::new(), None, true)),
                    Some(1) => {
                        let stored = reply.next().unwrap_or(Value::Nil);
                        match decode_stored(stored)? {
                            Some(current) => Ok((
                                SaveOutcome::Conflict(Arc::new(current)),
                                String::new(),
                                None,
                                true,
                            )),
                            None => Ok((SaveOutcome::Gone, String::new(), None, true)),
                        }
                    }
                    Some(2) => {
                        let old = text(reply.next());
                        let ends = ends_at(reply.next());
                        let folded = int(reply.next().as_ref()) == Some(1);
                        Ok((
                            SaveOutcome::Saved(change.expected.next()),
                            old,
                            ends,
                            folded,
                        ))
                    }
                    Some(3) => Err(corrupt_here(key)),
                    other => Err(UnexpectedReply::store_error(format!(
                        "save returned {other:?}"
                    ))),
                }
            })
            .await?;
        if matches!(outcome, SaveOutcome::Saved(_)) && !folded {
            // The session may end later than the writer asked (deadlines
            // never move backwards): the index follows where it really ends.
            if let PrincipalChange::Set(p) = &change.principal
                && ends != expires
            {
                self.after_write_bump(p, key, ends, now).await;
            }
            if !old_principal.is_empty() {
                match &change.principal {
                    PrincipalChange::Set(p) if *p == old_principal => {}
                    PrincipalChange::Set(_) | PrincipalChange::Clear => {
                        self.after_write_unindex(&old_principal, key).await;
                    }
                    _ => self.after_write_bump(&old_principal, key, ends, now).await,
                }
            }
        }
        Ok(outcome)
    }

    /// The common save ([`SAVE_BUILT`](crate::scripts)): the string the
    /// writer built, stored if the stored header is still that of `base`.
    /// Only for a session with no principal whose principal stays, that
    /// has not expired by `now`. `None`: the general save decides (a later
    /// idle deadline stored, a principal, a hash of an earlier offstate, a
    /// string that does not decode).
    async fn save_built(
        &self,
        name: &Name,
        key: &SessionKey,
        change: &Change,
        base: &Record,
        next: &Record,
        now: Timestamp,
    ) -> Result<Option<SaveOutcome>, StoreError> {
        if !matches!(change.principal, PrincipalChange::Keep)
            || base.principal.is_some()
            || next.principal.is_some()
            || base.version != change.expected
            || base.is_expired(now)
        {
            return Ok(None);
        }
        let mut call = self.scripts.save_built.key(&name.name);
        call.arg(&codec::header(base, "", "")[..])
            .arg(codec::pack(next, None))
            .arg(expire_arg(next.deadlines.expires_at()));
        if !self.announcements.is_empty() {
            let written = Invalidation::Key {
                key: key.clone(),
                version: Some(next.version),
            };
            call.arg(&*self.announcements).arg(written.encode());
        }
        let reply: Value = self
            .conn
            .bounded(|mut conn| async move {
                call.invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))
            })
            .await?;
        Ok(match reply {
            Value::Int(2) => Some(SaveOutcome::Saved(next.version)),
            Value::Nil => Some(SaveOutcome::Gone),
            Value::BulkString(stored) => match codec::decode_string(&stored) {
                Ok(current) if current.is_expired(now) => Some(SaveOutcome::Gone),
                Ok(current) if current.version != change.expected => {
                    Some(SaveOutcome::Conflict(Arc::new(current)))
                }
                // The same version with other deadlines or a principal,
                // or a string that does not decode: the general save.
                _ => None,
            },
            _ => None,
        })
    }

    pub(crate) async fn touch_at(
        &self,
        name: &Name,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let (outcome, principal, expires, folded) = self
            .conn
            .bounded(|mut conn| async move {
                let reply: Value = self
                    .scripts
                    .touch
                    .key(&name.name)
                    .arg(now.as_millis())
                    .arg(idle_deadline.as_millis())
                    .arg(&*self.announcements)
                    .arg(key.as_str())
                    .arg(self.fold_arg(name))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))?;
                let mut reply = array(reply, "touch")?.into_iter();
                match int(reply.next().as_ref()) {
                    Some(0) => Ok((TouchOutcome::Gone, String::new(), None, true)),
                    Some(1) => {
                        let principal = text(reply.next());
                        let expires = ends_at(reply.next());
                        let folded = int(reply.next().as_ref()) == Some(1);
                        Ok((TouchOutcome::Touched, principal, expires, folded))
                    }
                    Some(3) => Err(corrupt_here(key)),
                    other => Err(UnexpectedReply::store_error(format!(
                        "touch returned {other:?}"
                    ))),
                }
            })
            .await?;
        if !principal.is_empty() && !folded {
            self.after_write_bump(&principal, key, expires, now).await;
        }
        Ok(outcome)
    }

    pub(crate) async fn delete_at(
        &self,
        name: &Name,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (was, principal, folded) = self
            .conn
            .bounded(|mut conn| async move {
                let reply: Value = self
                    .scripts
                    .delete
                    .key(&name.name)
                    .arg(now.as_millis())
                    .arg(&*self.announcements)
                    .arg(key.as_str())
                    .arg(self.fold_arg(name))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))?;
                let mut reply = array(reply, "delete")?.into_iter();
                let was = int(reply.next().as_ref()) == Some(1);
                let principal = text(reply.next());
                let folded = int(reply.next().as_ref()) == Some(1);
                Ok((was, principal, folded))
            })
            .await?;
        if !principal.is_empty() && !folded {
            self.after_write_unindex(&principal, key).await;
        }
        self.after_announced_end().await;
        Ok(was)
    }

    pub(crate) async fn delete_if_version_at(
        &self,
        name: &Name,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let (outcome, principal, folded) = self
            .conn
            .bounded(|mut conn| async move {
                let reply: Value = self
                    .scripts
                    .delete_if_version
                    .key(&name.name)
                    .arg(now.as_millis())
                    .arg(expected.get())
                    .arg(&*self.announcements)
                    .arg(key.as_str())
                    .arg(self.fold_arg(name))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.conn.error(e))?;
                let mut reply = array(reply, "delete_if_version")?.into_iter();
                match int(reply.next().as_ref()) {
                    Some(0) => Ok((DeleteOutcome::Gone, String::new(), true)),
                    Some(1) => {
                        let stored = reply.next().unwrap_or(Value::Nil);
                        match decode_stored(stored)? {
                            Some(current) => Ok((
                                DeleteOutcome::Conflict(Arc::new(current)),
                                String::new(),
                                true,
                            )),
                            None => Ok((DeleteOutcome::Gone, String::new(), true)),
                        }
                    }
                    Some(2) => {
                        let principal = text(reply.next());
                        let folded = int(reply.next().as_ref()) == Some(1);
                        Ok((DeleteOutcome::Deleted, principal, folded))
                    }
                    Some(3) => Err(corrupt_here(key)),
                    other => Err(UnexpectedReply::store_error(format!(
                        "delete_if_version returned {other:?}"
                    ))),
                }
            })
            .await?;
        if !principal.is_empty() && !folded {
            self.after_write_unindex(&principal, key).await;
        }
        if outcome == DeleteOutcome::Deleted {
            self.after_announced_end().await;
        }
        Ok(outcome)
    }
}
