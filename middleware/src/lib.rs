//! Tower middleware and an axum extractor that give every request a lazy
//! offstate [`Session`](offstate_core::Session), carried in a cookie (or a
//! header, for APIs), and stored in whatever
//! [`SessionStore`](offstate_core::SessionStore) the
//! [`Sessions`](offstate_core::Sessions) were built on. The middleware knows
//! nothing about backends.
//!
//! # Layout
//!
//! - [`SessionLayer`] (layer.rs): configuration; [`SessionService`]
//!   (service.rs): the per-request work; [`ResponseFuture`] (future.rs).
//! - [`CookieConfig`], [`SameSite`], [`Transport`] (config.rs): cookie or
//!   header, and the cookie's attributes.
//! - [`SigningKey`] (signing.rs): optional HMAC-signed IDs.
//! - [`Session`] (handle.rs): the handle handlers get, in the request
//!   extensions; [`MissingSessionLayer`] (extract.rs, feature `axum`, on by
//!   default): the extractor's rejection.
//! - [`SessionFailure`] and [`ConfigError`] (error.rs): session errors as
//!   short, non-leaking responses.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use axum::{Router, routing::post};
//! use offstate_core::{MemoryStore, Sessions};
//! use offstate_tower::{Session, SessionFailure, SessionLayer};
//! use tower::ServiceExt as _;
//!
//! async fn add(session: Session) -> Result<String, SessionFailure> {
//!     let cart = session
//!         .update("cart", |cart: Option<Vec<String>>| {
//!             let mut cart = cart.unwrap_or_default();
//!             cart.push("apple".into());
//!             Some(cart)
//!         })
//!         .await?;
//!     Ok(format!("{} items", cart.map_or(0, |c| c.len())))
//! }
//!
//! let app = Router::new()
//!     .route("/add", post(add))
//!     .layer(SessionLayer::new(Sessions::new(MemoryStore::new())));
//! let request = http::Request::post("/add").body(axum::body::Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! let cookie = response.headers()["set-cookie"].to_str().unwrap();
//! assert!(cookie.starts_with("offstate="));
//! assert!(cookie.contains("HttpOnly") && cookie.contains("Secure"));
//! # }
//! ```
//!
//! # What the store sees
//!
//! The handle is lazy, so a request costs only what its handler does:
//!
//! | handler                         | store calls                          |
//! |---------------------------------|--------------------------------------|
//! | never touches the session       | none                                 |
//! | only reads                      | one load (and a touch once the touch threshold has passed) |
//! | writes an existing session      | one load and one conditional save    |
//! | writes with no session yet      | one create                           |
//!
//! # Saving
//!
//! After the handler, the middleware calls
//! [`Session::save`](offstate_core::Session::save). If that fails, the
//! handler's response is replaced by the error's status (503 store down,
//! 409 conflict, 413 too large, 401 session ended meanwhile, 500 otherwise)
//! with a short body, and the error is logged. A handler that wants to
//! decide what happens calls `session.save().await` itself and handles the
//! result with [`Session::save`]: whatever that returns, the middleware
//! does not save again after a failure and leaves the handler's response
//! alone (after a success, only changes made later are left to save).
//!
//! # Store outages
//!
//! [`OutagePolicy`](offstate_core::OutagePolicy), set on the `Sessions`:
//!
//! - `FailClosed` (default): session reads fail with
//!   [`SessionError`](offstate_core::SessionError); return it through
//!   [`SessionFailure`] (`?`) and the client gets 503 "session store
//!   unavailable".
//! - `FailOpen`: the handler sees an empty anonymous session. Its writes are
//!   not saved and the response is left alone (a warning is logged): the
//!   real session and the user's cookie are untouched, and are there again
//!   when the store is back. A session that loaded fine but fails to save
//!   is still reported with its status, as under `FailClosed`.
//!
//! # Bad input
//!
//! Nothing a client sends makes the middleware panic:
//!
//! - no cookie, a garbage or non-UTF-8 value, an ID that does not parse, a
//!   signature that does not verify: no session (anonymous); the store is
//!   not called. If the handler then writes, a new session is created and
//!   its cookie replaces the bad one.
//! - the session cookie more than once (several `Cookie` headers, as
//!   HTTP/2 sends them, are all read): fine if every value is the same;
//!   different values get 400 "conflicting session identifiers" and a
//!   removal cookie, so the browser can recover.
//! - a value longer than [`SessionLayer::with_max_value_len`] (default
//!   4096 bytes): 431 "session identifier too large" and a removal cookie.
//!
//! Header mode follows the same rules for its header.
//!
//! # Signed IDs
//!
//! With [`SessionLayer::with_signing_key`], the client holds
//! `<id>.<base64url(HMAC-SHA256(key, id))>`; the tag is checked in constant
//! time, and a forged ID never reaches the store.
//!
//! # Header mode
//!
//! [`SessionLayer::with_header`] reads the ID from a request header (say
//! `x-session-id`) and sends new or rotated IDs back in the same response
//! header. When the session ends, the response carries the header with an
//! empty value: the client should forget its ID.
//!
//! # Without axum
//!
//! The layer works with any `http` 1.x service (tower, hyper): handlers find
//! the handle in the request extensions with [`Session::from_extensions`].
//! The core handle, [`offstate_core::Session`], is there too; but a failed
//! `save` called on it directly is tried again by the middleware.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use offstate_core::{MemoryStore, Sessions};
//! use offstate_tower::{Session, SessionLayer};
//! use tower::{ServiceBuilder, ServiceExt as _, service_fn};
//!
//! let service = ServiceBuilder::new()
//!     .layer(SessionLayer::new(Sessions::new(MemoryStore::new())))
//!     .service(service_fn(|request: Request<String>| async move {
//!         let session = Session::from_extensions(request.extensions()).expect("SessionLayer is installed");
//!         let _ = session.insert("seen", &true).await;
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     }));
//! let response = service.oneshot(Request::new(String::new())).await.unwrap();
//! assert!(response.headers().contains_key("set-cookie"));
//! # }
//! ```
//!
//! # Tracing
//!
//! Each request runs in a `offstate.request` debug span (with the client
//! update and status); the core adds spans around store calls. Session IDs
//! are never logged.

mod carrier;
mod config;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod handle;
mod layer;
mod service;
mod signing;

pub use config::{CookieConfig, DEFAULT_COOKIE_NAME, DEFAULT_MAX_VALUE_LEN, SameSite, Transport};
pub use error::{ConfigError, SessionFailure};
#[cfg(feature = "axum")]
pub use extract::MissingSessionLayer;
pub use future::ResponseFuture;
pub use handle::Session;
pub use layer::SessionLayer;
pub use service::SessionService;
pub use signing::{MIN_KEY_LEN, SigningKey};

/// The core crate, re-exported so apps need only one dependency.
pub use offstate_core;
