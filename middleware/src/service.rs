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
use offstate_core::Sessions;
use offstate_core::middleware::{self, ClientUpdate, Disposition, Finished};
use tower_service::Service;
use tracing::Span;

use crate::error::{error_response, log, short_response};
use crate::future::{ResponseFuture, Serve};
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
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone has not been driven to readiness; the original has.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        // No span at all below DEBUG (see `debug_traced`).
        let span = if middleware::debug_traced() {
            tracing::debug_span!(
                "offstate.request",
                client_update = tracing::field::Empty,
                status = tracing::field::Empty,
            )
        } else {
            Span::none()
        };
        // Everything before the handler is synchronous, so it runs here:
        // the future holds only what the end of the request needs, not the
        // request. A disabled span is not entered.
        let entered = (!span.is_disabled()).then(|| span.enter());
        let ids = match shared.carrier.read(request.headers()) {
            Ok(ids) => ids,
            Err(refusal) => {
                tracing::warn!(reason = refusal.message(), "refused session input");
                let mut response = short_response(refusal.status(), refusal.message());
                let told = tell_client(&shared, &mut response, &ClientUpdate::Remove);
                record(&span, told, response.status());
                drop(entered);
                return ResponseFuture::answered(response);
            }
        };
        let session = middleware::open(&shared.sessions, ids);
        request.extensions_mut().insert(session.clone());
        let handled = inner.call(request);
        drop(entered);
        // No subscriber wants the span: none is entered and left on every
        // poll, and no field is recorded (or logged, when `tracing`'s `log`
        // feature is on).
        let span = if span.is_disabled() {
            Span::none()
        } else {
            span
        };
        ResponseFuture::serving(Serve::new(shared, session, handled, span))
    }
}

/// Fills the request span's fields, when it is traced.
fn record(span: &Span, client_update: &'static str, status: StatusCode) {
    if !span.is_disabled() {
        span.record("client_update", client_update);
        span.record("status", status.as_u16());
    }
}

/// Applies what the end of the request found to the response, tells the
/// client, and fills the request span's fields.
pub(crate) fn conclude<B: From<&'static str>>(
    shared: &Shared,
    span: &Span,
    finished: &Finished,
    response: &mut Response<B>,
) {
    match &finished.disposition {
        Disposition::Replace(error) => {
            log(
                error,
                "saving the session after the handler failed; replacing the response",
            );
            *response = error_response(error);
        }
        Disposition::Keep { error, reason } => {
            let error: &(dyn std::error::Error + 'static) = error;
            tracing::warn!(error, "{reason}");
        }
        _ => {}
    }
    let told = tell_client(shared, response, &finished.update);
    record(span, told, response.status());
}

/// Writes the cookie or header `update` asks for; returns `set`,
/// `remove` or `unchanged`, for the request span.
fn tell_client<B: From<&'static str>>(
    shared: &Shared,
    response: &mut Response<B>,
    update: &ClientUpdate,
) -> &'static str {
    let label = match update {
        ClientUpdate::Set { .. } => "set",
        ClientUpdate::Remove => "remove",
        _ => "unchanged",
    };
    if shared
        .carrier
        .write(response.headers_mut(), update)
        .is_err()
    {
        tracing::error!(
            "the session cookie or header could not be built; check the cookie name, domain and path"
        );
        *response = short_response(StatusCode::INTERNAL_SERVER_ERROR, "session error");
    }
    label
}
