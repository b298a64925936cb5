//! Writing a session: create, conditional save with replay, touch, and the
//! ID rotation that login needs.
//!
//! Why this file is long: these are the steps of one save, and they share
//! its plan, the changes it takes, what it restores on failure and what
//! it commits; apart, each would need the others' internals.
//!
//! # Rotation
//!
//! A login (a change of principal, or [`Session::cycle_id`]) never writes
//! to the ID the client had before: an attacker may have planted it. It
//! moves the session instead:
//!
//! 1. `create` a record under a fresh ID with the request's data and the
//!    new principal. Nobody knows that ID yet; stores that index principals
//!    index it before it exists, so a revoke that runs from here on ends it.
//! 2. Retire the old ID: a conditional save, at the version the new record
//!    was built from, that empties the old record and marks it with the
//!    new key. This is the step that decides:
//!    - saved: the login happened. The old ID now reads as absent, and any
//!      later write to it finds it ended and is refused (never
//!      acknowledged, so never lost);
//!    - a newer version: a concurrent request wrote the old ID. The new
//!      record is discarded and the login replays on the fresh record;
//!    - gone, or retired by another login: a logout, a revoke or another
//!      tab's login ended the session first. The new record is discarded
//!      and the login fails with [`SessionError::Gone`];
//!    - unknown (a timeout): the old record is read again. Marked with
//!      this login's key, the login happened; unmarked, the step is
//!      retried; gone, something else ended it (this login never deletes
//!      it before it knows), so the login fails.
//! 3. Delete the retired record. It is inert, so this only saves space; a
//!    failure leaves it to its deadline.
//!
//! A discarded new record is deleted at once, and again in the background
//! if that fails; until then it is a session nobody holds the ID of.

use std::sync::Arc;
use std::time::Duration;

use super::calls;
use super::io::IoTurn;
use super::state::{self, Overlay, State, Update};
use super::{Session, Sessions, WritePolicy};
use crate::error::{SessionError, StoreError};
use crate::id::{SessionId, SessionKey};
use crate::record::{RETIRED_KEY, Record, Timestamp, Version};
use crate::store::{Change, CreateOutcome, PrincipalChange, SaveOutcome, TouchOutcome};
use crate::telemetry;

/// Longest pause between two save attempts.
const BACKOFF_CAP: Duration = Duration::from_millis(50);

/// How many fresh IDs a create tries before giving up (a collision of
/// 192-bit random IDs means the random source is broken).
const CREATE_ATTEMPTS: u32 = 3;

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

/// How a save went.
pub(crate) struct Saved<T> {
    /// It had changes to write (not only, at most, a touch).
    pub(crate) changes: bool,
    pub(crate) result: Result<(), SessionError>,
    /// What the caller's `end` returned.
    pub(crate) then: T,
}

/// A write that was stored: the record, and when the save read the
/// clock. The handle shows it once the save's turn ends.
struct Committed {
    record: Arc<Record>,
    now: Timestamp,
}

/// What a save has to do, decided from the state.
pub(super) enum Plan {
    Nothing,
    Refuse,
    Create,
    Write,
    Rotate,
    Touch,
}

/// The pending changes, taken out of the state while a save runs.
struct Pending {
    /// The handle's key and record as the save began (taken under the same
    /// lock as the changes).
    key: Option<SessionKey>,
    loaded: Option<Arc<Record>>,
    overlay: Overlay,
    updates: Vec<Update>,
    principal: PrincipalChange,
    cycle: bool,
}

impl Session {
    pub(super) fn plan(state: &State) -> Plan {
        if !state.loaded || state.ended {
            return Plan::Nothing;
        }
        if state.degraded {
            return if state.is_dirty() {
                Plan::Refuse
            } else {
                Plan::Nothing
            };
        }
        let Some(record) = &state.record else {
            return if state.is_dirty() {
                Plan::Create
            } else {
                Plan::Nothing
            };
        };
        let principal = state::principal_change(&state.principal, record.principal.as_deref());
        if state.cycle || principal != PrincipalChange::Keep {
            Plan::Rotate
        } else if !state.overlay.is_empty() {
            Plan::Write
        } else {
            Plan::Touch
        }
    }

    fn take_pending(state: &mut State) -> Pending {
        Pending {
            key: state.key(),
            loaded: state.record.clone(),
            overlay: std::mem::take(&mut state.overlay),
            updates: std::mem::take(&mut state.updates),
            principal: std::mem::take(&mut state.principal),
            cycle: std::mem::take(&mut state.cycle),
        }
    }

    /// Puts back what a failed save took, ahead of anything a clone of the
    /// handle added meanwhile.
    fn restore(state: &mut State, pending: Pending) {
        let later = (
            std::mem::take(&mut state.overlay),
            std::mem::take(&mut state.updates),
        );
        let (overlay, updates) = state::merge(
            (pending.overlay, pending.updates),
            later,
            state.record.as_deref(),
        );
        state.overlay = overlay;
        state.updates = updates;
        if state.principal == PrincipalChange::Keep {
            state.principal = pending.principal;
        }
        state.cycle |= pending.cycle;
    }

    /// `record` is stored (under `id`, if it moved) by a save that read
    /// the clock at `now`: the handle shows it, with whatever a clone of
    /// the handle changed meanwhile on top, and the client is told the ID
    /// again when `resend`.
    fn commit(
        &self,
        record: Arc<Record>,
        moved_to: Option<(SessionId, SessionKey)>,
        resend: bool,
        now: Timestamp,
    ) {
        Self::commit_locked(&mut self.lock(), record, moved_to, resend, now);
    }

    /// [`commit`](Self::commit), under a lock the caller holds.
    fn commit_locked(
        state: &mut State,
        record: Arc<Record>,
        moved_to: Option<(SessionId, SessionKey)>,
        resend: bool,
        now: Timestamp,
    ) {
        state.as_of = now;
        if let Some((id, key)) = moved_to {
            state.set_id(id, key);
        }
        if !state.updates.is_empty() {
            let overlay =
                state::replay(&state.overlay, &state.updates, Some(&record)).unwrap_or_default();
            state.overlay = overlay;
        }
        state.record = Some(record);
        state.resend |= resend;
    }

    fn gone(&self) -> SessionError {
        self.lock().end();
        SessionError::Gone
    }

    /// What a save has to do, and the changes it takes (under the lock
    /// that also took the handle's turn at the store).
    fn plan_and_take(state: &mut State) -> (Plan, Option<Pending>) {
        let plan = Self::plan(state);
        let pending = match plan {
            Plan::Create | Plan::Write | Plan::Rotate => Some(Self::take_pending(state)),
            _ => None,
        };
        (plan, pending)
    }

    pub(crate) async fn save_pending(&self) -> Result<(), SessionError> {
        self.save_then(false, |_| ()).await.result
    }

    /// Saves what is pending and, under the lock that ends the save (the
    /// one that shows what was stored and ends the turn at the store),
    /// runs `end` on the state. At the end of a request (`request_end`),
    /// a handler's own failed save means nothing is saved again.
    pub(crate) async fn save_then<T>(
        &self,
        request_end: bool,
        end: impl FnOnce(&mut State) -> T,
    ) -> Saved<T> {
        let plan_and_take = |state: &mut State| {
            if request_end && state.own_save_failed {
                (Plan::Nothing, None)
            } else {
                Self::plan_and_take(state)
            }
        };
        // The turn at the store and the plan under one lock.
        let claimed = {
            let mut state = self.lock();
            let free = !std::mem::replace(&mut state.io_busy, true);
            free.then(|| plan_and_take(&mut state))
        };
        let (turn, (plan, pending)) = match claimed {
            Some(planned) => (IoTurn(self), planned),
            None => {
                let turn = Box::pin(self.wait_for_io()).await;
                let planned = plan_and_take(&mut self.lock());
                (turn, planned)
            }
        };
        let changes = !matches!(plan, Plan::Nothing | Plan::Touch);
        let result = match (plan, &pending) {
            (Plan::Refuse, _) => Err(SessionError::Store(StoreError::Unavailable(
                "the session store was unavailable when this request loaded the session; its changes were not saved".into(),
            ))),
            (Plan::Touch, _) => self.maybe_touch().await.map(|()| None),
            // Creating and logging in are once per session: boxed, so the
            // future every request's save builds stays small.
            (Plan::Create, Some(pending)) => Box::pin(self.create(pending)).await.map(|()| None),
            (Plan::Rotate, Some(pending)) => Box::pin(self.rotate(pending)).await.map(|()| None),
            (Plan::Write, Some(pending)) => self.write(pending).await,
            _ => Ok(None),
        };
        // What the save did, the end of the turn and `end`, under one lock.
        let mut state = self.lock();
        let result = match result {
            Ok(Some(saved)) => {
                let Committed { record, now } = saved;
                Self::commit_locked(&mut state, record, None, true, now);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => {
                if let Some(pending) = pending
                    && !state.ended
                {
                    Self::restore(&mut state, pending);
                }
                Err(error)
            }
        };
        turn.release(&mut state);
        Saved {
            changes,
            result,
            then: end(&mut state),
        }
    }

    /// A new record with `overlay` applied over `base`'s data, created now.
    fn fresh_record(
        &self,
        base: Option<&Record>,
        overlay: &Overlay,
        principal: Option<String>,
    ) -> Result<Record, SessionError> {
        let sessions = self.sessions();
        let now = sessions.now();
        let mut record = Record::new(now, sessions.shared.config.expiry.initial(now));
        state::materialize(base, overlay, &mut record);
        record.principal = principal;
        sessions
            .shared
            .config
            .limits
            .check_record(record.data.len(), record.size())?;
        Ok(record)
    }

    /// Stores `record` under a fresh ID, placed with its principal when
    /// the store asks. Never adopts an ID the client chose.
    async fn create_fresh(&self, record: &Record) -> Result<(SessionId, SessionKey), SessionError> {
        let sessions = self.sessions();
        // A session with a principal goes where its store files that
        // principal's data (SessionStore::key_prefix).
        let prefix = record
            .principal
            .as_deref()
            .and_then(|p| sessions.shared.store.key_prefix(p));
        for _ in 0..CREATE_ATTEMPTS {
            let id = match &prefix {
                Some(prefix) => SessionId::generate_with_key_prefix(prefix),
                None => SessionId::generate(),
            };
            let key = id.key();
            match calls::create(sessions, &key, record, sessions.now()).await {
                Ok(CreateOutcome::Created) => return Ok((id, key)),
                Ok(_) => tracing::warn!("session ID collision on create; drawing another"),
                Err(error) => {
                    // It may have been stored: nobody will ever know the ID.
                    discard_later(sessions, key);
                    return Err(error.into());
                }
            }
        }
        Err(SessionError::RetriesExhausted {
            attempts: CREATE_ATTEMPTS,
        })
    }

    async fn create(&self, pending: &Pending) -> Result<(), SessionError> {
        let principal = match &pending.principal {
            PrincipalChange::Set(p) => Some(p.clone()),
            _ => None,
        };
        let record = self.fresh_record(None, &pending.overlay, principal)?;
        let moved_to = self.create_fresh(&record).await?;
        telemetry::created();
        telemetry::record_written("create", record.size());
        let created_at = record.created_at;
        self.commit(Arc::new(record), Some(moved_to), true, created_at);
        Ok(())
    }

    /// One conditional save, replayed on the fresh record after conflicts.
    async fn write(&self, pending: &Pending) -> Result<Option<Committed>, SessionError> {
        let mut conflicts = 0;
        let result = self.write_counted(pending, &mut conflicts).await;
        let exhausted = matches!(result, Err(SessionError::RetriesExhausted { .. }));
        telemetry::save_finished("write", conflicts, exhausted);
        result
    }

    async fn write_counted(
        &self,
        pending: &Pending,
        conflicts: &mut u32,
    ) -> Result<Option<Committed>, SessionError> {
        let sessions = self.sessions();
        let config = &sessions.shared.config;
        let (Some(key), Some(mut base)) = (pending.key.clone(), pending.loaded.clone()) else {
            return Ok(None);
        };
        // The overlay was computed over the record this handle loaded; any
        // other base needs a replay.
        let loaded_version = base.version;
        let mut turn = sessions.shared.turns.enter(&key).await;
        if let Some(latest) = turn.latest()
            && latest.version > base.version
        {
            // A newer record than this handle loaded: the same check as a
            // conflict with it would make.
            if config.write_policy == WritePolicy::Reject
                && let Some(key) = contested(&pending.overlay, &base, latest)
            {
                let latest = Arc::clone(latest);
                drop(turn);
                self.lock().reset_to(Some(latest));
                return Err(SessionError::Conflict { key });
            }
            base = Arc::clone(latest);
        }
        for attempt in 0..config.max_attempts {
            if attempt > 1 {
                // The first replay goes at once (the fresh record came with
                // the conflict); after that, writers that keep colliding on
                // one session spread out instead of colliding again.
                // Boxed: a timer is large, and only colliding writers wait.
                Box::pin(tokio::time::sleep(backoff(attempt))).await;
            }
            let replayed;
            let overlay = if base.version == loaded_version && attempt == 0 {
                &pending.overlay
            } else {
                replayed = state::replay(&pending.overlay, &pending.updates, Some(&base))?;
                &replayed
            };
            let now = sessions.now();
            let mut change = Change::new(base.version, config.expiry.renewed(&base, now));
            let (keys, size) = state::delta(&base, overlay, &mut change);
            if change.set.is_empty() && change.remove.is_empty() {
                // The operations cancel out: nothing to write.
                drop(turn);
                self.commit(base, None, false, now);
                return Box::pin(self.maybe_touch()).await.map(|()| None);
            }
            config.limits.check_record(keys, size)?;
            // Built before the save, so a store in this process can keep
            // it as it is instead of applying the change again.
            let mut next = Arc::new(change.apply_to(&base));
            match calls::save_applied(sessions, &key, &change, &base, &next, now).await? {
                SaveOutcome::Saved(version) => {
                    if next.version != version {
                        Arc::make_mut(&mut next).version = version;
                    }
                    telemetry::record_written("write", size);
                    turn.hand_over(Arc::clone(&next));
                    return Ok(Some(Committed { record: next, now }));
                }
                SaveOutcome::Conflict(fresh) if fresh.retired_by().is_some() => {
                    // A login moved the session away: this ID has ended.
                    return Err(self.gone());
                }
                SaveOutcome::Conflict(fresh) => {
                    tracing::debug!(met = %fresh.version, "session save conflicted; replaying on the fresh record");
                    *conflicts += 1;
                    telemetry::conflict("write");
                    if config.write_policy == WritePolicy::Reject
                        && let Some(key) = contested(&pending.overlay, &base, &fresh)
                    {
                        self.lock().reset_to(Some(fresh));
                        return Err(SessionError::Conflict { key });
                    }
                    base = fresh;
                }
                _ => return Err(self.gone()),
            }
        }
        Err(SessionError::RetriesExhausted {
            attempts: config.max_attempts,
        })
    }

    /// Moves the session to a new ID with the request's changes and
    /// principal (see the module docs).
    async fn rotate(&self, pending: &Pending) -> Result<(), SessionError> {
        let mut conflicts = 0;
        let result = self.rotate_counted(pending, &mut conflicts).await;
        let exhausted = matches!(result, Err(SessionError::RetriesExhausted { .. }));
        telemetry::save_finished("rotate", conflicts, exhausted);
        result
    }

    async fn rotate_counted(
        &self,
        pending: &Pending,
        conflicts: &mut u32,
    ) -> Result<(), SessionError> {
        let sessions = self.sessions();
        let config = &sessions.shared.config;
        let (Some(old_key), Some(mut base)) = (pending.key.clone(), pending.loaded.clone()) else {
            return Ok(());
        };
        // No turn in the local queue: a concurrent local write that reaches
        // the old ID before the decisive delete is replayed into the login;
        // one that comes after it finds the session gone.
        let loaded_version = base.version;
        for attempt in 0..config.max_attempts {
            if attempt > 1 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let replayed;
            let overlay = if base.version == loaded_version && attempt == 0 {
                &pending.overlay
            } else {
                replayed = state::replay(&pending.overlay, &pending.updates, Some(&base))?;
                &replayed
            };
            let principal = match &pending.principal {
                PrincipalChange::Set(p) => Some(p.clone()),
                PrincipalChange::Clear => None,
                _ => base.principal.clone(),
            };
            let record = self.fresh_record(Some(&base), overlay, principal)?;
            let (id, key) = self.create_fresh(&record).await?;
            match self.retire(&old_key, &base, &key).await {
                Ok(Retired::Now(retired)) => {
                    telemetry::rotated();
                    telemetry::record_written("rotate", record.size());
                    let created_at = record.created_at;
                    self.commit(Arc::new(record), Some((id, key)), true, created_at);
                    // The retired record is inert: deleting it only saves
                    // space, and a failure leaves it to its deadline.
                    if let Err(error) = calls::delete_if_version(sessions, &old_key, retired).await
                    {
                        tracing::debug!(%error, "could not delete a retired session record");
                    }
                    return Ok(());
                }
                Ok(Retired::Moved(fresh)) => {
                    discard(sessions, key).await;
                    *conflicts += 1;
                    telemetry::conflict("rotate");
                    if config.write_policy == WritePolicy::Reject
                        && let Some(key) = contested(&pending.overlay, &base, &fresh)
                    {
                        self.lock().reset_to(Some(fresh));
                        return Err(SessionError::Conflict { key });
                    }
                    base = fresh;
                }
                Ok(Retired::Ended) => {
                    discard(sessions, key).await;
                    return Err(self.gone());
                }
                Err(error) => {
                    discard_later(sessions, key);
                    return Err(error.into());
                }
            }
        }
        Err(SessionError::RetriesExhausted {
            attempts: config.max_attempts,
        })
    }

    /// The decisive step of a login: a conditional save that retires the
    /// old ID at the version `base` was read at, marking it with the new
    /// key. A lost answer is settled by reading the old record again: the
    /// mark says whether this login retired it, and an old ID found gone
    /// was ended by a logout, a revoke or its deadline, never by this login
    /// (which deletes it only after it knows).
    async fn retire(
        &self,
        old_key: &SessionKey,
        base: &Record,
        new_key: &SessionKey,
    ) -> Result<Retired, StoreError> {
        let sessions = self.sessions();
        let token = new_key.as_str().as_bytes();
        let mut change = Change::new(base.version, base.deadlines);
        change.set.insert(RETIRED_KEY.to_owned(), token.to_vec());
        change.remove = base.data.keys().cloned().collect();
        if base.principal.is_some() {
            change.principal = PrincipalChange::Clear;
        }
        let now = sessions.now();
        let answer = match calls::save(sessions, old_key, &change, now).await {
            Ok(answer) => answer,
            Err(error) => match calls::load_any(sessions, old_key).await {
                Ok(Some(current)) if current.retired_by() == Some(token) => {
                    tracing::info!(%error, "login's decisive step timed out but took effect");
                    return Ok(Retired::Now(current.version));
                }
                Ok(Some(current)) => SaveOutcome::Conflict(current),
                Ok(None) => SaveOutcome::Gone,
                Err(_) => return Err(error),
            },
        };
        Ok(match answer {
            SaveOutcome::Saved(version) => Retired::Now(version),
            SaveOutcome::Conflict(fresh) if fresh.retired_by().is_none() => Retired::Moved(fresh),
            // Retired by another login, deleted, or expired.
            _ => Retired::Ended,
        })
    }

    /// Extends the idle deadline of a read-only request's session once the
    /// touch threshold has passed.
    async fn maybe_touch(&self) -> Result<(), SessionError> {
        let sessions = self.sessions();
        let (key, deadline, now) = {
            let mut state = self.lock();
            let Some(record) = &state.record else {
                return Ok(());
            };
            let now = sessions.now();
            let Some(deadline) = sessions.shared.config.expiry.touch_due(record, now) else {
                if sessions.shared.config.expiry.idle().is_some() {
                    telemetry::touch(false);
                }
                return Ok(());
            };
            (state.key(), deadline, now)
        };
        let Some(key) = key else {
            return Ok(());
        };
        telemetry::touch(true);
        match calls::touch(sessions, &key, deadline).await? {
            TouchOutcome::Touched => {
                let mut state = self.lock();
                if let Some(record) = state.record.as_mut() {
                    let deadlines = record.deadlines.extended_to(Some(deadline));
                    Arc::make_mut(record).deadlines = deadlines;
                }
                state.resend = true;
                state.as_of = now;
                Ok(())
            }
            _ => Err(self.gone()),
        }
    }
}

/// What the decisive step of a login found.
enum Retired {
    /// The old ID is retired, at this version: the login happened.
    Now(Version),
    /// A concurrent request wrote the old ID first: replay on this record.
    Moved(Arc<Record>),
    /// The session ended before the login could retire it.
    Ended,
}

/// The first key this request set (not only updated) whose stored value
/// another request changed between `base` and `fresh`.
fn contested(overlay: &Overlay, base: &Record, fresh: &Record) -> Option<String> {
    overlay.iter().find_map(|(key, entry)| {
        (entry.set && base.data.get(key) != fresh.data.get(key)).then(|| key.clone())
    })
}

/// Deletes a record nobody will use (a login that lost a race), now; if
/// the store fails, keeps trying in the background.
async fn discard(sessions: &Sessions, key: SessionKey) {
    if let Err(error) = calls::delete(sessions, &key).await {
        tracing::warn!(%error, "could not delete an unused session record; retrying in the background");
        discard_later(sessions, key);
    }
}

/// Deletes a record nobody will use in the background (the store just
/// failed: a create whose answer never came), retrying with backoff.
fn discard_later(sessions: &Sessions, key: SessionKey) {
    let sessions = sessions.clone();
    let work = async move {
        for attempt in 0..8u32 {
            match calls::delete(&sessions, &key).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, "could not delete an unused session record; retrying");
                    tokio::time::sleep(Duration::from_millis(250) * (1 << attempt.min(6))).await;
                }
            }
        }
        tracing::error!("gave up deleting an unused session record; it ends at its deadline");
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(work);
        }
        Err(_) => tracing::error!("no tokio runtime: an unused session record is left to expire"),
    }
}
