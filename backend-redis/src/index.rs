//! The principal index: one sorted set per principal, member = session key,
//! score = the session's end (ms; `+inf` for none).
//!
//! **Together.** Wherever a session and its principal's index are
//! on one server (a standalone Redis) or in one slot (a cluster, for every
//! session a login placed with its principal; see the `keys` module), each
//! session script updates the index in the same step as the session: the
//! session remembers its principal's index key (field `ix`, written when the
//! principal is set), and create, save, touch, delete and revoke add,
//! raise, re-add or remove the entry themselves. A write of a logged-in
//! session is then one round trip, the index never lags its sessions, and
//! a cluster master that restarts empty loses the index and the sessions
//! together. (A session written before `ix` existed has its index updated
//! by a separate command, as below, until its principal is set again.)
//!
//! **Apart.** On a cluster a session whose key does not carry its
//! principal's tag (given a principal through the store directly, or
//! written before the short tags) is in another slot than the index, so
//! no script can change both, and the index update is one more round trip
//! per write. The order of the separate commands is what keeps revocation
//! complete:
//!
//! - **Index first.** A create or save that attaches a principal adds the
//!   index entry *before* the session write. A session therefore never
//!   carries a principal without being in its index, and a revoke never
//!   misses it. If the session write then fails or conflicts, the entry
//!   points at a session that does not (yet) belong to the principal:
//!   harmless, because listings and revokes check every member against the
//!   stored session (its `principal` field) before using it.
//! - **Unindex after.** Detaching (save with another or no principal,
//!   delete) removes the entry *after* the session write. If that removal
//!   is lost, the stale entry is again filtered by the check.
//! - **Scores only grow** (`ZADD GT`). Touches and saves raise the score to
//!   the new deadline, after the write. The raise also *adds* the entry
//!   when it is missing, so an entry (or a whole index) lost to eviction,
//!   a failover or a failed earlier update is back after the session's
//!   next successful write or touch.
//! - **Bounded.** Every add trims the entries whose score (the session's
//!   end) has passed, so an index holds about as many entries as its
//!   principal has live sessions, however many sessions a client without
//!   a cookie jar makes. The one cost: a session whose raise was lost (the
//!   write succeeded, the index update after it failed) keeps its old
//!   score, and once that has passed, the next add of the same principal
//!   may trim it while it still lives; the session's next write or touch
//!   adds it back. Until then a revoke misses it. Together, there is no
//!   such window: the update is part of the write.
//! - **Revoke** works in batches of [`REVOKE_BATCH`] entries: it deletes
//!   each listed session with a one-key script that checks the session
//!   still belongs to the principal, then removes the entries it
//!   processed, batch by batch. A revoke cut short by its time bound has
//!   removed what it processed, and a retry continues with the rest.
//!   Together, each session's entry leaves in the same script that
//!   deletes it; apart, after its batch, so a revoke cut inside a batch
//!   may leave up to one batch of entries whose sessions it deleted: a retry checks them again (one script each) and keeps them
//!   until their score passes, as it must keep any entry of a session that
//!   does not exist yet (a racing login writes its entry first). It never
//!   deletes the whole set, so an entry added by a login racing with the
//!   revoke survives for the next revoke.
//!
//! While legacy names are on (`RedisStore::with_legacy_names`), listings
//! and revokes also read the principal's index under its legacy name, and
//! check each member under both of its session names: sessions from before
//! the short tags were indexed there.
//!
//! Nothing here uses `KEYS`, `SCAN` or cross-slot multi-key commands.

use futures_util::future::join_all;
use offstate_core::{SessionKey, StoreError, Timestamp};
use redis::Value;

use crate::codec;
use crate::connection::{PooledConnection, SharedConnection};
use crate::keys::Name;
use crate::replies::int;
use crate::store::{RedisStore, score};

/// One index entry, as read from the sorted set.
struct Entry {
    member: String,
    score: f64,
}

/// How many index entries a revoke reads and processes per round trip.
pub(crate) const REVOKE_BATCH: usize = 100;

impl RedisStore {
    /// Adds an index entry or raises its score, trims the entries that
    /// ended before `now`, and extends the index key's TTL to its latest
    /// session.
    pub(crate) async fn index_add(
        &self,
        conn: &mut PooledConnection,
        principal: &str,
        key: &SessionKey,
        expires: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let _: Value = self
            .scripts()
            .index_add
            .key(self.keys().principal(principal).name)
            .arg(score(expires))
            .arg(key.as_str())
            .arg(now.as_millis())
            .invoke_async(conn)
            .await
            .map_err(|e| self.conn().error(e))?;
        Ok(())
    }

    /// Raises (or re-adds) the entry after a write; failures are logged,
    /// not returned, because the write itself succeeded.
    pub(crate) async fn after_write_bump(
        &self,
        principal: &str,
        key: &SessionKey,
        expires: Option<Timestamp>,
        now: Timestamp,
    ) {
        let result = self
            .conn()
            .bounded(|mut conn| async move {
                self.index_add(&mut conn, principal, key, expires, now)
                    .await
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "session written, but its principal index entry was not updated");
        }
    }

    /// Removes an entry after the session left the principal; failures are
    /// logged (a stale entry is filtered by every listing).
    pub(crate) async fn after_write_unindex(&self, principal: &str, key: &SessionKey) {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.keys().principal(principal).name)
            .arg(key.as_str());
        if let Err(error) = self.conn().query::<Value>(&cmd).await {
            tracing::warn!(%error, "session detached, but its principal index entry was not removed");
        }
    }

    /// The entries at ranks `from..=to` (`-1`: the last).
    async fn entries(
        &self,
        conn: &mut PooledConnection,
        index: &str,
        from: isize,
        to: isize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(index).arg(from).arg(to).arg("WITHSCORES");
        let pairs: Vec<(String, f64)> = cmd
            .query_async(conn)
            .await
            .map_err(|e| self.conn().error(e))?;
        Ok(pairs
            .into_iter()
            .map(|(member, score)| Entry { member, score })
            .collect())
    }

    async fn trim(
        &self,
        conn: &mut PooledConnection,
        index: &str,
        members: &[&str],
    ) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(index).arg(members);
        let _: Value = cmd
            .query_async(conn)
            .await
            .map_err(|e| self.conn().error(e))?;
        Ok(())
    }

    /// The live sessions of `principal`, each checked against its session;
    /// entries past their score that no longer check out are trimmed.
    pub(crate) async fn list_indexed(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let mut listed = Vec::new();
        for index in self.indexes(principal) {
            listed.extend(self.list_index(&index.name, principal, now).await?);
        }
        listed.sort();
        listed.dedup();
        Ok(listed)
    }

    /// The principal's indexes: its index, and while legacy names are on,
    /// its index from before the short hash tags (see the `keys` module).
    fn indexes(&self, principal: &str) -> Vec<Name> {
        let mut indexes = vec![self.keys().principal(principal)];
        if self.legacy() {
            indexes.push(self.keys().legacy_principal(principal));
        }
        indexes
    }

    /// [`list_indexed`](Self::list_indexed) on one index.
    async fn list_index(
        &self,
        index: &str,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        self.conn()
            .bounded(|mut conn| async move {
                let entries = self.entries(&mut conn, index, 0, -1).await?;
                let checks = entries.iter().map(|entry| {
                    let conn = conn.shared();
                    async move { self.belongs(conn, &entry.member, principal, now).await }
                });
                let checks = join_all(checks).await;
                let mut listed = Vec::new();
                let mut stale = Vec::new();
                for (entry, check) in entries.iter().zip(checks) {
                    match check? {
                        Some(key) => listed.push(key),
                        None if entry.score <= now.as_millis() as f64 => {
                            stale.push(entry.member.as_str())
                        }
                        None => {}
                    }
                }
                self.trim(&mut conn, index, &stale).await?;
                Ok(listed)
            })
            .await
    }

    /// Whether `member` names a live session of `principal` at `now`
    /// (under its name, or its legacy name while those are on).
    async fn belongs(
        &self,
        conn: SharedConnection,
        member: &str,
        principal: &str,
        now: Timestamp,
    ) -> Result<Option<SessionKey>, StoreError> {
        let Ok(key) = SessionKey::from_stored(member) else {
            return Ok(None);
        };
        let name = self.keys().session(&key);
        if self.belongs_at(conn.clone(), &name, principal, now).await? {
            return Ok(Some(key));
        }
        if self.legacy() {
            let legacy = self.keys().legacy_session(&key);
            if self.belongs_at(conn, &legacy, principal, now).await? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Whether the session at `name` is a live session of `principal` at
    /// `now`.
    async fn belongs_at(
        &self,
        mut conn: SharedConnection,
        name: &Name,
        principal: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let stored: Value = match redis::cmd("GET")
            .arg(&name.name)
            .query_async(&mut conn)
            .await
        {
            Ok(value) => value,
            // A hash, stored by an earlier offstate.
            Err(error) if error.code() == Some("WRONGTYPE") => {
                return self.hash_belongs_at(conn, name, principal, now).await;
            }
            Err(error) => return Err(self.conn().error(error)),
        };
        // Something that does not decode is not a session of anyone's.
        Ok(codec::decode_packed(stored)
            .ok()
            .flatten()
            .is_some_and(|record| {
                record.principal.as_deref() == Some(principal) && !record.is_expired(now)
            }))
    }

    /// [`belongs_at`](Self::belongs_at) for a session hash.
    async fn hash_belongs_at(
        &self,
        mut conn: SharedConnection,
        name: &Name,
        principal: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&name.name)
            .arg(codec::PRINCIPAL)
            .arg(codec::IDLE)
            .arg(codec::ABSOLUTE);
        let fields: Vec<Option<Vec<u8>>> = match cmd.query_async(&mut conn).await {
            Ok(fields) => fields,
            // Another type at the session key: not a session of anyone's.
            Err(error) if error.code() == Some("WRONGTYPE") => return Ok(false),
            Err(error) => return Err(self.conn().error(error)),
        };
        let mut fields = fields.into_iter();
        if fields.next().flatten().as_deref() != Some(principal.as_bytes()) {
            return Ok(false);
        }
        let deadline = |value: Option<Option<Vec<u8>>>| {
            value
                .flatten()
                .and_then(|v| codec::number("deadline", &v).ok())
                .map(Timestamp::from_millis)
        };
        let mut deadlines = offstate_core::Deadlines::none();
        deadlines.idle = deadline(fields.next());
        deadlines.absolute = deadline(fields.next());
        Ok(!deadlines.is_expired(now))
    }

    /// Deletes every session of `principal` (checking each still belongs to
    /// it), batch by batch, removing the processed entries after each
    /// batch. Returns how many live sessions were deleted.
    pub(crate) async fn revoke_indexed(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut revoked = 0;
        for index in self.indexes(principal) {
            revoked += self.revoke_index(&index, principal, now).await?;
        }
        Ok(revoked)
    }

    /// [`revoke_indexed`](Self::revoke_indexed) on one index.
    async fn revoke_index(
        &self,
        index: &Name,
        principal: &str,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        self.conn()
            .bounded(|mut conn| async move {
                let mut revoked = 0;
                loop {
                    let pass = self.revoke_pass(&mut conn, index, principal, now).await?;
                    revoked += pass.revoked;
                    // Entries kept in place (a racing login's) shift the
                    // ranks; if another client removed entries meanwhile,
                    // one may have slid below the ranks already read. A
                    // pass that kept some and removed some runs again.
                    if pass.kept == 0 || pass.removed == 0 {
                        return Ok(revoked);
                    }
                }
            })
            .await
    }

    /// One pass over the index, [`REVOKE_BATCH`] entries at a time.
    async fn revoke_pass(
        &self,
        conn: &mut PooledConnection,
        index: &Name,
        principal: &str,
        now: Timestamp,
    ) -> Result<Pass, StoreError> {
        let mut pass = Pass::default();
        loop {
            // Processed entries leave the set; kept ones stay before the
            // next batch.
            let from = isize::try_from(pass.kept).unwrap_or(isize::MAX);
            let to = from.saturating_add(REVOKE_BATCH as isize - 1);
            let entries = self.entries(conn, &index.name, from, to).await?;
            let revokes = entries.iter().map(|entry| {
                let conn = conn.shared();
                async move {
                    let Ok(key) = SessionKey::from_stored(&entry.member) else {
                        // Not a session key at all: drop the entry.
                        return Ok(2);
                    };
                    let name = self.keys().session(&key);
                    let found = self
                        .revoke_one(conn.clone(), &name, index, principal, &key, now)
                        .await?;
                    if found != 0 || !self.legacy() {
                        return Ok(found);
                    }
                    let legacy = self.keys().legacy_session(&key);
                    self.revoke_one(conn, &legacy, index, principal, &key, now)
                        .await
                }
            });
            let results = join_all(revokes).await;
            let mut done = Vec::new();
            let mut first_error = None;
            for (entry, result) in entries.iter().zip(results) {
                match result {
                    Ok(1) => {
                        pass.revoked += 1;
                        done.push(entry.member.as_str());
                    }
                    Ok(2) => done.push(entry.member.as_str()),
                    // No session (yet) or another principal's: keep a fresh
                    // entry (a racing login may be writing it), trim an old
                    // one.
                    Ok(_) if entry.score <= now.as_millis() as f64 => {
                        done.push(entry.member.as_str())
                    }
                    Ok(_) => pass.kept += 1,
                    Err(error) => {
                        pass.kept += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
            // What this batch did stays done, even if it failed in part.
            self.trim(conn, &index.name, &done).await?;
            pass.removed += done.len();
            if let Some(error) = first_error {
                return Err(error);
            }
            if entries.len() < REVOKE_BATCH {
                return Ok(pass);
            }
        }
    }
}

impl RedisStore {
    /// Deletes the session at `name` if it belongs to `principal` (the
    /// `REVOKE_ONE` script), with its entry in `index` when one script
    /// can reach both.
    async fn revoke_one(
        &self,
        mut conn: SharedConnection,
        name: &Name,
        index: &Name,
        principal: &str,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        let mut call = self.scripts().revoke_one.prepare_invoke();
        call.key(&name.name);
        if self.together(name, index) {
            // One server or slot: the entry goes in the same step.
            call.key(&index.name);
        }
        let reply: Value = call
            .arg(now.as_millis())
            .arg(principal)
            .arg(self.announcements())
            .arg(key.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.conn().error(e))?;
        Ok(int(Some(&reply)).unwrap_or(0))
    }
}

/// What one revoke pass did.
#[derive(Default)]
struct Pass {
    revoked: usize,
    kept: usize,
    removed: usize,
}
