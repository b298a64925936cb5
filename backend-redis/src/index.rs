//! The principal index: one sorted set per principal, member = session key,
//! score = the session's end (ms; `+inf` for none).
//!
//! In Redis Cluster the index lives in another slot than the session hash,
//! so no script can change both. The order of the separate commands is
//! what keeps revocation complete:
//!
//! - **Index first.** A create or save that attaches a principal adds the
//!   index entry *before* the session write. A session therefore never
//!   carries a principal without being in its index, and a revoke never
//!   misses it. If the session write then fails or conflicts, the entry
//!   points at a session that does not (yet) belong to the principal:
//!   harmless, because listings and revokes check every member against the
//!   session hash (its `principal` field) before using it.
//! - **Unindex after.** Detaching (save with another or no principal,
//!   delete) removes the entry *after* the session write. If that removal
//!   is lost, the stale entry is again filtered by the check.
//! - **Scores only grow** (`ZADD GT`). Touches and saves raise the score to
//!   the new deadline, after the write. If that raise is lost, the session
//!   stays listed anyway: an entry is trimmed only when its score has passed
//!   *and* the session is not live for this principal. The index key
//!   expires with its highest score, so the one window left is a session
//!   whose deadline moved past the index key's TTL while every raise since
//!   failed; the next successful write or touch closes it.
//! - **Revoke** deletes each listed session with a one-key script that
//!   checks the session still belongs to the principal, then removes the
//!   entries it processed. It never deletes the whole set, so an entry added
//!   by a login racing with the revoke survives for the next revoke.
//!
//! Nothing here uses `KEYS`, `SCAN` or cross-slot multi-key commands.

use futures_util::future::join_all;
use offstate_core::{SessionKey, StoreError, Timestamp};
use redis::Value;

use crate::codec;
use crate::connection::{PooledConnection, SharedConnection};
use crate::store::{RedisStore, int, score};

/// One index entry, as read from the sorted set.
struct Entry {
    member: String,
    score: f64,
}

impl RedisStore {
    /// Adds (or raises, with `existing_only`, only raises) an index entry
    /// and extends the index key's TTL to its latest session.
    pub(crate) async fn index_add(
        &self,
        conn: &mut PooledConnection,
        principal: &str,
        key: &SessionKey,
        expires: Option<Timestamp>,
        existing_only: bool,
    ) -> Result<(), StoreError> {
        let _: Value = self
            .scripts()
            .index_add
            .key(self.keys().principal(principal))
            .arg(score(expires))
            .arg(key.as_str())
            .arg(if existing_only { "xx" } else { "" })
            .invoke_async(conn)
            .await
            .map_err(|e| self.conn().error(e))?;
        Ok(())
    }

    /// Raises the score of an existing entry after a write; failures are
    /// logged, not returned, because the write itself succeeded.
    pub(crate) async fn after_write_bump(
        &self,
        principal: &str,
        key: &SessionKey,
        expires: Option<Timestamp>,
    ) {
        let result = self
            .conn()
            .bounded(async {
                let mut conn = self.conn().get().await?;
                self.index_add(&mut conn, principal, key, expires, true)
                    .await
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "session written, but its principal index entry was not extended");
        }
    }

    /// Removes an entry after the session left the principal; failures are
    /// logged (a stale entry is filtered by every listing).
    pub(crate) async fn after_write_unindex(&self, principal: &str, key: &SessionKey) {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.keys().principal(principal)).arg(key.as_str());
        if let Err(error) = self.conn().query::<Value>(&cmd).await {
            tracing::warn!(%error, "session detached, but its principal index entry was not removed");
        }
    }

    async fn entries(
        &self,
        conn: &mut PooledConnection,
        index: &str,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(index).arg(0).arg(-1).arg("WITHSCORES");
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

    /// The live sessions of `principal`, each checked against its hash;
    /// entries past their score that no longer check out are trimmed.
    pub(crate) async fn list_indexed(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let index = self.keys().principal(principal);
        self.conn()
            .bounded(async {
                let mut conn = self.conn().get().await?;
                let entries = self.entries(&mut conn, &index).await?;
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
                self.trim(&mut conn, &index, &stale).await?;
                listed.sort();
                Ok(listed)
            })
            .await
    }

    /// Whether `member` names a live session of `principal` at `now`.
    async fn belongs(
        &self,
        mut conn: SharedConnection,
        member: &str,
        principal: &str,
        now: Timestamp,
    ) -> Result<Option<SessionKey>, StoreError> {
        let Ok(key) = SessionKey::from_stored(member) else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys().session(&key))
            .arg(codec::PRINCIPAL)
            .arg(codec::IDLE)
            .arg(codec::ABSOLUTE);
        let fields: Vec<Option<Vec<u8>>> = match cmd.query_async(&mut conn).await {
            Ok(fields) => fields,
            // Another type at the session key: not a session of anyone's.
            Err(error) if error.code() == Some("WRONGTYPE") => return Ok(None),
            Err(error) => return Err(self.conn().error(error)),
        };
        let mut fields = fields.into_iter();
        if fields.next().flatten().as_deref() != Some(principal.as_bytes()) {
            return Ok(None);
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
        Ok((!deadlines.is_expired(now)).then_some(key))
    }

    /// Deletes every session of `principal` (checking each still belongs to
    /// it), then removes the processed entries. Returns how many live
    /// sessions were deleted.
    pub(crate) async fn revoke_indexed(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let index = self.keys().principal(principal);
        self.conn()
            .bounded(async {
                let mut conn = self.conn().get().await?;
                let entries = self.entries(&mut conn, &index).await?;
                let revokes = entries.iter().map(|entry| {
                    let mut conn = conn.shared();
                    async move {
                        let Ok(key) = SessionKey::from_stored(&entry.member) else {
                            // Not a session key at all: drop the entry.
                            return Ok(2);
                        };
                        let reply: Value = self
                            .scripts()
                            .revoke_one
                            .key(self.keys().session(&key))
                            .arg(now.as_millis())
                            .arg(principal)
                            .invoke_async(&mut conn)
                            .await
                            .map_err(|e| self.conn().error(e))?;
                        Ok::<_, StoreError>(int(Some(&reply)).unwrap_or(0))
                    }
                });
                let results = join_all(revokes).await;
                let mut revoked = 0;
                let mut done = Vec::new();
                let mut first_error = None;
                for (entry, result) in entries.iter().zip(results) {
                    match result {
                        Ok(1) => {
                            revoked += 1;
                            done.push(entry.member.as_str());
                        }
                        Ok(2) => done.push(entry.member.as_str()),
                        // No session (yet) or another principal's: keep a
                        // fresh entry (a racing login may be writing it),
                        // trim an old one.
                        Ok(_) if entry.score <= now.as_millis() as f64 => {
                            done.push(entry.member.as_str())
                        }
                        Ok(_) => {}
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    }
                }
                self.trim(&mut conn, &index, &done).await?;
                match first_error {
                    Some(error) => Err(error),
                    None => Ok(revoked),
                }
            })
            .await
    }
}
