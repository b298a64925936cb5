//! The [`Session`] handle apps use, and [`Sessions`], which makes handles.
//!
//! A handle loads lazily, keeps the request's changes as an ordered list of
//! operations over the loaded record, and writes them with one conditional
//! save. When the save meets a newer version, the operations are replayed
//! on the fresh record: keys this request did not touch come from the fresh
//! record, `update` closures re-run on the fresh value, and plain inserts
//! follow the [`WritePolicy`]. Nothing is lost, and nothing is resurrected.
//!
//! # Layout
//!
//! - `policy`: [`WritePolicy`], [`OutagePolicy`], [`Limits`];
//! - `sessions`: [`Sessions`], the shared configuration;
//! - `state`: what one handle holds (the record, the overlay of changes);
//! - this module: the [`Session`] handle's public methods;
//! - `save`: writing: create, conditional save and replay, touch, and the
//!   ID rotation that login needs;
//! - `finish`: what the end of a request has to do;
//! - `io`: clones of one handle take turns at the store;
//! - `turns`: writers of one session in one process take turns;
//! - `calls`: every store call, in one place (spans, clock).

mod calls;
mod finish;
mod io;
mod policy;
mod save;
mod sessions;
mod state;
mod turns;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use policy::{Limits, OutagePolicy, WritePolicy};
pub use sessions::Sessions;

use self::io::IoTurn;
use self::state::{Op, State, UpdateFn};
use crate::codec::{Codec, Json};
use crate::error::{BoxError, SessionError, StoreError};
use crate::id::{SessionId, SessionKey};
use crate::record::{Timestamp, Version};
use crate::store::PrincipalChange;
use crate::telemetry::{self, RefusedInput};

/// One user's session: typed access to its values, and the operations that
/// change its identity (log in, log out, log out everywhere).
///
/// Handles are cheap to clone and all clones share one state. Reads load
/// the session on first use; writes are kept until [`Session::save`], which
/// the middleware calls after the handler. With the `axum` feature, a
/// handler takes it as an argument (`Option<Session>` works too).
///
/// The accessors that need no store ([`id`](Self::id),
/// [`is_dirty`](Self::is_dirty)) are plain functions; reads of a loaded
/// session take a short lock that is never held across an `.await`.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Sessions,
    state: Mutex<State>,
    /// Wakes clones of the handle waiting for their turn at the store
    /// (see [`Session::io`]).
    io_free: tokio::sync::Notify,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// A loaded record, and the ID it was found under when that was one of
/// several the client presented.
type Found = (Option<(SessionId, SessionKey)>, Arc<crate::record::Record>);

fn codec_error(key: &str, source: BoxError) -> SessionError {
    SessionError::Codec {
        key: key.to_owned(),
        source,
    }
}

impl Session {
    pub(crate) fn open(sessions: Sessions, id: Option<SessionId>) -> Self {
        Self::with_state(sessions, State::new(id))
    }

    pub(crate) fn open_presented(
        sessions: Sessions,
        ids: impl IntoIterator<Item = SessionId>,
    ) -> Self {
        Self::with_state(sessions, State::presented(ids))
    }

    fn with_state(sessions: Sessions, state: State) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions,
                state: Mutex::new(state),
                io_free: tokio::sync::Notify::new(),
            }),
        }
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    // A std Mutex: never held across an await; a poisoned one only means a
    // closure panicked mid-request, and the state is still whole.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the loaded state, loading it first if needed.
    async fn loaded<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, SessionError> {
        let mut state = self.load().await?;
        Ok(f(&mut state))
    }

    /// The state, loaded (or found fail-open degraded), and still locked:
    /// a loaded state takes one lock, a load two.
    async fn load(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        let free = {
            let mut state = self.lock();
            if state.loaded {
                return Ok(state);
            }
            let busy = std::mem::replace(&mut state.io_busy, true);
            (!busy).then(|| (state.key(), state.candidates.clone()))
        };
        let (turn, key, candidates) = match free {
            Some((key, candidates)) => (IoTurn(self), key, candidates),
            None => {
                // A clone is at the store (loading too, likely): wait for
                // it, then look again.
                let turn = Box::pin(self.wait_for_io()).await;
                let mut state = self.lock();
                if state.loaded {
                    turn.release(&mut state);
                    return Ok(state);
                }
                let (key, candidates) = (state.key(), state.candidates.clone());
                drop(state);
                (turn, key, candidates)
            }
        };
        let result = match (key, candidates.is_empty()) {
            // Rare (a cookie tossed in by a sibling domain): boxed, so the
            // usual load's future stays small.
            (_, false) => Box::pin(self.load_one_of(candidates)).await,
            (Some(key), true) => calls::load(self.sessions(), &key).await.map(|record| {
                if record.is_none() {
                    telemetry::expired_on_read();
                }
                record.map(|r| (None, r))
            }),
            (None, true) => Ok(None),
        };
        let mut state = self.lock();
        turn.release(&mut state);
        match result {
            Ok(found) => {
                state.loaded = true;
                state.candidates.clear();
                if let Some((moved_to, record)) = found {
                    if let Some((id, key)) = moved_to {
                        state.set_id(id, key);
                    }
                    state.record = Some(record);
                }
            }
            Err(error)
                if error.is_outage()
                    && self.sessions().shared.config.outage == OutagePolicy::FailOpen =>
            {
                tracing::warn!(%error, "session store unavailable; serving an empty session (fail open)");
                telemetry::outage(true);
                state.loaded = true;
                state.degraded = true;
                state.record = None;
            }
            // The state stays unloaded: a later use tries again.
            Err(error) => {
                if error.is_outage() {
                    telemetry::outage(false);
                }
                return Err(error.into());
            }
        }
        Ok(state)
    }

    /// The one live session among several IDs a client presented. More than
    /// one live is ambiguous (one may be an attacker's): the request then
    /// has no session, rather than someone else's.
    async fn load_one_of(&self, candidates: Vec<SessionId>) -> Result<Option<Found>, StoreError> {
        let mut live = Vec::new();
        for id in candidates {
            let key = id.key();
            match calls::load(self.sessions(), &key).await? {
                Some(record) => live.push((Some((id, key)), record)),
                None => telemetry::expired_on_read(),
            }
        }
        if live.len() > 1 {
            RefusedInput::Ambiguous.record();
            tracing::warn!(
                live = live.len(),
                "the request carries several live session IDs (a tossed cookie?); serving none of them"
            );
            return Ok(None);
        }
        Ok(live.pop())
    }

    /// The session's ID, if it has one: the one the client presented (while
    /// it is not known to have ended), or the one a save created. No store
    /// call.
    #[must_use]
    pub fn id(&self) -> Option<SessionId> {
        let state = self.lock();
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
        self.loaded(|state| state.record.is_some()).await
    }

    /// Whether this is a fail-open stand-in for a session the store could
    /// not load. No store call.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.lock().degraded
    }

    /// Whether the handle holds changes that [`Session::save`] would write
    /// (data, principal, or an ID rotation). A save without them at most
    /// touches the session. No store call.
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        let state = self.lock();
        !state.ended && state.is_dirty()
    }

    /// Drops the changes not yet saved; the handle shows the stored session
    /// again. No store call.
    pub fn discard(&self) {
        let mut state = self.lock();
        let record = state.record.take();
        state.reset_to(record);
    }

    /// The stored record's version, if the session is live.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn version(&self) -> Result<Option<Version>, SessionError> {
        self.loaded(|state| state.record.as_ref().map(|r| r.version))
            .await
    }

    /// When the session ends if nothing extends it.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn expires_at(&self) -> Result<Option<Timestamp>, SessionError> {
        self.loaded(|state| state.expires_at()).await
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
        self.loaded(|state| {
            state
                .value(key)
                .map(|bytes| C::decode(bytes).map_err(|e| codec_error(key, e)))
                .transpose()
        })
        .await?
    }

    /// The keys the session holds.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when loading fails.
    pub async fn keys(&self) -> Result<Vec<String>, SessionError> {
        self.loaded(|state| state.keys()).await
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
        self.sessions()
            .shared
            .config
            .limits
            .check_value(key, bytes.len())?;
        let op = Op::Set {
            key: key.to_owned(),
            value: bytes,
        };
        self.loaded(|state| state.push(op)).await?
    }

    /// Removes a value. Returns whether it was there.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let op = Op::Remove {
            key: key.to_owned(),
        };
        self.loaded(|state| {
            let existed = state.value(key).is_some();
            state.push(op).map(|()| existed)
        })
        .await?
    }

    /// Changes a JSON value with a closure, and returns the new value.
    ///
    /// If the save meets a concurrent change, the closure runs again on the
    /// fresh value, so two requests that each add an item to a cart both
    /// land. The closure must therefore be a pure function of its input.
    /// Returning `None` removes the key.
    ///
    /// The value returned is the closure's result on the value this handle
    /// sees now (behind a cache, possibly a copy a peer has just made
    /// stale). To show the value that was stored, [`save`](Self::save) and
    /// read it back: after a replay the handle holds the stored record.
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
        let limits = self.sessions().shared.config.limits;
        let owned_key = key.to_owned();
        let f: UpdateFn = Arc::new(move |current: Option<&[u8]>| {
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
        let op = Op::Update {
            key: key.to_owned(),
            f,
        };
        self.loaded(|state| {
            state.push(op)?;
            state
                .value(key)
                .map(|bytes| C::decode::<T>(bytes).map_err(|e| codec_error(key, e)))
                .transpose()
        })
        .await?
    }

    /// The principal (user) the session belongs to.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn principal(&self) -> Result<Option<String>, SessionError> {
        self.loaded(|state| state.principal()).await
    }

    /// Logs the session in as `principal`: on save, the session gets a new
    /// ID that carries the principal and this session's data, and the old
    /// ID stops working. The principal is never written under the ID the
    /// client had before, which an attacker may have planted (session
    /// fixation), and a failed login leaves nobody logged in under it.
    /// [`Session::revoke_principal`] and
    /// [`Sessions::revoke_principal`] find the session by its principal.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn set_principal(&self, principal: impl Into<String>) -> Result<(), SessionError> {
        let principal = PrincipalChange::Set(principal.into());
        self.loaded(|state| state.principal = principal).await
    }

    /// Detaches the session from its principal (a log-out that keeps the
    /// anonymous data, such as the cart). Like any change of privilege, it
    /// gives the session a new ID on save.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn clear_principal(&self) -> Result<(), SessionError> {
        self.loaded(|state| state.principal = PrincipalChange::Clear)
            .await
    }

    /// Gives the session a new ID on save, keeping its data. Changing the
    /// principal does this by itself; call it for other changes of
    /// privilege.
    ///
    /// # Errors
    ///
    /// Loading errors.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.loaded(|state| state.cycle = true).await
    }

    /// Deletes the session now (log out). Pending changes are dropped.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn delete(&self) -> Result<(), SessionError> {
        let _io = self.io().await;
        let key = {
            let mut state = self.lock();
            let record = state.record.take();
            state.reset_to(record);
            state.key()
        };
        if let Some(key) = key
            && calls::delete(self.sessions(), &key).await?
        {
            telemetry::deleted();
        }
        let mut state = self.lock();
        state.end();
        state.id = None;
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
        let revoked = self.sessions().revoke_principal(&principal).await?;
        // Make sure this one is gone too, even if the index missed it.
        self.delete().await?;
        Ok(revoked)
    }

    /// Writes the pending changes with one conditional save (or creates the
    /// session, or moves it to a new ID after a login), replaying them on a
    /// fresh record after a conflict. With no changes, touches the session
    /// if the touch threshold has passed.
    ///
    /// A handler may call it itself to handle a failure its own way: after
    /// a failed `save`, the middleware does not save again and leaves the
    /// handler's response alone.
    ///
    /// # Errors
    ///
    /// [`SessionError::Gone`] when the session ended meanwhile (nothing is
    /// written), [`SessionError::Conflict`] under [`WritePolicy::Reject`],
    /// [`SessionError::RetriesExhausted`], [`SessionError::Limit`], and store
    /// errors. A fail-open stand-in refuses writes with the store error it met.
    pub async fn save(&self) -> Result<(), SessionError> {
        let result = self.save_pending().await;
        self.lock().own_save_failed = result.is_err();
        result
    }

    /// What the client must now be told, forgetting it was pending.
    pub(crate) fn take_client_update(&self) -> crate::middleware::ClientUpdate {
        self.lock().take_client_update()
    }
}
