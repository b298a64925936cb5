//! The `SessionStore` contract that every backend implements.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use crate::error::StoreError;
use crate::id::{KeyPrefix, SessionId, SessionKey};
use crate::record::{Deadlines, Record, Timestamp, Version};

/// A versioned, conditional write of a session's changes.
///
/// Only the keys in `set` and `remove` change; a store that can apply
/// per-key deltas (Redis hashes, DynamoDB maps) writes only those.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The version the writer loaded. The write happens only if the stored
    /// record still has it.
    pub expected: Version,
    /// Keys to set, with their new serialized values.
    pub set: BTreeMap<String, Vec<u8>>,
    /// Keys to remove.
    pub remove: BTreeSet<String>,
    /// The deadlines the writer computed. Stores keep the later of this
    /// idle deadline and the stored one (deadlines never move backwards,
    /// whatever the writers' clocks say), and keep the stored absolute
    /// deadline (nothing extends it).
    pub deadlines: Deadlines,
    /// What happens to the principal.
    pub principal: PrincipalChange,
}

impl Change {
    /// A change that only moves the version and deadlines.
    #[must_use]
    pub fn new(expected: Version, deadlines: Deadlines) -> Self {
        Self {
            expected,
            set: BTreeMap::new(),
            remove: BTreeSet::new(),
            deadlines,
            principal: PrincipalChange::Keep,
        }
    }

    /// Applies this change to a copy of `record`, as a store must: data
    /// deltas, the later idle deadline, principal, and the next version.
    #[must_use]
    pub fn apply_to(&self, record: &Record) -> Record {
        let mut next = record.clone();
        for key in &self.remove {
            next.data.remove(key);
        }
        for (key, value) in &self.set {
            // A key that is there keeps its allocations (the common write).
            match next.data.get_mut(key) {
                Some(stored) => stored.clone_from(value),
                None => {
                    next.data.insert(key.clone(), value.clone());
                }
            }
        }
        next.deadlines = record.deadlines.extended_to(self.deadlines.idle);
        match &self.principal {
            PrincipalChange::Keep => {}
            PrincipalChange::Set(p) => next.principal = Some(p.clone()),
            PrincipalChange::Clear => next.principal = None,
        }
        next.version = self.expected.next();
        next
    }
}

/// What a write does to the session's principal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PrincipalChange {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Attach the session to this principal (index it under it).
    Set(String),
    /// Detach the session from its principal.
    Clear,
}

/// The answer to [`SessionStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreateOutcome {
    /// The record was inserted.
    Created,
    /// A record already exists under this key; nothing was written.
    Exists,
}

/// The answer to [`SessionStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveOutcome {
    /// The change was applied; the record now has this version.
    Saved(Version),
    /// The stored record has another version. Nothing was written; here is
    /// the current record, so the caller can merge and retry without a read.
    Conflict(Arc<Record>),
    /// No live record exists (deleted, revoked or expired). Nothing was
    /// written: a save never brings a session back.
    Gone,
}

/// The answer to [`SessionStore::touch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TouchOutcome {
    /// The idle deadline was moved.
    Touched,
    /// No live record exists; nothing was written.
    Gone,
}

/// The answer to [`SessionStore::delete_if_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteOutcome {
    /// The live record had the expected version and is gone now.
    Deleted,
    /// The live record has another version; nothing was deleted. Here is
    /// the current record.
    Conflict(Arc<Record>),
    /// No live record exists (deleted, revoked or expired).
    Gone,
}

/// What a store can do beyond the required contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`SessionStore::list_principal`] works (memcached cannot list keys,
    /// but still revokes through per-principal epochs).
    pub list_principal: bool,
    /// The principal index is read-after-write consistent (a DynamoDB GSI is
    /// not: a session may show up in a listing a moment late).
    pub consistent_principal_index: bool,
    /// Every write that changes or ends a session also announces it on the
    /// caches' invalidation channel, in the same atomic step as the write
    /// (offstate-redis with a channel configured). A cache in front of such
    /// a store publishes nothing itself.
    pub announces_writes: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            list_principal: true,
            consistent_principal_index: true,
            announces_writes: false,
        }
    }
}

impl Capabilities {
    /// Full capabilities: listing works and is consistent.
    #[must_use]
    pub fn full() -> Self {
        Self::default()
    }

    /// Sets whether listing a principal's sessions works.
    #[must_use]
    pub fn with_list_principal(mut self, yes: bool) -> Self {
        self.list_principal = yes;
        self
    }

    /// Sets whether the principal index is read-after-write consistent.
    #[must_use]
    pub fn with_consistent_principal_index(mut self, yes: bool) -> Self {
        self.consistent_principal_index = yes;
        self
    }

    /// Sets whether the store announces its own writes on the invalidation
    /// channel, atomically with them.
    #[must_use]
    pub fn with_announces_writes(mut self, yes: bool) -> Self {
        self.announces_writes = yes;
        self
    }
}

/// Where sessions live. Every operation is keyed by a [`SessionKey`] (a hash
/// of the ID) and every write is conditional, so that concurrent requests on
/// any instance never lose an update and a deleted session never comes back.
///
/// # The contract
///
/// Every method takes `now`, the caller's clock reading: a record is live
/// when its deadlines are after `now`. Stores keep no clock of their own, so
/// the one clock of the [`Sessions`](crate::Sessions) decides expiry
/// everywhere, whatever a backend's own TTL has done so far.
///
/// - [`load`](Self::load) returns `None` for a missing record and for one
///   that is not live at `now`.
/// - [`create`](Self::create) inserts only if no live record is there.
/// - [`save`](Self::save) applies a [`Change`] only if the live record has
///   the expected version; it never creates a record.
/// - [`touch`](Self::touch) moves the idle deadline of a live record without
///   rewriting data or version; it never creates a record.
/// - **Deadlines never move backwards.** A touch or save keeps the later of
///   its idle deadline and the stored one ([`Deadlines::extended_to`]), so
///   a late touch, or a writer whose clock runs behind, cannot shorten a
///   session another request extended; the absolute deadline never changes
///   after create.
/// - [`delete`](Self::delete) removes the record; nothing in flight can bring
///   it back, because saves and touches require it to exist.
///   [`delete_if_version`](Self::delete_if_version) removes it only at the
///   version the caller read. ID rotation decides with a conditional
///   [`save`](Self::save) that retires the old ID (so a lost answer can be
///   settled by reading it again), then removes it with `delete_if_version`.
/// - The principal operations find and end all of a user's sessions. A
///   revoke that fails part-way (a timeout) has still ended the sessions it
///   reached, and a retry carries on from there.
///
/// # Clocks
///
/// Instances do not share a clock, and offstate does not need them to agree
/// exactly. With a skew of `s` between two instances:
///
/// - the one whose clock is ahead sees a session end up to `s` early, the
///   one behind serves it up to `s` late (Redis also drops the key at a TTL
///   computed from the writer's clock, on the server's clock);
/// - an instance behind cannot shorten a session: deadlines only move
///   forward, so its late touch or save keeps the later deadline another
///   instance set; an instance ahead extends sessions by up to `s` more;
/// - the absolute deadline is fixed at creation by the creating instance.
///
/// So skew shifts expiry by at most the skew, in both directions, and
/// never loses or resurrects data. Keep it well under the touch interval
/// (NTP keeps fleets within milliseconds); at a skew comparable to the idle
/// timeout, idle expiry stops meaning anything. `session-core/tests/clocks.rs`
/// checks both directions with skewed clocks.
///
/// The public [conformance suite](crate::conformance) checks all of this.
///
/// # Generics, not `dyn`
///
/// The methods return `impl Future + Send`, so a store composes with
/// wrappers (a cache, a counter) with no allocation per call. The
/// [`Session`](crate::Session) handle erases the store type once, behind an
/// internal object-safe trait, so handlers are not generic over it; that
/// costs one small box per store call, next to a network round trip.
///
/// # Records are shared
///
/// [`load`](Self::load) returns an [`Arc<Record>`]: a cache hands out the
/// record it holds without copying it, and the session handle reads from
/// it without copying it either.
pub trait SessionStore: Send + Sync + 'static {
    /// Loads the live record under `key`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails or the record cannot be decoded
    /// ([`StoreError::Corrupt`]).
    fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<Arc<Record>>, StoreError>> + Send;

    /// Inserts `record` under `key` only if no live record is there.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails or the record is too large.
    fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    /// Applies `change` if the live record has `change.expected`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails or the result would be too large.
    fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> impl Future<Output = Result<SaveOutcome, StoreError>> + Send;

    /// [`save`](Self::save), from a writer that has already built the
    /// record the change makes: `next` is `change.apply_to(base)`, where
    /// `base` is the record the writer read (at `change.expected`).
    ///
    /// A store that keeps records in this process may keep `next` itself
    /// when its live record is `base` (the same allocation), instead of
    /// applying the change a second time; the version check and the later
    /// idle deadline are exactly those of `save`. The default saves the
    /// change. A wrapper should forward it (a store may save faster with
    /// `next`: Redis stores the string the writer built, reading only the
    /// stored header inside its script); one that does not still saves
    /// correctly, through its own `save`.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> impl Future<Output = Result<SaveOutcome, StoreError>> + Send {
        let _ = (base, next);
        self.save(key, change, now)
    }

    /// Extends the idle deadline of the live record under `key` to
    /// `idle_deadline` (a later stored deadline stays).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> impl Future<Output = Result<TouchOutcome, StoreError>> + Send;

    /// Deletes the record under `key`. Returns whether a live one was there.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    fn delete(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the live record under `key` only if it has version
    /// `expected`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> impl Future<Output = Result<DeleteOutcome, StoreError>> + Send;

    /// Lists the keys of the live sessions of `principal`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unsupported`] where [`Capabilities::list_principal`] is
    /// false; otherwise [`StoreError`] when the store fails.
    fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<SessionKey>, StoreError>> + Send;

    /// Ends every session of `principal`. Returns how many were deleted, when
    /// the store can tell (an epoch-based store returns 0 and still revokes).
    ///
    /// A call that fails with [`StoreError::Timeout`] or
    /// [`StoreError::Unavailable`] may still take effect later: the request
    /// can sit in a stalled server's socket after the caller gave up, and
    /// then also ends sessions the principal logged in to after the failure
    /// was reported. It errs towards logging out, never towards keeping a
    /// session it should have ended. Retry it; it is idempotent.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    fn revoke_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Checks that the store answers: `Ok` when it served a request just
    /// now. For health checks and the admin API; nothing is written.
    ///
    /// The default loads a random key that no session has, which costs
    /// one read; stores with a cheaper probe (Redis `PING`) may override it.
    /// Wrappers (a cache, a counter) should pass it to the store they wrap,
    /// so the answer is the backend's.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store does not answer or fails.
    fn ping(&self, now: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let probe = SessionId::generate().key();
            self.load(&probe, now).await.map(|_| ())
        }
    }

    /// Where a new session of `principal` should be filed: the
    /// [`KeyPrefix`] its key should start with, or `None` (the default)
    /// when the store does not mind.
    ///
    /// A login asks for it when it draws the session's new ID (the ID is
    /// then drawn until its key matches; see
    /// [`SessionId::generate_with_key_prefix`]). A store that partitions by
    /// key uses it to put a principal's sessions in the partition of its
    /// principal index, so that the two are written together and lost
    /// together (Redis Cluster: the same hash slot). It is a placement
    /// wish, never a requirement: every other operation must still work
    /// on a key that does not match (a session created before the store
    /// asked, or under another principal), only less well placed. The
    /// answer must depend on `principal` alone, and be cheap.
    /// Wrappers (a cache, a counter) pass it to the store they wrap.
    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        let _ = principal;
        None
    }

    /// What this store can do beyond the required contract.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The backend's name, as OpenTelemetry's `db.system` spells it where
    /// there is one (`redis`, `dynamodb`, `memcached`), for metrics and
    /// traces. Wrappers report the store they wrap.
    fn name(&self) -> &'static str {
        "custom"
    }

    /// Where the store is (`host:port` of the node or endpoint it talks
    /// to), for traces' `server.address`; `None` when it has no single
    /// address or does not say. Never includes credentials. Wrappers
    /// report the store they wrap.
    fn server_address(&self) -> Option<&str> {
        None
    }
}

/// A kind of store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// [`SessionStore::load`].
    Load,
    /// [`SessionStore::create`].
    Create,
    /// [`SessionStore::save`].
    Save,
    /// [`SessionStore::touch`].
    Touch,
    /// [`SessionStore::delete`].
    Delete,
    /// [`SessionStore::delete_if_version`].
    DeleteIfVersion,
    /// [`SessionStore::list_principal`].
    ListPrincipal,
    /// [`SessionStore::revoke_principal`].
    RevokePrincipal,
}

impl Call {
    /// How many kinds there are (the telemetry's table has a slot for
    /// each): one past the last variant's index.
    pub(crate) const COUNT: usize = Self::RevokePrincipal as usize + 1;

    /// Its `operation` label in the store-call metrics and traces.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Create => "create",
            Self::Save => "save",
            Self::Touch => "touch",
            Self::Delete => "delete",
            Self::DeleteIfVersion => "delete_if_version",
            Self::ListPrincipal => "list_principal",
            Self::RevokePrincipal => "revoke_principal",
        }
    }
}
