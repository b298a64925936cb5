//! The protocol between a [`Session`] and the HTTP middleware that carries
//! its ID, for whoever writes such a middleware (offstate-tower is built on
//! it; so could one for another framework):
//!
//! 1. [`open`] a handle for the ID the request presented (or none). Nothing
//!    is loaded until the handler uses it.
//! 2. Give the handle to the handler.
//! 3. After the handler, [`finish`]: it saves what the handler left
//!    unsaved, decides what a failure means for the response
//!    ([`Disposition`]), and says what to tell the client
//!    ([`ClientUpdate`]). Most requests have nothing to save:
//!    [`finish_now`] ends those without awaiting (no future to build or
//!    box) and answers `None` for the rest, which then await
//!    [`finish_saving`] (`finish` without deciding again).
//!
//! [`status`] and [`message`] give the HTTP status and the short,
//! non-leaking body for a [`SessionError`].

use crate::error::{SessionError, StoreError};
use crate::id::SessionId;
use crate::record::Timestamp;
use crate::session::{Session, Sessions};

/// A handle for the session the request presented: `None` or one ID
/// (`Some(id)`), or several different ones (the same cookie name set by
/// different domains or paths). Of several, the load keeps the one that is
/// live; if more than one is, the request gets no session at all, since
/// one of them may have been planted by a sibling subdomain.
#[must_use]
pub fn open(sessions: &Sessions, ids: impl IntoIterator<Item = SessionId>) -> Session {
    Session::open_presented(sessions.clone(), ids)
}

/// What the client must be told after a request.
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
        /// When the save or touch that decided `expires_at` read the
        /// clock: a `Max-Age` is `expires_at` less this, with no clock
        /// read of its own.
        as_of: Timestamp,
    },
    /// The session ended: tell the client to forget its ID.
    Remove,
}

/// What a failed save at the end of a request means for its response.
#[derive(Debug)]
#[non_exhaustive]
pub enum Disposition {
    /// Nothing failed.
    Done,
    /// The handler's changes were not saved: replace its response with
    /// this error's ([`status`], [`message`]), so the client does not
    /// believe them stored.
    Replace(SessionError),
    /// Something failed that leaves the handler's response true: log it.
    Keep {
        /// What failed.
        error: SessionError,
        /// Why the response stands.
        reason: &'static str,
    },
}

/// The end of a request: what to do with the response, and what to tell
/// the client.
#[derive(Debug)]
#[non_exhaustive]
pub struct Finished {
    /// What a save failure means for the response.
    pub disposition: Disposition,
    /// What to tell the client.
    pub update: ClientUpdate,
}

/// [`finish`] without awaiting, for the usual request that has nothing to
/// save (no change, no touch due, or the handler's own save failed): what
/// to tell the client, or `None` when a save is due; then await
/// [`finish_saving`].
#[must_use]
pub fn finish_now(session: &Session) -> Option<Finished> {
    session.finish_unsaved().map(|update| Finished {
        disposition: Disposition::Done,
        update,
    })
}

/// Saves what the handler left unsaved (nothing for an untouched session;
/// a touch past the threshold for a read-only one; one conditional write
/// for a changed one) and says what the response and the client need.
///
/// If the handler called [`Session::save`] itself and it failed, nothing is
/// saved again and the handler's response stands: the handler chose it.
pub async fn finish(session: &Session) -> Finished {
    if session.save_needed().is_none() {
        return Finished {
            disposition: Disposition::Done,
            update: session.take_client_update(),
        };
    }
    // Boxed: most requests save nothing, and their future stays small.
    Box::pin(finish_saving(session)).await
}

/// [`finish`] for a request that [`finish_now`] just found has something
/// to save: the save, without deciding again whether there is one.
pub async fn finish_saving(session: &Session) -> Finished {
    // What to tell the client is taken under the lock that ends the save.
    let saved = session
        .save_then(true, |state| (state.take_client_update(), state.degraded))
        .await;
    let (update, degraded) = saved.then;
    let disposition = match saved.result {
        Ok(()) => Disposition::Done,
        Err(error) if !saved.changes => Disposition::Keep {
            error,
            reason: "only extending the idle deadline failed; the next request extends it",
        },
        Err(error) if degraded => Disposition::Keep {
            error,
            reason: "the store was down when the session loaded (fail open); this request's changes were dropped so the real session is never overwritten",
        },
        Err(error) => Disposition::Replace(error),
    };
    Finished {
        disposition,
        update,
    }
}

/// The HTTP status that describes `error` best: 503 when the store is down
/// or overloaded, 409 for an unresolved conflict, 413 over the size limits,
/// 401 when the session ended meanwhile, 400 with no principal to revoke,
/// 500 otherwise.
#[must_use]
pub fn status(error: &SessionError) -> u16 {
    match error {
        SessionError::Store(StoreError::TooLarge { .. }) | SessionError::Limit(_) => 413,
        SessionError::Store(e) if e.is_outage() => 503,
        SessionError::Conflict { .. } | SessionError::RetriesExhausted { .. } => 409,
        SessionError::Gone => 401,
        SessionError::NoPrincipal => 400,
        _ => 500,
    }
}

/// A short response body for `error` that says what kind of failure it was
/// and nothing more: no store address, no session ID, no backend message.
#[must_use]
pub fn message(error: &SessionError) -> &'static str {
    match status(error) {
        503 => "session store unavailable",
        409 => "session changed concurrently; please retry",
        413 => "session data too large",
        401 => "session ended",
        400 => "session has no user",
        _ => "session error",
    }
}

/// Whether a span at `DEBUG` could be wanted: the level is compiled in and
/// some subscriber listens at it (`tracing`'s own first check in `span!`).
/// A middleware that makes a request span checks this first and otherwise
/// uses `Span::none()`: with `tracing`'s `log` feature on (any dependency
/// can turn it on), even a disabled span asks the `log` crate about itself
/// when made and dropped.
///
/// ```
/// // No subscriber in this program: no span is worth making.
/// assert!(!offstate_core::middleware::debug_traced());
/// ```
#[must_use]
#[inline]
pub fn debug_traced() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    LevelFilter::DEBUG <= STATIC_MAX_LEVEL && LevelFilter::DEBUG <= LevelFilter::current()
}
