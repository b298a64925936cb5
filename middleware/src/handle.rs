//! The handle handlers get: the core [`Session`](offstate_core::Session),
//! plus a note of whether the handler's own save failed.
//!
//! A handler that calls `save` itself takes control of the outcome. If that
//! save fails, its changes are still pending in the core handle; without
//! this note the middleware would try again after the handler and replace
//! the handler's chosen response with its own error.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Extensions;
use offstate_core::SessionError;

/// The request's session. Dereferences to [`offstate_core::Session`], so
/// every method of the core handle is there; [`Session::save`] adds the
/// handler-in-control rule.
///
/// In axum, take it as a handler argument (feature `axum`); elsewhere, use
/// [`Session::from_extensions`].
///
/// ```
/// use offstate_tower::{Session, SessionFailure};
///
/// async fn visits(session: Session) -> Result<String, SessionFailure> {
///     let n = session.update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1)).await?;
///     Ok(format!("visit number {}", n.unwrap_or(0)))
/// }
/// # let _ = visits;
/// ```
#[derive(Debug, Clone)]
pub struct Session {
    inner: offstate_core::Session,
    /// Set when the handler's own latest save failed.
    own_save_failed: Arc<AtomicBool>,
}

impl Session {
    pub(crate) fn new(inner: offstate_core::Session) -> Self {
        Self {
            inner,
            own_save_failed: Arc::default(),
        }
    }

    /// The session the middleware put in these request extensions (plain
    /// tower and hyper services; axum handlers take it as an argument).
    #[must_use]
    pub fn from_extensions(extensions: &Extensions) -> Option<Self> {
        extensions.get::<Self>().cloned()
    }

    /// Saves now, instead of leaving it to the middleware, so the handler
    /// can answer a failure its own way. If this save fails, the middleware
    /// does not try again after the handler, and the handler's response
    /// stands; if it succeeds, only later changes are left to save.
    ///
    /// # Errors
    ///
    /// As [`offstate_core::Session::save`].
    pub async fn save(&self) -> Result<(), SessionError> {
        let result = self.inner.save().await;
        self.own_save_failed
            .store(result.is_err(), Ordering::Release);
        result
    }

    /// Whether the handler's own latest save failed.
    pub(crate) fn own_save_failed(&self) -> bool {
        self.own_save_failed.load(Ordering::Acquire)
    }

    /// The core handle.
    #[must_use]
    pub fn into_inner(self) -> offstate_core::Session {
        self.inner
    }
}

impl Deref for Session {
    type Target = offstate_core::Session;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}
