//! The service's response future: [`Serve`], what is left of a request
//! after the handler was called, held in the named [`ResponseFuture`]
//! (generic over the inner service's future, so nothing is boxed for it).
//!
//! `Serve` is written by hand, not as an `async` block: a block would keep
//! the handler's future twice (as its captured value and as the value it
//! awaits). A request with nothing to save ends without another future;
//! only a save builds one (boxed, since most requests have none).

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

pin_project! {
    /// The response future of [`SessionService`](crate::SessionService)
    /// over an inner service whose future is `F`, answering with a body
    /// of type `B`.
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: Inner<F, B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F, B> {
        // Refused before the handler (an oversized cookie): the answer.
        Answered { response: Option<Response<B>> },
        Serving { #[pin] serve: Serve<F, B> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn answered(response: Response<B>) -> Self {
        Self {
            inner: Inner::Answered {
                response: Some(response),
            },
        }
    }

    pub(crate) fn serving(serve: Serve<F, B>) -> Self {
        Self {
            inner: Inner::Serving { serve },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it answered: a caller's bug; it waits.
                None => Poll::Pending,
            },
            InnerProj::Serving { serve } => serve.poll(cx),
        }
    }
}

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
