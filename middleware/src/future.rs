//! The service's response future: [`Serve`], what is left of a request
//! after the handler was called, boxed once per request in the named
//! [`ResponseFuture`] so the service's type can be written down.
//!
//! `Serve` is written by hand, not as an `async` block: a block would keep
//! the handler's future twice (as its captured value and as the value it
//! awaits), and the one allocation per request would pass glibc's small
//! size classes. A request with nothing to save ends without another
//! future; only a save builds one (boxed, since most requests have none).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use offstate_core::Session;
use offstate_core::middleware::{self, Finished};
use pin_project_lite::pin_project;
use tracing::Span;

use crate::layer::Shared;
use crate::service::conclude;

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send + 'static>>;

/// The future [`SessionService`](crate::SessionService) returns.
pub struct ResponseFuture<B, E> {
    inner: Boxed<B, E>,
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<B>, E>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The save at the end of a request that has one, boxed.
type Saving = Pin<Box<dyn Future<Output = Finished> + Send + 'static>>;

pin_project! {
    /// The handler's future, then the end of the request: the save (if
    /// any) and what the client is told.
    pub(crate) struct Serve<F, B> {
        #[pin]
        handled: F,
        shared: Arc<Shared>,
        session: Session,
        // The request's span, or `Span::none()` when nobody traces.
        span: Span,
        // The handler's response, held while the save runs.
        saving: Option<(Response<B>, Saving)>,
    }
}

impl<F, B> Serve<F, B> {
    pub(crate) fn new(shared: Arc<Shared>, session: Session, handled: F, span: Span) -> Self {
        Self {
            handled,
            shared,
            session,
            span,
            saving: None,
        }
    }
}

impl<F, B, E> Future for Serve<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        if this.saving.is_none() {
            let mut response = ready!(this.handled.poll(cx))?;
            if let Some(finished) = middleware::finish_now(this.session) {
                conclude(this.shared, this.span, &finished, &mut response);
                return Poll::Ready(Ok(response));
            }
            let session = this.session.clone();
            let save: Saving = Box::pin(async move { middleware::finish_saving(&session).await });
            *this.saving = Some((response, save));
        }
        let Some((_, save)) = this.saving.as_mut() else {
            return Poll::Pending;
        };
        let finished = ready!(save.as_mut().poll(cx));
        let Some((mut response, _)) = this.saving.take() else {
            return Poll::Pending;
        };
        conclude(this.shared, this.span, &finished, &mut response);
        Poll::Ready(Ok(response))
    }
}
