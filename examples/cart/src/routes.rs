//! The routes: one page, form posts that redirect back to it, and a JSON
//! view of the cart.

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use offstate_core::{Clock, SessionError, Sessions};
use offstate_tower::{CookieConfig, Session, SessionLayer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::cart::{self, CART_KEY, Cart};
use crate::pages::{View, render};

/// How the app is set up, apart from where sessions live.
#[derive(Debug, Clone)]
pub struct AppConfig {
    instance: Arc<str>,
    store_label: Option<Arc<str>>,
    secure_cookies: bool,
    signing_key: Option<SigningKey>,
}

impl AppConfig {
    /// An app that calls itself `instance` on every page, with `Secure`
    /// cookies and unsigned IDs.
    #[must_use]
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: Arc::from(instance.into()),
            store_label: None,
            secure_cookies: true,
            signing_key: None,
        }
    }

    /// Sets whether the cookie is `Secure` (off only for plain-HTTP demos).
    #[must_use]
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// Sets what the page says about where sessions live (for example
    /// `redis`); without it the page does not say.
    #[must_use]
    pub fn with_store_label(mut self, label: impl Into<String>) -> Self {
        self.store_label = Some(Arc::from(label.into()));
        self
    }

    /// Signs session IDs with `key`.
    #[must_use]
    pub fn with_signing_key(mut self, key: SigningKey) -> Self {
        self.signing_key = Some(key);
        self
    }
}

#[derive(Debug, Clone)]
struct AppState {
    instance: Arc<str>,
    store_label: Option<Arc<str>>,
    clock: Arc<dyn Clock>,
}

/// The whole app: routes behind the session layer.
///
/// ```
/// use offstate_core::{MemoryStore, Sessions};
/// use offstate_example_cart::{AppConfig, app};
///
/// let router = app(Sessions::new(MemoryStore::new()), AppConfig::new("demo"));
/// # drop(router);
/// ```
pub fn app(sessions: Sessions, config: AppConfig) -> Router {
    // Remaining times are shown on the sessions' own clock.
    let clock = Arc::clone(sessions.clock());
    let mut layer = SessionLayer::new(sessions)
        .with_cookie(CookieConfig::default().with_secure(config.secure_cookies));
    if let Some(key) = config.signing_key {
        layer = layer.with_signing_key(key);
    }
    let state = AppState {
        instance: config.instance,
        store_label: config.store_label,
        clock,
    };
    Router::new()
        .route("/", get(index))
        .route("/cart/add", post(add))
        .route("/cart/remove", post(remove))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/api/cart", get(api_cart))
        .with_state(state)
        .layer(layer)
}

/// Back to the page after a form post (303: the browser follows with GET).
fn back() -> Redirect {
    Redirect::to("/")
}

async fn index(State(app): State<AppState>, session: Session) -> Result<Response, SessionError> {
    let cart: Cart = session.get(CART_KEY).await?.unwrap_or_default();
    let user = session.principal().await?;
    let remaining = session
        .expires_at()
        .await?
        .map(|at| at.saturating_since(app.clock.now()));
    let html = render(&View {
        cart,
        user,
        remaining,
        instance: &app.instance,
        store: app.store_label.as_deref(),
    });
    let mut response = Html(html).into_response();
    // Pages show one user's cart: never cache them.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct ItemForm {
    item: String,
}

async fn add(session: Session, Form(form): Form<ItemForm>) -> Result<Response, SessionError> {
    let Some(product) = cart::product(&form.item) else {
        return Ok((StatusCode::BAD_REQUEST, "unknown item").into_response());
    };
    let id = product.id;
    // `update`, not get-then-insert: if another request adds an item at the
    // same moment, this closure runs again on the cart that request saved.
    session
        .update(CART_KEY, move |cart: Option<Cart>| cart::add(cart, id))
        .await?;
    Ok(back().into_response())
}

async fn remove(session: Session, Form(form): Form<ItemForm>) -> Result<Redirect, SessionError> {
    let item = form.item;
    session
        .update(CART_KEY, move |cart: Option<Cart>| {
            cart::remove(cart, &item)
        })
        .await?;
    Ok(back())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
}

/// A user name as typed, if it is acceptable: 1 to 64 characters after
/// trimming, none of them control characters.
fn user_name(typed: &str) -> Option<&str> {
    let name = typed.trim();
    let ok = (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control);
    ok.then_some(name)
}

async fn login(session: Session, Form(form): Form<LoginForm>) -> Result<Response, SessionError> {
    let Some(user) = user_name(&form.user) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            "user names have 1 to 64 characters",
        )
            .into_response());
    };
    // There is no password here: this is a demo of what a login does to a
    // session. Attach it to the user, and give it a new ID (against session
    // fixation); the cart comes along.
    session.set_principal(user).await?;
    session.cycle_id().await?;
    Ok(back().into_response())
}

async fn logout(session: Session) -> Result<Redirect, SessionError> {
    session.delete().await?;
    Ok(back())
}

async fn logout_everywhere(session: Session) -> Result<Redirect, SessionError> {
    match session.revoke_principal().await {
        Ok(count) => tracing::info!(count, "logged out everywhere"),
        Err(SessionError::NoPrincipal) => {}
        Err(error) => return Err(error),
    }
    Ok(back())
}

/// The cart as JSON.
#[derive(Debug, Serialize)]
struct CartJson {
    items: Cart,
    count: u32,
    user: Option<String>,
    instance: String,
}

async fn api_cart(
    State(app): State<AppState>,
    session: Session,
) -> Result<impl IntoResponse, SessionError> {
    let items: Cart = session.get(CART_KEY).await?.unwrap_or_default();
    // One user's cart: no shared or browser cache may keep it.
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(CartJson {
            count: cart::count(&items),
            items,
            user: session.principal().await?,
            instance: app.instance.to_string(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(user_name("  alice "), Some("alice"));
        assert_eq!(user_name(""), None);
        assert_eq!(user_name("   "), None);
        assert_eq!(user_name("a\u{0}b"), None);
        assert_eq!(user_name(&"x".repeat(65)), None);
        assert_eq!(user_name(&"é".repeat(64)), Some("é".repeat(64).as_str()));
    }
}
