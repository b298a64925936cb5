//! The axum extractor: [`Session`] in a handler's arguments, taken from the
//! request extensions where the middleware put it. (A newtype of this crate
//! rather than the core handle, because neither axum's traits nor the core
//! handle belong here.)

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::error::short_response;
use crate::handle::Session;

/// The rejection when a handler asks for a [`Session`] and the request went
/// through no [`SessionLayer`](crate::SessionLayer): a bug in the app's
/// wiring, answered with 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no offstate session in the request extensions. Perhaps you forgot to add SessionLayer?")]
#[non_exhaustive]
pub struct MissingSessionLayer;

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        short_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no offstate session in the request extensions. Perhaps you forgot to add SessionLayer?",
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_extensions(&parts.extensions).ok_or(MissingSessionLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Self::from_extensions(&parts.extensions))
    }
}
