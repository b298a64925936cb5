//! An admin API for offstate: list a user's sessions, end one or all of
//! them, and check the store, as an axum [`Router`](axum::Router) that the
//! app mounts behind its own authentication. It is generic over the store
//! (it takes the app's [`Sessions`](offstate_core::Sessions)), and it
//! refuses to exist without a guard: [`AdminApi::router`] is only there
//! after [`AdminApi::guarded_by`].
//!
//! What it shows is what an operator needs and nothing a thief could use:
//! sessions are named by their stored key (a hash of the ID), and only the
//! names of their keys are listed, never values.
//!
//! # Layout
//!
//! - [`router`](AdminApi): [`AdminApi`], the typestate builder and the
//!   endpoints.
//! - [`schema`](SessionList): the JSON answers, documented field by field.
//! - [`ops`]: the same operations without HTTP (the `offstate` command-line
//!   tool uses them).
//!
//! # Example
//!
//! ```
//! use axum::{Router, extract::Request, http::StatusCode, middleware::{self, Next}, response::Response};
//! use offstate_admin::AdminApi;
//! use offstate_core::{MemoryStore, Sessions};
//!
//! async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     match request.headers().get("x-operator") {
//!         Some(_) => Ok(next.run(request).await), // the app's real check goes here
//!         None => Err(StatusCode::FORBIDDEN),
//!     }
//! }
//!
//! let sessions = Sessions::new(MemoryStore::new());
//! let app: Router = Router::new()
//!     // ... the app's own routes ...
//!     .nest(
//!         "/admin/sessions",
//!         AdminApi::new(sessions.clone())
//!             .guarded_by(middleware::from_fn(operators_only))
//!             .router(),
//!     );
//! # drop(app);
//! ```

pub mod ops;
mod router;
mod schema;

pub use ops::AdminError;
pub use router::{AdminApi, Guarded, Unguarded};
pub use schema::{
    ErrorBody, Health, RevokedAll, RevokedOne, SessionList, SessionSummary, Status,
    StoreCapabilities,
};
