//! The JSON the admin API answers with (and the command-line tool prints
//! with `--json`). Every field is documented here; `docs/admin.md` shows
//! examples. Times are milliseconds since the Unix epoch, sizes bytes.
//!
//! Nothing here carries a session ID or a value: sessions are named by
//! their stored key (the SHA-256 of the ID, which cannot be replayed as a
//! cookie), and only the *names* of their keys are shown.

use offstate_core::{Capabilities, Record, SessionKey};
use serde::{Deserialize, Serialize};

/// One session as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The stored key: SHA-256 of the session ID, URL-safe base64 (43
    /// characters). What `DELETE /sessions/{key}` takes.
    pub key: String,
    /// When the session was created.
    pub created_at_ms: u64,
    /// When the idle deadline was last moved (a write, or a touch past the
    /// touch threshold): the idle deadline minus the idle timeout of the
    /// [`Sessions`](offstate_core::Sessions) the API was built with. `null`
    /// without an idle timeout. Reads inside the touch threshold write
    /// nothing and so do not show here.
    pub last_write_at_ms: Option<u64>,
    /// When the session ends if nothing happens (`null`: no idle timeout).
    pub idle_deadline_ms: Option<u64>,
    /// When the session ends whatever happens (`null`: no absolute timeout).
    pub absolute_deadline_ms: Option<u64>,
    /// The earlier of the two deadlines.
    pub expires_at_ms: Option<u64>,
    /// The record's version: how many data writes it has had, plus one.
    pub version: u64,
    /// The record's size as the stores count it against their item limits.
    pub size_bytes: usize,
    /// The names of the keys it holds, sorted. Never the values.
    pub keys: Vec<String>,
}

impl SessionSummary {
    /// The summary of `record` stored under `key`; `idle` is the idle
    /// timeout, used to derive [`last_write_at_ms`](Self::last_write_at_ms).
    #[must_use]
    pub fn of(key: &SessionKey, record: &Record, idle: Option<std::time::Duration>) -> Self {
        let idle_deadline = record.deadlines.idle.map(|t| t.as_millis());
        let last_write = match (idle_deadline, idle) {
            (Some(deadline), Some(idle)) => {
                let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                Some(
                    deadline
                        .saturating_sub(idle)
                        .max(record.created_at.as_millis()),
                )
            }
            _ => None,
        };
        Self {
            key: key.as_str().to_owned(),
            created_at_ms: record.created_at.as_millis(),
            last_write_at_ms: last_write,
            idle_deadline_ms: idle_deadline,
            absolute_deadline_ms: record.deadlines.absolute.map(|t| t.as_millis()),
            expires_at_ms: record.deadlines.expires_at().map(|t| t.as_millis()),
            version: record.version.get(),
            size_bytes: record.size(),
            keys: record.data.keys().cloned().collect(),
        }
    }
}

/// `GET /principals/{principal}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionList {
    /// The principal asked about.
    pub principal: String,
    /// The store's name (`redis`, `dynamodb`, `memory`...).
    pub store: String,
    /// The live sessions of this page, oldest first. A session the index
    /// named but that ended before it could be read is left out, so a page
    /// can hold fewer than `limit` even when more follow.
    pub sessions: Vec<SessionSummary>,
    /// Whether the store's principal index is read-after-write consistent
    /// (false on DynamoDB: a session created a moment ago may be missing).
    pub consistent: bool,
    /// The cursor of the next page (`?cursor=` it to get it); `null` on
    /// the last page, and only then. Absent from answers of versions
    /// before paging, which read as `null`.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `DELETE /sessions/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RevokedOne {
    /// The key asked about.
    pub key: String,
    /// Whether a live session was there and is now ended (false: it was
    /// already gone; the call is idempotent).
    pub revoked: bool,
}

/// `DELETE /principals/{principal}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RevokedAll {
    /// The principal.
    pub principal: String,
    /// How many sessions were ended; `null` where the store revokes without
    /// counting (memcached bumps the principal's epoch: every session of
    /// the principal is refused from then on, however many there were).
    pub revoked: Option<usize>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// The store's name.
    pub store: String,
    /// `up` when the store answered, `down` when it did not.
    pub status: Status,
    /// How long the probe took, in milliseconds.
    pub latency_ms: f64,
    /// Why the store is down (`null` when up).
    pub error: Option<String>,
    /// What the store can do.
    pub capabilities: StoreCapabilities,
}

/// Whether the store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// It answered the probe.
    Up,
    /// It did not.
    Down,
}

/// [`Capabilities`] as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// A principal's sessions can be listed (false on memcached, which
    /// still revokes them all).
    pub list_principal: bool,
    /// The principal index is read-after-write consistent.
    pub consistent_principal_index: bool,
    /// The store announces its writes to the caches itself.
    pub announces_writes: bool,
}

impl From<Capabilities> for StoreCapabilities {
    fn from(c: Capabilities) -> Self {
        Self {
            list_principal: c.list_principal,
            consistent_principal_index: c.consistent_principal_index,
            announces_writes: c.announces_writes,
        }
    }
}

/// Every error answer: `{"error": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// A stable code: `bad_key`, `bad_cursor`, `bad_limit` (400),
    /// `unsupported` (501),
    /// `store_timeout` (504), `store_unavailable` (503), `store_failed`
    /// (500).
    pub error: String,
    /// A sentence for the person reading it.
    pub message: String,
}
