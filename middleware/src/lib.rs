//! Tower middleware that gives every request a lazy offstate
//! [`Session`], carried in a cookie (or a header, for APIs), and stored in
//! whatever [`SessionStore`](offstate_core::SessionStore) the
//! [`Sessions`](offstate_core::Sessions) were built on. The middleware knows
//! nothing about backends. Handlers take the core
//! [`Session`] (re-exported here) as an axum
//! extractor; there is no second session type.
//!
//! # Layout
//!
//! - [`SessionLayer`] (layer.rs): configuration; [`SessionService`]
//!   (service.rs): the per-request work; [`ResponseFuture`] (future.rs).
//! - [`CookieConfig`], [`SameSite`], [`Transport`] (config.rs): cookie or
//!   header, and the cookie's attributes.
//! - [`SigningKey`] (signing.rs): optional HMAC-signed IDs.
//! - [`ConfigError`] (error.rs): a layer configuration that cannot work;
//!   the short responses the layer answers with.
//! - carrier.rs: reading the ID from a request and writing it back.
//!
//! The per-request protocol (open a handle, save after the handler, decide
//! what a failure means) lives in [`offstate_core::middleware`], so another
//! framework's middleware can share it.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use axum::{Router, routing::post};
//! use offstate_core::{MemoryStore, Session, SessionError, Sessions};
//! use offstate_tower::SessionLayer;
//! use tower::ServiceExt as _;
//!
//! async fn add(session: Session) -> Result<String, SessionError> {
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
//! assert!(cookie.starts_with("__Host-offstate="));
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
//! After the handler, the middleware saves what the handler left unsaved.
//! If that fails, the handler's response is replaced by the error's status
//! (503 store down, 409 conflict, 413 too large, 401 session ended
//! meanwhile, 500 otherwise) with a short body, and the error is logged. A
//! handler that wants to decide what happens calls `session.save().await`
//! itself and handles the result: after a failure, the middleware does not
//! save again and leaves the handler's response alone (after a success,
//! only changes made later are left to save).
//!
//! # Store outages
//!
//! [`OutagePolicy`](offstate_core::OutagePolicy), set on the `Sessions`:
//!
//! - `FailClosed` (default): session reads fail with
//!   [`SessionError`](offstate_core::SessionError); return it from the
//!   handler (`?`; it is an axum response) and the client gets 503 "session
//!   store unavailable".
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
//!   HTTP/2 sends them, are all read): fine if every value is the same.
//!   Different values (a cookie another subdomain or an old path set) are
//!   all tried: the one live session wins; if several are live the request
//!   has no session (one may be an attacker's). Nobody is locked out. The
//!   default `__Host-` cookie prefix keeps sibling subdomains from setting
//!   the cookie at all (see [`CookieConfig::with_host_prefix`]).
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
//! the [`Session`] in the request extensions.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use offstate_core::{MemoryStore, Session, Sessions};
//! use offstate_tower::SessionLayer;
//! use tower::{ServiceBuilder, ServiceExt as _, service_fn};
//!
//! let service = ServiceBuilder::new()
//!     .layer(SessionLayer::new(Sessions::new(MemoryStore::new())))
//!     .service(service_fn(|request: Request<String>| async move {
//!         let session = request.extensions().get::<Session>().cloned().expect("SessionLayer is installed");
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
mod future;
mod layer;
mod service;
mod signing;

pub use config::{CookieConfig, DEFAULT_COOKIE_NAME, DEFAULT_MAX_VALUE_LEN, SameSite, Transport};
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use layer::SessionLayer;
/// The session handle handlers take (the core one: there is no other).
pub use offstate_core::Session;
pub use service::SessionService;
pub use signing::{MIN_KEY_LEN, SigningKey};

/// The core crate, re-exported so apps need only one dependency.
pub use offstate_core;
