//! The layer's configuration error, and the short responses the layer
//! answers with itself.
//!
//! Session errors become short bodies that say what kind of failure it was
//! and nothing more (see [`offstate_core::middleware::message`]): no store
//! address, no session ID, no backend message. The details go to the log.

use http::{HeaderValue, Response, StatusCode, header};
use offstate_core::SessionError;
use offstate_core::middleware::{message, status};

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

/// The response for a session error that replaces the handler's.
pub(crate) fn error_response<B: From<&'static str>>(error: &SessionError) -> Response<B> {
    let status = StatusCode::from_u16(status(error)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    short_response(status, message(error))
}

/// Logs a session error with its sources: at warn for outages and
/// client-side causes, at error for the rest. Never logs a session ID.
pub(crate) fn log(error: &SessionError, context: &'static str) {
    let code = status(error);
    let source: &(dyn std::error::Error + 'static) = error;
    if error.is_outage() || code < 500 {
        tracing::warn!(status = code, error = source, "{context}");
    } else {
        tracing::error!(status = code, error = source, "{context}");
    }
}
