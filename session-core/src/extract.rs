//! axum integration (feature `axum`): [`Session`] as a handler argument,
//! `Option<Session>` for handlers that run with or without the layer, and
//! [`SessionError`] as a response.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};

use crate::error::SessionError;
use crate::middleware;
use crate::session::Session;

/// The rejection when a handler asks for a [`Session`] and the request went
/// through no session layer: a bug in the app's wiring, answered with 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no offstate session in the request extensions. Perhaps you forgot to add SessionLayer?")]
#[non_exhaustive]
pub struct MissingSessionLayer;

fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut response = body.into_response();
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no offstate session in the request extensions. Perhaps you forgot to add SessionLayer?",
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

/// A handler returns `Result<_, SessionError>` and uses `?` on session
/// calls: the client gets [`middleware::status`] with a one-line body that
/// leaks nothing, and the error with its sources goes to the log.
impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let code = middleware::status(&self);
        let error: &(dyn std::error::Error + 'static) = &self;
        if self.is_outage() || code < 500 {
            tracing::warn!(status = code, error, "session operation failed");
        } else {
            tracing::error!(status = code, error, "session operation failed");
        }
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        plain(status, middleware::message(&self))
    }
}
