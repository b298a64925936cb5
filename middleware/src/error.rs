//! Errors and the responses they become.
//!
//! Session errors turn into short bodies that say what kind of failure it
//! was and nothing more: no store address, no session ID, no backend
//! message. The details go to the log.

use http::{HeaderValue, Response, StatusCode, header};
use offstate_core::SessionError;

/// A layer configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The signing key is shorter than required.
    #[error("signing key has {len} bytes; at least {min} are required")]
    KeyTooShort {
        /// Bytes given.
        len: usize,
        /// Bytes required.
        min: usize,
    },
    /// The HMAC implementation refused the key.
    #[error("signing key refused by HMAC")]
    InvalidKey,
}

/// A session error as an HTTP response: handlers return
/// `Result<_, SessionFailure>` and use `?` on session calls.
///
/// The status comes from [`SessionError::status_code`] (503 when the store
/// is down, 409 on unresolved conflicts, 413 over the size limits, 401 when
/// the session ended meanwhile, 500 otherwise); the body is one short
/// sentence that leaks nothing.
///
/// ```
/// use offstate_core::{SessionError, StoreError};
/// use offstate_tower::SessionFailure;
///
/// let failure = SessionFailure::from(SessionError::from(StoreError::unavailable("connection refused")));
/// assert_eq!(failure.status().as_u16(), 503);
/// assert_eq!(failure.message(), "session store unavailable");
/// let response: http::Response<String> = failure.to_response();
/// assert!(!response.body().contains("refused"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SessionFailure(#[from] SessionError);

impl SessionFailure {
    /// The session error.
    #[must_use]
    pub fn error(&self) -> &SessionError {
        &self.0
    }

    /// The session error, taken out.
    #[must_use]
    pub fn into_inner(self) -> SessionError {
        self.0
    }

    /// The response status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The short, non-leaking response body.
    #[must_use]
    pub fn message(&self) -> &'static str {
        message_for(self.status())
    }

    /// The response, for any body type that can be made from a string
    /// (plain tower and hyper services). Logs nothing.
    #[must_use]
    pub fn to_response<B: From<&'static str>>(&self) -> Response<B> {
        short_response(self.status(), self.message())
    }

    /// Logs the error with its sources, at warn for outages and client-side
    /// causes and at error for the rest. Never logs a session ID.
    pub(crate) fn log(&self, context: &'static str) {
        let status = self.status().as_u16();
        let error: &(dyn std::error::Error + 'static) = &self.0;
        if self.0.is_outage() || status < 500 {
            tracing::warn!(status, error, "{context}");
        } else {
            tracing::error!(status, error, "{context}");
        }
    }
}

fn message_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        503 => "session store unavailable",
        409 => "session changed concurrently; please retry",
        413 => "session data too large",
        401 => "session ended",
        400 => "session has no user",
        _ => "session error",
    }
}

/// A plain-text response with a short body.
pub(crate) fn short_response<B: From<&'static str>>(
    status: StatusCode,
    body: &'static str,
) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionFailure {
    fn into_response(self) -> axum_core::response::Response {
        self.log("session operation failed");
        self.to_response()
    }
}
