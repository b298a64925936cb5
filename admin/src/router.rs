//! [`AdminApi`]: the endpoints as an axum [`Router`], which exists only
//! once the app has put its own guard in front of them.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{Route, delete, get};
use axum::{Json, Router};
use offstate_core::Sessions;
use tower_layer::Layer;
use tower_service::Service;

use crate::ops::{self, AdminError};
use crate::schema::{ErrorBody, Status};

/// No guard yet: [`AdminApi::router`] does not exist in this state.
#[derive(Debug, Clone, Copy)]
pub struct Unguarded;

/// Guarded by the app's layer `L`.
#[derive(Debug, Clone)]
pub struct Guarded<L>(L);

/// The admin API over one [`Sessions`]. Build it, give it the app's
/// authentication with [`guarded_by`](AdminApi::guarded_by), and nest its
/// [`router`](AdminApi::router) where the app wants it:
///
/// ```
/// use axum::{Router, extract::Request, http::StatusCode, middleware::{self, Next}, response::Response};
/// use offstate_admin::AdminApi;
/// use offstate_core::{MemoryStore, Sessions};
///
/// async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
///     let token = request.headers().get("authorization").and_then(|v| v.to_str().ok());
///     if token == Some("Bearer let-me-in") { Ok(next.run(request).await) } else { Err(StatusCode::UNAUTHORIZED) }
/// }
///
/// let sessions = Sessions::new(MemoryStore::new());
/// let app: Router = Router::new().nest(
///     "/admin/sessions",
///     AdminApi::new(sessions).guarded_by(middleware::from_fn(operators_only)).router(),
/// );
/// # drop(app);
/// ```
///
/// Without a guard there is no router: this does not compile.
///
/// ```compile_fail
/// # use offstate_core::{MemoryStore, Sessions};
/// let router: axum::Router = offstate_admin::AdminApi::new(Sessions::new(MemoryStore::new())).router();
/// ```
///
/// # Endpoints
///
/// | method and path | answer |
/// |---|---|
/// | `GET /principals/{principal}/sessions?limit=&cursor=` | [`SessionList`](crate::SessionList), one page; 501 where the store cannot list |
/// | `DELETE /principals/{principal}/sessions` | [`RevokedAll`](crate::RevokedAll) |
/// | `DELETE /sessions/{key}` | [`RevokedOne`](crate::RevokedOne); 400 for a malformed key |
/// | `GET /health` | [`Health`](crate::Health); 200 when up, 503 when down |
///
/// Errors are [`ErrorBody`] with the status in its documentation.
///
/// A listing is paged: `limit` sessions at most (default
/// [`DEFAULT_LIMIT`](crate::ops::DEFAULT_LIMIT), 100; at most
/// [`MAX_LIMIT`](crate::ops::MAX_LIMIT), 1000, or 400 `bad_limit`), and
/// `cursor`, the previous page's
/// [`next_cursor`](crate::SessionList::next_cursor), for the next page
/// (400 `bad_cursor` for anything else). See [`ops::list_page`] for the
/// order.
#[derive(Debug, Clone)]
pub struct AdminApi<G = Unguarded> {
    sessions: Sessions,
    guard: G,
}

impl AdminApi<Unguarded> {
    /// The API over `sessions`; it needs a guard before it has a router.
    #[must_use]
    pub fn new(sessions: Sessions) -> Self {
        Self {
            sessions,
            guard: Unguarded,
        }
    }

    /// Puts `layer` (the app's authentication and authorization: an
    /// `axum::middleware::from_fn`, a tower-http auth layer...) in front
    /// of every endpoint, including the answer to unknown paths.
    #[must_use]
    pub fn guarded_by<L>(self, layer: L) -> AdminApi<Guarded<L>> {
        AdminApi {
            sessions: self.sessions,
            guard: Guarded(layer),
        }
    }
}

impl<L> AdminApi<Guarded<L>>
where
    L: Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    /// The endpoints, behind the guard, ready to `nest` or `merge`.
    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route(
                "/principals/{principal}/sessions",
                get(list_sessions).delete(revoke_all),
            )
            .route("/sessions/{key}", delete(revoke_one))
            .route("/health", get(health))
            .fallback(not_found)
            .layer(self.guard.0)
            .with_state(self.sessions)
    }
}

/// The query of a listing.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_sessions(
    State(sessions): State<Sessions>,
    Path(principal): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            format!("limit is a number from 1 to {}", ops::MAX_LIMIT),
        );
    };
    let page = ops::Page::first(query.limit.unwrap_or(ops::DEFAULT_LIMIT)).and_then(|page| {
        match &query.cursor {
            Some(cursor) => page.after(cursor),
            None => Ok(page),
        }
    });
    let result = match page {
        Ok(page) => ops::list_page(&sessions, &principal, &page, |_, _| {}).await,
        Err(error) => Err(error),
    };
    answer(result)
}

async fn revoke_all(State(sessions): State<Sessions>, Path(principal): Path<String>) -> Response {
    answer(ops::revoke_all(&sessions, &principal).await)
}

async fn revoke_one(State(sessions): State<Sessions>, Path(key): Path<String>) -> Response {
    let result = match ops::parse_key(&key) {
        Ok(key) => ops::revoke_one(&sessions, &key).await,
        Err(error) => Err(error),
    };
    answer(result)
}

async fn health(State(sessions): State<Sessions>) -> Response {
    let health = ops::health(&sessions).await;
    let status = match health.status {
        Status::Up => StatusCode::OK,
        Status::Down => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(health)).into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

fn answer<T: serde::Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => {
            let status = match &error {
                AdminError::BadKey(_) | AdminError::BadCursor(_) | AdminError::BadLimit(_) => {
                    StatusCode::BAD_REQUEST
                }
                AdminError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
                AdminError::Store { .. } => match error.code() {
                    "store_timeout" => StatusCode::GATEWAY_TIMEOUT,
                    "store_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
            };
            error_response(status, error.code(), ops::error_line(&error))
        }
    }
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.to_owned(),
            message,
        }),
    )
        .into_response()
}
