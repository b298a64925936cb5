//! The `Session` handle that apps use, and `Sessions`, which makes handles.
//!
//! A handle loads lazily, keeps the request's changes as an ordered list of
//! operations, and writes them with one conditional save. When the save
//! meets a newer version, the operations are replayed on the fresh record:
//! keys this request did not touch come from the fresh record, `update`
//! closures re-run on the fresh value, and plain inserts follow the
//! [`WritePolicy`]. Nothing is lost, and nothing is resurrected.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tracing::Instrument as _;

use crate::clock::{Clock, system_clock};
use crate::codec::{Codec, Json};
use crate::erased::SharedStore;
use crate::error::{BoxError, LimitError, SessionError};
use crate::expiry::ExpiryPolicy;
use crate::id::SessionId;
use crate::record::{Record, Timestamp};
use crate::store::{
    Change, CreateOutcome, PrincipalChange, SaveOutcome, SessionStore, TouchOutcome,
};

/// What a plain [`Session::insert`] does when a concurrent request changed
/// the same key since this request loaded the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WritePolicy {
    /// This request's value replaces the other one (other keys are kept).
    #[default]
    LastWriterWins,
    /// The save fails with [`SessionError::Conflict`]; use
    /// [`Session::update`] for values that must merge.
    Reject,
}

/// What to do when the store is down (times out or cannot be reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Reads fail with a typed error (middleware answers 503). The default:
    /// a shop should not pretend a basket is empty.
    #[default]
    FailClosed,
    /// Reads see an empty, anonymous session. Its writes are refused with an
    /// error, so it never replaces the real session, whose cookie is kept.
    FailOpen,
}

/// Size and count limits, checked before anything is written.
///
/// The defaults keep a record under DynamoDB's 400 KB item limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most keys one session may hold.
    pub max_keys: usize,
    /// Largest encoded value, in bytes.
    pub max_value_bytes: usize,
    /// Largest record ([`Record::size`]), in bytes.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_keys: 512,
            max_value_bytes: 256 * 1024,
            max_record_bytes: 384 * 1024,
        }
    }
}

impl Limits {
    /// Sets the most keys one session may hold.
    #[must_use]
    pub fn with_max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Sets the largest encoded value.
    #[must_use]
    pub fn with_max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Sets the largest record.
    #[must_use]
    pub fn with_max_record_bytes(mut self, n: usize) -> Self {
        self.max_record_bytes = n;
        self
    }

    fn check_value(&self, key: &str, size: usize) -> Result<(), LimitError> {
        if size > self.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                key: key.to_owned(),
                size,
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_record(&self, record: &Record) -> Result<(), LimitError> {
        if record.data.len() > self.max_keys {
            return Err(LimitError::TooManyKeys {
                count: record.data.len(),
                limit: self.max_keys,
            });
        }
        let size = record.size();
        if size > self.max_record_bytes {
            return Err(LimitError::RecordTooLarge {
                size,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Config {
    expiry: ExpiryPolicy,
    clock: Arc<dyn Clock>,
    limits: Limits,
    write_policy: WritePolicy,
    outage: OutagePolicy,
    max_attempts: u32,
}

/// Makes [`Session`] handles over one store, with one configuration.
/// Cheap to clone; build it once and share it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
/// use offstate_core::{MemoryStore, Sessions};
///
/// let sessions = Sessions::new(MemoryStore::new());
///
/// // A worker (no HTTP): start a session, write, save.
/// let session = sessions.new_session();
/// session.insert("cart", &vec!["apple"]).await?;
/// session.save().await?;
/// let id = session.id().await.expect("saved sessions have an ID");
///
/// // Later, anywhere: load it by ID and change it.
/// let session = sessions.load(&id).await?.expect("still live");
/// session.update("cart", |cart: Option<Vec<String>>| {
///     let mut cart = cart.unwrap_or_default();
///     cart.push("pear".into());
///     Some(cart)
/// }).await?;
/// session.save().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sessions {
    store: SharedStore,
    config: Arc<Config>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions over `store`, with default expiry, limits and policies.
    pub fn new(store: impl SessionStore) -> Self {
        Self {
            store: Arc::new(store),
            config: Arc::new(Config {
                expiry: ExpiryPolicy::default(),
                clock: system_clock(),
                limits: Limits::default(),
                write_policy: WritePolicy::default(),
                outage: OutagePolicy::default(),
                max_attempts: 64,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Sets the expiry policy.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use offstate_core::{ExpiryPolicy, MemoryStore, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new())
    ///     .with_expiry(ExpiryPolicy::default().with_idle(Some(Duration::from_secs(600))));
    /// assert_eq!(sessions.expiry().idle(), Some(Duration::from_secs(600)));
    /// ```
    #[must_use]
    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.config_mut().expiry = expiry;
        self
    }

    /// Sets the clock deadlines are computed with. It must be the clock the
    /// store checks deadlines with.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// Sets the size and count limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.config_mut().limits = limits;
        self
    }

    /// Sets what a plain insert does on a concurrent change of the same key.
    #[must_use]
    pub fn with_write_policy(mut self, policy: WritePolicy) -> Self {
        self.config_mut().write_policy = policy;
        self
    }

    /// Sets what happens when the store is down.
    #[must_use]
    pub fn with_outage_policy(mut self, policy: OutagePolicy) -> Self {
        self.config_mut().outage = policy;
        self
    }

    /// Sets how many times a conflicting save is attempted (at least 1;
    /// default 64). After the second attempt, attempts are spaced by a
    /// random pause that grows with each conflict (at most 50 ms), so many
    /// writers on one session take turns instead of colliding again.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.config_mut().max_attempts = attempts.max(1);
        self
    }

    /// The expiry policy.
    #[must_use]
    pub fn expiry(&self) -> &ExpiryPolicy {
        &self.config.expiry
    }

    /// The clock deadlines are computed with.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.config.clock
    }

    /// The outage policy.
    #[must_use]
    pub fn outage_policy(&self) -> OutagePolicy {
        self.config.outage
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// A handle for the session the client presented (or none). Nothing is
    /// loaded until the handle is first used.
    #[must_use]
    pub fn open(&self, id: Option<SessionId>) -> Session {
        Session {
            sessions: self.clone(),
            state: Arc::new(Mutex::new(State::new(id))),
        }
    }

    /// A handle for a new session. It is stored on its first save with data.
    #[must_use]
    pub fn new_session(&self) -> Session {
        self.open(None)
    }

    /// Loads the session `id` now; `None` if it is not live.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        let session = self.open(Some(id.clone()));
        let live = {
            let mut state = session.state.lock().await;
            session.ensure_loaded(&mut state).await?;
            state.record.is_some()
        };
        Ok(live.then_some(session))
    }

    /// Ends every session of `principal`, on every instance. Returns how
    /// many the store reports deleted.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn revoke_principal(&self, principal: &str) -> Result<usize, SessionError> {
        let store = &self.store;
        Ok(store
            .revoke_principal(principal)
            .instrument(tracing::debug_span!("offstate.revoke_principal"))
            .await?)
    }

    fn now(&self) -> Timestamp {
        self.config.clock.now()
    }
}

type UpdateFn =
    Arc<dyn Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, SessionError> + Send + Sync + 'static>;

#[derive(Clone)]
enum Op {
    Set { key: String, value: Vec<u8> },
    Remove { key: String },
    Update { key: String, f: UpdateFn },
}

impl Op {
    fn apply(&self, data: &mut BTreeMap<String, Vec<u8>>) -> Result<(), SessionError> {
        match self {
            Self::Set { key, value } => {
                data.insert(key.clone(), value.clone());
            }
            Self::Remove { key } => {
                data.remove(key);
            }
            Self::Update { key, f } => match f(data.get(key).map(Vec::as_slice))? {
                Some(value) => {
                    data.insert(key.clone(), value);
                }
                None => {
                    data.remove(key);
                }
            },
        }
        Ok(())
    }
}

struct State {
    /// The ID the client presented, or the one this handle created.
    id: Option<SessionId>,
    loaded: bool,
    /// The last record known to be stored (`None`: no live session).
    record: Option<Record>,
    /// What the handler sees: the record's data with `ops` applied.
    view: BTreeMap<String, Vec<u8>>,
    ops: Vec<Op>,
    principal: PrincipalChange,
    cycle: bool,
    /// The session was deleted, revoked or found gone: tell the client.
    ended: bool,
    /// Fail-open after a store outage: an empty session that is never saved.
    degraded: bool,
    /// The client must be sent the ID again (new, rotated or extended).
    resend: bool,
}

impl State {
    fn new(id: Option<SessionId>) -> Self {
        Self {
            loaded: id.is_none(),
            id,
            record: None,
            view: BTreeMap::new(),
            ops: Vec::new(),
            principal: PrincipalChange::Keep,
            cycle: false,
            ended: false,
            degraded: false,
            resend: false,
        }
    }

    fn is_dirty(&self) -> bool {
        !self.ops.is_empty() || self.principal != PrincipalChange::Keep || self.cycle
    }

    fn reset_to(&mut self, record: Option<Record>) {
        self.view = record.as_ref().map(|r| r.data.clone()).unwrap_or_default();
        self.record = record;
        self.ops.clear();
        self.principal = PrincipalChange::Keep;
        self.cycle = false;
    }
}

/// What the client must be told after a request, for the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientUpdate {
    /// Nothing changed for the client.
    Unchanged,
    /// Send this ID (new, rotated, or with a later expiry).
    Set {
        /// The session ID to send.
        id: SessionId,
        /// When the session ends, if it does (for a cookie's Max-Age).
        expires_at: Option<Timestamp>,
    },
    /// The session ended: tell the client to forget its ID.
    Remove,
}

/// One user's session: typed access to its values, and the operations that
/// change its identity (rotate on login, log out, revoke everywhere).
///
/// Handles are cheap to clone and all clones share one state. Reads load
/// the session on first use; writes are kept until [`Session::save`], which
/// the middleware calls after the handler.
#[derive(Clone)]
pub struct Session {
    sessions: Sessions,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Longest pause between two save attempts.
const BACKOFF_CAP: Duration = Duration::from_millis(50);

/// "Full jitter" exponential backoff: a random pause between zero and
/// 0.5 ms × 2^attempt, capped at [`BACKOFF_CAP`].
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_micros(500)
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let mut bytes = [0u8; 8];
    // Without randomness, fall back to the ceiling: slower, never wrong.
    let fraction = match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 1.0,
    };
    ceiling.mul_f64(fraction)
}

fn codec_error(key: &str, source: BoxError) -> SessionError {
    SessionError::Codec {
        key: key.to_owned(),
        source,
    }
}

impl Session {
    async fn ensure_loaded(&self, state: &mut State) -> Result<(), SessionError> {
        if state.loaded {
            return Ok(());
        }
        let Some(id) = state.id.clone() else {
            state.loaded = true;
            return Ok(());
        };
        let key = id.key();
        let store = &self.sessions.store;
        let result = store
            .load(&key)
            .instrument(tracing::debug_span!("offstate.load", key = ?key))
            .await;
        match result {
            Ok(record) => {
                state.loaded = true;
                state.reset_to(record);
            }
            Err(error)
                if error.is_outage() && self.sessions.config.outage == OutagePolicy::FailOpen =>
            {
                tracing::warn!(%error, "session store unavailable; serving an empty session (fail open)");
                state.loaded = true;
                state.degraded = true;
                state.reset_to(None);
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    /// The session's ID, if it has one: the one the client presented while
    /// it is live, or the one a save created.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn id(&self) -> Option<SessionId> {
        let state = self.state.lock().await;
        match (&state.record, state.loaded) {
            (Some(_), _) | (None, false) => state.id.clone(),
            (None, true) => None,
        }
    }

    /// Whether the store holds a live record for this session (loading it
    /// if needed).
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn exists(&self) -> Result<bool, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(state.record.is_some())
    }

    /// Whether this is a fail-open stand-in for a session the store could
    /// not load.
    pub async fn is_degraded(&self) -> bool {
        self.state.lock().await.degraded
    }

    /// Whether the handle holds changes that [`Session::save`] would write
    /// (data, principal, or an ID rotation). A save without them at most
    /// touches the session.
    pub async fn is_dirty(&self) -> bool {
        let state = self.state.lock().await;
        !state.ended && state.is_dirty()
    }

    /// Drops the changes not yet saved; the handle shows the stored session
    /// again.
    pub async fn discard(&self) {
        let mut state = self.state.lock().await;
        let record = state.record.take();
        state.reset_to(record);
    }

    /// The stored record's version, if the session is live.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn version(&self) -> Result<Option<crate::Version>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(state.record.as_ref().map(|r| r.version))
    }

    /// When the session ends if nothing extends it.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn expires_at(&self) -> Result<Option<Timestamp>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(state.record.as_ref().and_then(|r| r.deadlines.expires_at()))
    }

    /// Reads a JSON value.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails, [`SessionError::Codec`]
    /// when the stored value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.get_with::<Json, T>(key).await
    }

    /// Reads a value in codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Session::get`].
    pub async fn get_with<C: Codec, T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        state
            .view
            .get(key)
            .map(|bytes| C::decode(bytes).map_err(|e| codec_error(key, e)))
            .transpose()
    }

    /// The keys the session holds.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn keys(&self) -> Result<Vec<String>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(state.view.keys().cloned().collect())
    }

    /// Sets a JSON value. Saved by [`Session::save`].
    ///
    /// # Errors
    ///
    /// [`SessionError::Codec`] when the value cannot be serialized,
    /// [`SessionError::Limit`] when it is too large, and loading errors.
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        self.insert_with::<Json, T>(key, value).await
    }

    /// Sets a value in codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Session::insert`].
    pub async fn insert_with<C: Codec, T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let bytes = C::encode(value).map_err(|e| codec_error(key, e))?;
        self.sessions.config.limits.check_value(key, bytes.len())?;
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        state.view.insert(key.to_owned(), bytes.clone());
        state.ops.push(Op::Set {
            key: key.to_owned(),
            value: bytes,
        });
        Ok(())
    }

    /// Removes a value. Returns whether it was there.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        let existed = state.view.remove(key).is_some();
        state.ops.push(Op::Remove {
            key: key.to_owned(),
        });
        Ok(existed)
    }

    /// Changes a JSON value with a closure, and returns the new value.
    ///
    /// If the save meets a concurrent change, the closure runs again on the
    /// fresh value, so two requests that each add an item to a cart both
    /// land. The closure must therefore be a pure function of its input.
    /// Returning `None` removes the key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
    /// # use offstate_core::{MemoryStore, Sessions};
    /// let session = Sessions::new(MemoryStore::new()).new_session();
    /// let count = session.update("visits", |n: Option<u32>| Some(n.unwrap_or(0) + 1)).await?;
    /// assert_eq!(count, Some(1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Codec`] for values that do not (de)serialize, limit
    /// and loading errors.
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<Option<T>, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> Option<T> + Send + Sync + 'static,
    {
        self.update_with::<Json, T, F>(key, f).await
    }

    /// [`Session::update`] in codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Session::update`].
    pub async fn update_with<C, T, F>(&self, key: &str, f: F) -> Result<Option<T>, SessionError>
    where
        C: Codec,
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> Option<T> + Send + Sync + 'static,
    {
        let limits = self.sessions.config.limits;
        let owned_key = key.to_owned();
        let op: UpdateFn = Arc::new(move |current: Option<&[u8]>| {
            let value = current
                .map(|bytes| C::decode::<T>(bytes))
                .transpose()
                .map_err(|e| codec_error(&owned_key, e))?;
            f(value)
                .map(|next| {
                    let bytes = C::encode(&next).map_err(|e| codec_error(&owned_key, e))?;
                    limits.check_value(&owned_key, bytes.len())?;
                    Ok(bytes)
                })
                .transpose()
        });
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        let next = op(state.view.get(key).map(Vec::as_slice))?;
        let result = next
            .as_deref()
            .map(C::decode::<T>)
            .transpose()
            .map_err(|e| codec_error(key, e))?;
        match next {
            Some(bytes) => state.view.insert(key.to_owned(), bytes),
            None => state.view.remove(key),
        };
        state.ops.push(Op::Update {
            key: key.to_owned(),
            f: op,
        });
        Ok(result)
    }

    /// The principal (user) the session belongs to.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn principal(&self) -> Result<Option<String>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(match &state.principal {
            PrincipalChange::Set(p) => Some(p.clone()),
            PrincipalChange::Clear => None,
            _ => state.record.as_ref().and_then(|r| r.principal.clone()),
        })
    }

    /// Attaches the session to a principal, so that
    /// [`Session::revoke_principal`] can find it. Saved by [`Session::save`].
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn set_principal(&self, principal: impl Into<String>) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        state.principal = PrincipalChange::Set(principal.into());
        Ok(())
    }

    /// Detaches the session from its principal. Saved by [`Session::save`].
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn clear_principal(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        state.principal = PrincipalChange::Clear;
        Ok(())
    }

    /// Gives the session a new ID on save, keeping its data: call it on
    /// login, against session fixation.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        state.cycle = true;
        Ok(())
    }

    /// Deletes the session now (log out). Pending changes are dropped.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn delete(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        state.reset_to(None);
        state.loaded = true;
        if let Some(id) = state.id.take() {
            let key = id.key();
            let store = &self.sessions.store;
            store
                .delete(&key)
                .instrument(tracing::debug_span!("offstate.delete", key = ?key))
                .await?;
            state.ended = true;
        }
        Ok(())
    }

    /// Ends every session of this session's principal, this one included
    /// (log out everywhere). Returns how many the store reports deleted.
    ///
    /// # Errors
    ///
    /// [`SessionError::NoPrincipal`] when the session has none, and store errors.
    pub async fn revoke_principal(&self) -> Result<usize, SessionError> {
        let principal = self.principal().await?.ok_or(SessionError::NoPrincipal)?;
        let revoked = self.sessions.revoke_principal(&principal).await?;
        // Make sure this one is gone too, even if the index missed it.
        self.delete().await?;
        Ok(revoked)
    }

    /// Writes the pending changes with one conditional save (or creates the
    /// session), replaying them on a fresh record after a conflict. With no
    /// changes, touches the session if the touch threshold has passed.
    ///
    /// # Errors
    ///
    /// [`SessionError::Gone`] when the session ended meanwhile (nothing is
    /// written), [`SessionError::Conflict`] under [`WritePolicy::Reject`],
    /// [`SessionError::RetriesExhausted`], [`SessionError::Limit`], and store
    /// errors. A fail-open stand-in refuses writes with the store error it met.
    pub async fn save(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        if !state.loaded || state.ended {
            // Never used, or already deleted: nothing to write.
            return Ok(());
        }
        if state.degraded {
            if state.is_dirty() {
                return Err(SessionError::Store(crate::StoreError::Unavailable(
                    "the session store was unavailable when this request loaded the session; its changes were not saved".into(),
                )));
            }
            return Ok(());
        }
        if state.record.is_none() {
            if state.is_dirty() {
                self.create(&mut state).await?;
            }
            return Ok(());
        }
        if !state.ops.is_empty() || state.principal != PrincipalChange::Keep {
            self.write(&mut state).await?;
        } else if !state.cycle {
            self.maybe_touch(&mut state).await?;
        }
        if state.cycle {
            self.rotate(&mut state).await?;
        }
        Ok(())
    }

    async fn create(&self, state: &mut State) -> Result<(), SessionError> {
        let config = &self.sessions.config;
        let now = self.sessions.now();
        let mut record = Record::new(now, config.expiry.initial(now));
        for op in &state.ops {
            op.apply(&mut record.data)?;
        }
        if let PrincipalChange::Set(p) = &state.principal {
            record.principal = Some(p.clone());
        }
        config.limits.check_record(&record)?;
        for _ in 0..3 {
            // Never adopt an ID the client chose: always a fresh one.
            let id = SessionId::generate();
            let key = id.key();
            let store = &self.sessions.store;
            let outcome = store
                .create(&key, &record)
                .instrument(tracing::debug_span!("offstate.create", key = ?key))
                .await?;
            if outcome == CreateOutcome::Created {
                state.id = Some(id);
                state.resend = true;
                state.reset_to(Some(record));
                return Ok(());
            }
            tracing::warn!("session ID collision on create; drawing another");
        }
        Err(SessionError::RetriesExhausted { attempts: 3 })
    }

    async fn write(&self, state: &mut State) -> Result<(), SessionError> {
        let config = &self.sessions.config;
        let Some(id) = state.id.clone() else {
            return Ok(());
        };
        let key = id.key();
        for attempt in 0..config.max_attempts {
            if attempt > 1 {
                // The first replay goes at once (the fresh record came with
                // the conflict); after that, writers that keep colliding on
                // one session spread out instead of colliding again.
                tokio::time::sleep(backoff(attempt)).await;
            }
            let Some(base) = state.record.clone() else {
                return Ok(());
            };
            let mut data = base.data.clone();
            for op in &state.ops {
                op.apply(&mut data)?;
            }
            let now = self.sessions.now();
            let mut change = Change::new(base.version, config.expiry.renewed(&base, now));
            for (k, v) in &data {
                if base.data.get(k) != Some(v) {
                    change.set.insert(k.clone(), v.clone());
                }
            }
            for k in base.data.keys() {
                if !data.contains_key(k) {
                    change.remove.insert(k.clone());
                }
            }
            change.principal = match &state.principal {
                PrincipalChange::Set(p) if base.principal.as_deref() != Some(p) => {
                    PrincipalChange::Set(p.clone())
                }
                PrincipalChange::Clear if base.principal.is_some() => PrincipalChange::Clear,
                _ => PrincipalChange::Keep,
            };
            if change.set.is_empty()
                && change.remove.is_empty()
                && change.principal == PrincipalChange::Keep
            {
                // The operations cancel out: nothing to write.
                state.view = data;
                state.ops.clear();
                state.principal = PrincipalChange::Keep;
                return self.maybe_touch(state).await;
            }
            let next = change.apply_to(&base);
            config.limits.check_record(&next)?;
            let store = &self.sessions.store;
            let outcome = store
                .save(&key, &change)
                .instrument(
                    tracing::debug_span!("offstate.save", key = ?key, expected = %base.version),
                )
                .await?;
            match outcome {
                SaveOutcome::Saved(version) => {
                    let mut next = next;
                    next.version = version;
                    let cycle = state.cycle;
                    state.reset_to(Some(next));
                    state.cycle = cycle;
                    state.resend = true;
                    return Ok(());
                }
                SaveOutcome::Conflict(fresh) => {
                    tracing::debug!(met = %fresh.version, "session save conflicted; replaying on the fresh record");
                    if config.write_policy == WritePolicy::Reject {
                        for op in &state.ops {
                            if let Op::Set { key: k, .. } = op
                                && base.data.get(k) != fresh.data.get(k)
                            {
                                let k = k.clone();
                                state.reset_to(Some(*fresh));
                                return Err(SessionError::Conflict { key: k });
                            }
                        }
                    }
                    state.record = Some(*fresh);
                }
                SaveOutcome::Gone => return Err(self.gone(state)),
            }
        }
        Err(SessionError::RetriesExhausted {
            attempts: config.max_attempts,
        })
    }

    fn gone(&self, state: &mut State) -> SessionError {
        state.reset_to(None);
        state.ended = true;
        SessionError::Gone
    }

    async fn maybe_touch(&self, state: &mut State) -> Result<(), SessionError> {
        let (Some(record), Some(id)) = (&state.record, &state.id) else {
            return Ok(());
        };
        let now = self.sessions.now();
        let Some(deadline) = self.sessions.config.expiry.touch_due(record, now) else {
            return Ok(());
        };
        let key = id.key();
        let store = &self.sessions.store;
        let outcome = store
            .touch(&key, deadline)
            .instrument(tracing::debug_span!("offstate.touch", key = ?key))
            .await?;
        match outcome {
            TouchOutcome::Touched => {
                if let Some(record) = state.record.as_mut() {
                    record.deadlines.idle = Some(deadline);
                }
                state.resend = true;
                Ok(())
            }
            _ => Err(self.gone(state)),
        }
    }

    /// Moves the live record to a new ID: fresh load, create, delete old.
    /// A write to the old ID between the load and the delete is lost; login
    /// is rare and the window is one round trip.
    async fn rotate(&self, state: &mut State) -> Result<(), SessionError> {
        let Some(old) = state.id.clone() else {
            return Ok(());
        };
        let old_key = old.key();
        let store = &self.sessions.store;
        let Some(record) = store.load(&old_key).await? else {
            return Err(self.gone(state));
        };
        for _ in 0..3 {
            let id = SessionId::generate();
            let key = id.key();
            let outcome = store
                .create(&key, &record)
                .instrument(tracing::debug_span!("offstate.cycle_id", key = ?key))
                .await?;
            if outcome == CreateOutcome::Created {
                store.delete(&old_key).await?;
                state.id = Some(id);
                state.resend = true;
                state.reset_to(Some(record));
                return Ok(());
            }
        }
        Err(SessionError::RetriesExhausted { attempts: 3 })
    }

    /// What the client must now be told, and forget it was pending: for
    /// middleware, after [`Session::save`].
    pub async fn take_client_update(&self) -> ClientUpdate {
        let mut state = self.state.lock().await;
        if state.ended {
            state.ended = false;
            return ClientUpdate::Remove;
        }
        if !std::mem::take(&mut state.resend) {
            return ClientUpdate::Unchanged;
        }
        match (&state.id, &state.record) {
            (Some(id), Some(record)) => ClientUpdate::Set {
                id: id.clone(),
                expires_at: record.deadlines.expires_at(),
            },
            _ => ClientUpdate::Unchanged,
        }
    }
}
