//! `SessionService`: the per-request work.
//!
//! Before the handler: read the ID (refusing conflicting or oversized
//! input), and put a lazy handle in the request extensions. Nothing touches
//! the store yet. After the handler: `save` (which does nothing for an
//! untouched session, touches a read-only one past the threshold, and
//! writes a changed one once), then tell the client what changed.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use offstate_core::{ClientUpdate, Sessions};
use tower_service::Service;
use tracing::Instrument as _;

use crate::error::{SessionFailure, short_response};
use crate::future::ResponseFuture;
use crate::handle::Session;
use crate::layer::{SessionLayer, Shared};

/// The middleware service made by [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> SessionService<S> {
    /// Wraps `inner` with default settings (see [`SessionLayer::new`]); use
    /// the layer to configure.
    #[must_use]
    pub fn new(inner: S, sessions: Sessions) -> Self {
        tower_layer::Layer::layer(&SessionLayer::new(sessions), inner)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, taken out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone has not been driven to readiness; the original has.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let span = tracing::debug_span!(
            "offstate.request",
            client_update = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        ResponseFuture::new(
            async move {
                let id = match shared.carrier.read(request.headers()) {
                    Ok(id) => id,
                    Err(refusal) => {
                        tracing::warn!(reason = refusal.message(), "refused session input");
                        let mut response = short_response(refusal.status(), refusal.message());
                        tell_client(&shared, &mut response, &ClientUpdate::Remove);
                        return Ok(response);
                    }
                };
                let session = Session::new(shared.sessions.open(id));
                request.extensions_mut().insert(session.clone());
                request
                    .extensions_mut()
                    .insert(offstate_core::Session::clone(&session));
                let mut response = inner.call(request).await?;
                finish(&shared, &session, &mut response).await;
                tracing::Span::current().record("status", response.status().as_u16());
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Saves what the handler left unsaved and tells the client.
async fn finish<B: From<&'static str>>(
    shared: &Shared,
    session: &Session,
    response: &mut Response<B>,
) {
    let dirty = session.is_dirty().await;
    if session.own_save_failed() {
        // The handler saved itself, saw the failure and answered its way.
        tracing::debug!("the handler's own session save failed; leaving its response alone");
    } else if let Err(error) = session.save().await {
        let failure = SessionFailure::from(error);
        if !dirty {
            // Only a touch (idle extension) failed: the handler's answer is
            // still true; the next request will touch again.
            tracing::warn!(
                error = failure.error() as &(dyn std::error::Error + 'static),
                "extending the session's idle deadline failed; the response stands"
            );
        } else if session.is_degraded().await {
            // Fail open: the handler saw a stand-in; its changes are dropped
            // so the real session is never overwritten, and the page stands.
            tracing::warn!(
                error = failure.error() as &(dyn std::error::Error + 'static),
                "session store was unavailable; this request's session changes were not saved (fail open)"
            );
        } else {
            failure.log("saving the session after the handler failed; replacing the response");
            *response = failure.to_response();
        }
    }
    let update = session.take_client_update().await;
    tell_client(shared, response, &update);
}

fn tell_client<B: From<&'static str>>(
    shared: &Shared,
    response: &mut Response<B>,
    update: &ClientUpdate,
) {
    let label = match update {
        ClientUpdate::Set { .. } => "set",
        ClientUpdate::Remove => "remove",
        _ => "unchanged",
    };
    tracing::Span::current().record("client_update", label);
    // Max-Age is computed on the clock the deadlines were set with.
    let now = shared.sessions.clock().now();
    if shared
        .carrier
        .write(response.headers_mut(), update, now)
        .is_err()
    {
        tracing::error!(
            "the session cookie or header could not be built; check the cookie name, domain and path"
        );
        *response = short_response(StatusCode::INTERNAL_SERVER_ERROR, "session error");
    }
}
