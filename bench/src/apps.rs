//! The same tiny cart app three times: on offstate, on tower-sessions, and
//! with no sessions at all (the ceiling). Same routes, same responses:
//!
//! - `GET /cart`: the cart as JSON (`{"apple": 3}`), read from the session;
//! - `POST /cart/add`: one more apple in the cart; answers the new item
//!   count as JSON;
//! - `POST /login`: logs [`USER`] in, the way each library does it, and
//!   gives the session a new ID (against session fixation). Only the
//!   bytes-per-session measurement calls it.
//!
//! offstate adds with `Session::update` (a conflicting save re-runs the
//! closure on the fresh cart); tower-sessions with its idiomatic
//! get-then-insert.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use offstate_core::SessionError;
use offstate_core::Sessions;
use offstate_tower::{CookieConfig, SessionLayer};

/// The session key the cart lives under, in both libraries.
pub const CART_KEY: &str = "cart";

/// The item every add puts in the cart.
pub const ITEM: &str = "apple";

/// The user `POST /login` logs in.
pub const USER: &str = "alice@example.com";

/// The session key tower-sessions keeps the user under (it has no notion
/// of a logged-in user of its own).
pub const USER_KEY: &str = "user";

/// Item to quantity.
pub type Cart = BTreeMap<String, u64>;

/// How many items a cart holds.
#[must_use]
pub fn count(cart: &Cart) -> u64 {
    cart.values().sum()
}

/// The cart with one more [`ITEM`]; pure, so `update` may run it again.
#[must_use]
pub fn add_item(cart: Option<Cart>) -> Cart {
    let mut cart = cart.unwrap_or_default();
    *cart.entry(ITEM.to_owned()).or_insert(0) += 1;
    cart
}

/// The cart app on offstate sessions (cookie not `Secure`: plain HTTP on
/// loopback).
pub fn offstate_app(sessions: Sessions) -> Router {
    let layer = SessionLayer::new(sessions).with_cookie(CookieConfig::default().with_secure(false));
    Router::new()
        .route("/cart", get(offstate_cart))
        .route("/cart/add", post(offstate_add))
        .route("/login", post(offstate_login))
        .layer(layer)
}

async fn offstate_cart(session: offstate_tower::Session) -> Result<Json<Cart>, SessionError> {
    let cart: Cart = session.get(CART_KEY).await?.unwrap_or_default();
    Ok(Json(cart))
}

async fn offstate_add(session: offstate_tower::Session) -> Result<Json<u64>, SessionError> {
    let cart = session
        .update(CART_KEY, |cart: Option<Cart>| Some(add_item(cart)))
        .await?;
    Ok(Json(cart.as_ref().map_or(0, count)))
}

/// offstate's login: the session's principal, which also indexes the
/// session under the user (for "log out everywhere").
async fn offstate_login(session: offstate_tower::Session) -> Result<(), SessionError> {
    session.set_principal(USER).await?;
    session.cycle_id().await?;
    Ok(())
}

/// The cart app on tower-sessions over `store`, expiring after 30 minutes
/// of inactivity like offstate's default policy (cookie not `Secure`).
pub fn tower_sessions_app<S>(store: S) -> Router
where
    S: tower_sessions::SessionStore + Clone,
{
    let layer = tower_sessions::SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(
            tower_sessions::cookie::time::Duration::minutes(30),
        ));
    Router::new()
        .route("/cart", get(tower_cart))
        .route("/cart/add", post(tower_add))
        .route("/login", post(tower_login))
        .layer(layer)
}

/// A 500 with the error's text, for the tower-sessions handlers.
pub(crate) fn internal<E: std::fmt::Display>(error: E) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn tower_cart(session: tower_sessions::Session) -> Result<Json<Cart>, (StatusCode, String)> {
    let cart: Cart = session
        .get(CART_KEY)
        .await
        .map_err(internal)?
        .unwrap_or_default();
    Ok(Json(cart))
}

async fn tower_add(session: tower_sessions::Session) -> Result<Json<u64>, (StatusCode, String)> {
    let cart: Option<Cart> = session.get(CART_KEY).await.map_err(internal)?;
    let cart = add_item(cart);
    session.insert(CART_KEY, &cart).await.map_err(internal)?;
    Ok(Json(count(&cart)))
}

/// tower-sessions' login: the user in a session key.
async fn tower_login(session: tower_sessions::Session) -> Result<(), (StatusCode, String)> {
    session.insert(USER_KEY, USER).await.map_err(internal)?;
    session.cycle_id().await.map_err(internal)?;
    Ok(())
}

/// The same routes with no sessions: an empty cart and a constant count.
/// What the machine serves when sessions cost nothing.
pub fn plain_app() -> Router {
    Router::new()
        .route("/cart", get(|| async { Json(Cart::new()) }))
        .route("/cart/add", post(|| async { Json(1_u64) }))
        .route("/login", post(|| async {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_counts() {
        let cart = add_item(Some(add_item(None)));
        assert_eq!(count(&cart), 2);
    }
}
