//! Testing your own handlers: the app is a plain `Router`, so a test sends
//! it requests with tower's `oneshot`, first on the memory store (no
//! server), then on a real Redis that `offstate_testing` starts on a free
//! port and stops when the test ends.
//!
//! ```sh
//! cargo test -p offstate --example testing
//! ```
//!
//! The same tests run against any backend: only the `Sessions` differ.

use axum::Router;
use axum::routing::{get, post};
use offstate::tower::{CookieConfig, SessionLayer};
use offstate::{MemoryStore, Session, SessionError, Sessions};

/// Logs the visitor in as the user named in the body.
async fn login(session: Session, user: String) -> Result<&'static str, SessionError> {
    session.set_principal(user.trim()).await?;
    // A new ID at login: the one the client had before never carries the user.
    session.cycle_id().await?;
    Ok("welcome\n")
}

/// Who is logged in.
async fn me(session: Session) -> Result<String, SessionError> {
    Ok(session
        .principal()
        .await?
        .map_or_else(|| "nobody\n".to_owned(), |user| format!("{user}\n")))
}

fn app(sessions: Sessions) -> Router {
    let cookie = CookieConfig::default().with_secure(false);
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .layer(SessionLayer::new(sessions).with_cookie(cookie))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(Sessions::new(MemoryStore::new()))).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use http::{Request, Response, StatusCode, header};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
        app.clone().oneshot(request).await.unwrap()
    }

    fn cookie_of(response: &Response<Body>) -> String {
        let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    async fn text(response: Response<Body>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The behaviour under test, written once for every backend.
    async fn login_then_me(sessions: Sessions) {
        let app = app(sessions);
        let response = send(
            &app,
            Request::post("/login").body(Body::from("alice")).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = cookie_of(&response);
        let response = send(
            &app,
            Request::get("/me")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(text(response).await, "alice\n");
        let response = send(&app, Request::get("/me").body(Body::empty()).unwrap()).await;
        assert_eq!(text(response).await, "nobody\n");
    }

    #[tokio::test]
    async fn login_then_me_on_the_memory_store() {
        login_then_me(Sessions::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn login_then_me_on_redis() {
        // A redis-server on a free loopback port (or a container, or the
        // server in OFFSTATE_REDIS_URL), stopped when `redis` is dropped.
        let redis = offstate_testing::redis()
            .await
            .expect("redis-server (scripts/setup.sh installs it)");
        login_then_me(Sessions::new(redis.store().clone())).await;
    }
}
